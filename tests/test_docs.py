"""README's and docs/'s links inside the repository resolve: the file exists and so does the heading an anchor
names (GitHub's anchor rule), so moving a section cannot leave a dead link behind."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation other than - and _ dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    heads = re.findall(r"^#{1,6} (.*?)\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


def test_anchor_rule():
    assert anchors("# A time-boxed round: `python -m x.y`\n## nano's INT8, QAT\n") == {
        "a-time-boxed-round-python--m-xy", "nanos-int8-qat"}
    assert anchors("```\n# not a heading\n```\n") == set()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_local_links_resolve(doc):
    problems = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            problems.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            problems.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not problems, "\n".join(problems)

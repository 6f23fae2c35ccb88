"""What `pip install fer-edge` (a wheel) and an sdist carry: CI only tests an editable install."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["fer_edge", "tests", "docs", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "constraints.txt",
           ".ci", ".github"]


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, set[str]]:
    """The wheel's and the sdist's file names, built from a copy of the source tree (no network)."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=ignore)
        elif p.exists():
            shutil.copy2(p, src / name)
    out = tmp_path_factory.mktemp("dist")
    names = []
    for hook in ("build_wheel", "build_sdist"):  # one process each: setuptools keeps state between them
        code = f"import sys, setuptools.build_meta as b; print('BUILT', b.{hook}(sys.argv[1]))"
        r = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        names.append(r.stdout.split("BUILT ")[-1].strip())  # setuptools logs to stdout too
    wheel_name, sdist_name = names
    with zipfile.ZipFile(out / wheel_name) as z:
        wheel = set(z.namelist())
    with tarfile.open(out / sdist_name) as t:
        top = sdist_name.removesuffix(".tar.gz") + "/"
        sdist = {m.name.removeprefix(top) for m in t.getmembers() if m.isfile()}
    return {"wheel": wheel, "sdist": sdist}


def _package_files() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in (ROOT / "fer_edge").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_the_wheel_carries_every_module_and_the_shipped_weights(dists):
    files = _package_files()
    assert any(f.endswith(".pt") for f in files) and "fer_edge/weights/weights.json" in files
    missing = sorted(files - dists["wheel"])
    assert not missing, f"the wheel lacks {missing}"
    assert not [f for f in dists["wheel"] if f.startswith(("tests/", "docs/", "runs/"))]


def test_the_sdist_runs_its_own_tests(dists):
    """Its tests need conftest.py's fixtures, the guides test_docs reads, README's constraints file, and the CI
    files README points to (``.ci/run``, the workflow); a type checker reads ``py.typed``."""
    wanted = {p.relative_to(ROOT).as_posix() for d in ("tests", "docs") for p in (ROOT / d).rglob("*")
              if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    wanted |= {"constraints.txt", "README.md", "LICENSE", "pyproject.toml", ".ci/run", ".github/workflows/ci.yml",
               "fer_edge/py.typed"} | _package_files()
    missing = sorted(wanted - dists["sdist"])
    assert not missing, f"the sdist lacks {missing}"

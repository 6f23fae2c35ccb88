"""Text fer-edge writes and prints on platforms other than Linux's UTF-8 (Windows' ANSI code page, fsync rules)."""
from __future__ import annotations

import errno
import fcntl
import io
import os
import subprocess
import sys
import tokenize
from pathlib import Path

import numpy as np

import fer_edge
from fer_edge import utils

PACKAGE = Path(fer_edge.__file__).parent


def test_durable_write_syncs_through_a_descriptor_open_for_writing(tmp_path, monkeypatch):
    """QA: ``atomic_path(durable=True)`` fsynced a descriptor opened read-only, which Windows refuses (EBADF), so
    no checkpoint was ever written there (``fer-edge train`` ended after epoch 1 with "Bad file descriptor")."""
    real_fsync = os.fsync

    def windows_fsync(fd):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real_fsync(fd)

    monkeypatch.setattr(utils.os, "fsync", windows_fsync)
    dest = tmp_path / "last.pt"
    with utils.atomic_path(dest, durable=True) as tmp:
        tmp.write_bytes(b"checkpoint")
    assert dest.read_bytes() == b"checkpoint"


def test_durable_write_of_a_read_only_file_still_lands(tmp_path):
    dest = tmp_path / "frozen.bin"
    with utils.atomic_path(dest, durable=True) as tmp:
        tmp.write_bytes(b"x")
        tmp.chmod(0o444)
    assert dest.read_bytes() == b"x"


def _run(code: str, env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHONIOENCODING", "PYTHONUTF8"))}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, timeout=120)


def test_text_files_are_utf8_and_keep_their_line_endings_in_any_locale(tmp_path):
    """A report or CSV holding a non-ASCII name was written in the locale's encoding (Windows: cp1252, which has no
    Japanese; an ASCII locale has not even 'ü'), and in text mode, which on Windows doubles a CSV's ``\\r\\n``."""
    text = "model,note\r\nünï,日本\r\n"
    # Windows' text mode, simulated: the pure-Python io writes os.linesep for each \n unless newline="" says not
    windows = "import _pyio, io, os; os.linesep = '\\r\\n'; io.open = _pyio.open; "
    r = _run(windows + f"from fer_edge.utils import write_text_atomic; write_text_atomic('out.csv', {ascii(text)})",
             {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}, tmp_path)
    assert r.returncode == 0, r.stderr.decode()
    assert (tmp_path / "out.csv").read_bytes() == text.encode("utf-8")


def test_commands_print_what_a_cp1252_stream_cannot_hold(tmp_path):
    """QA: with output going to a file or pipe on Windows (cp1252), ``fer-edge export``/``bench`` ended in a
    UnicodeEncodeError traceback after their work was done (a ``Max |Δ|`` column header); a file name or label
    the code page lacks would do the same. Commands now write such a character as an escape."""
    from PIL import Image

    img = tmp_path / "日本.png"
    Image.fromarray(np.full((48, 48), 128, np.uint8)).save(img)
    env = {"PYTHONIOENCODING": "cp1252"}
    r = _run("import sys; from fer_edge.cli import main; "
             f"sys.argv = ['fer-edge', 'predict', {str(img)!r}, '--model', 'nano', '--no-detect-faces', "
             "'--device', 'cpu']; main()", env, tmp_path)
    assert r.returncode == 0, r.stderr.decode("cp1252", "replace")
    assert b"\\u65e5\\u672c.png" in r.stdout, r.stdout


def _strings(path: Path):
    with tokenize.open(path) as fh:
        for tok in tokenize.generate_tokens(fh.readline):
            if tok.type == tokenize.STRING:
                yield tok


def test_package_strings_are_ascii():
    """What fer-edge prints must fit any console's code page: its own strings (headers, messages) are ASCII, so
    only a user's names can need the escape above. (Comments may hold anything.)"""
    paths = sorted(PACKAGE.rglob("*.py"))
    assert len(paths) > 50
    bad = [f"{path.relative_to(PACKAGE)}:{tok.start[0]}: {tok.string[:60]!r}"
           for path in paths for tok in _strings(path) if not tok.string.isascii()]
    assert not bad, "\n".join(bad)


def test_the_ascii_check_sees_strings():
    src = io.StringIO('x = "Max |\u0394|"  # \u0394 in a comment is fine\n')
    toks = [t for t in tokenize.generate_tokens(src.readline) if t.type == tokenize.STRING]
    assert [t.string.isascii() for t in toks] == [False]

"""Path options of every command: an empty value (a script's unset variable) is refused, not read as ".".

Typer turns ``--out ""`` into ``Path(".")``: outputs landed in the current folder and ``--data ""`` read it.
"""
from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from fer_edge.cli import app

runner = CliRunner()

CASES = [
    (["eval", "--data", ""], "--data"),
    (["eval", "--data", "{csv}", "--out", ""], "--out"),
    (["train", "--data", ""], "--data"),
    (["train", "--data", "{csv}", "--out", ""], "--out"),
    (["bench", "--data", ""], "--data"),
    (["bench", "--data", "{csv}", "--out", ""], "--out"),
    (["report", "merge", "{csv}", "--out", ""], "--out"),
    (["export", "--out", ""], "--out"),
    (["export", "--calib-data", ""], "--calib-data"),
    (["export", "--val-data", ""], "--val-data"),
    (["train", "--data", "{csv}", "--distill-cache", ""], "--distill-cache"),
    (["soup", "small", "nano", "--out", "s.pt", "--data", ""], "--data"),
    (["predict", "{csv}", "--annotate", ""], "--annotate"),
    # arguments too: `fer-edge predict ""` classified every image under the current folder
    (["predict", ""], "IMAGE_OR_DIR"),
    (["predict", "{csv}", ""], "IMAGE_OR_DIR"),
    (["bench", "", "--data", "{csv}"], "ARTIFACT"),
    (["report", "merge", "", "--out", "merged"], "REPORT"),
]

MODEL_CASES = [  # QA: `predict --model ""` read the current folder; the others failed later, with exit 1
    (["predict", "{csv}", "--model", ""], "--model"),
    (["eval", "--model", "", "--data", "{csv}"], "--checkpoint' / '--model"),
    (["bench", "--reference", " ", "--data", "{csv}"], "--reference"),
    (["export", ""], "CHECKPOINT"),
    (["train", "--data", "{csv}", "--init", ""], "--init"),
    (["train", "--data", "{csv}", "--distill", "nano", "--distill", ""], "--distill"),
    (["soup", "nano", "", "--out", "s.pt", "--data", "{csv}"], "CHECKPOINT"),
]


SPLIT_CASES = [
    (["eval", "--data", "{csv}", "--split", ""], "--split"),
    (["train", "--data", "{csv}", "--split", ""], "--split"),
    (["train", "--data", "{csv}", "--val-split", " "], "--val-split"),
    (["bench", "nano", "--data", "{csv}", "--split", ""], "--split"),
    (["export", "nano", "--calib-data", "{csv}", "--calib-split", ""], "--calib-split"),
    (["export", "nano", "--val-split", ""], "--val-split"),
    (["soup", "small", "nano", "--out", "s.pt", "--data", "{csv}", "--split", ""], "--split"),
    (["soup", "small", "nano", "--out", "s.pt", "--data", "{csv}", "--val-split", ""], "--val-split"),
]


EMPTY_CASES = ([(a, o, "is empty: give a path") for a, o in CASES]
               + [(a, o, "is empty: give a checkpoint path or shipped model name") for a, o in MODEL_CASES]
               # QA: `--split ""` was "split '' not found" with exit 1
               + [(a, o, "is empty: name a split") for a, o in SPLIT_CASES])


@pytest.mark.parametrize("args, option, words", EMPTY_CASES,
                         ids=[" ".join(a).replace("{csv}", "CSV") for a, _, _ in EMPTY_CASES])
def test_an_empty_option_is_refused_before_any_work(args, option, words, synthetic_csv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, [a.replace("{csv}", str(synthetic_csv)) for a in args], env={"COLUMNS": "250"})
    out = " ".join(r.output.split())
    assert r.exit_code == 2, out  # a usage error, as for any invalid option value
    assert f"Invalid value for '{option}'" in out and words in out, out
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder


def test_a_missing_data_path_is_still_refused_by_name(tmp_path):
    r = runner.invoke(app, ["eval", "--data", str(tmp_path / "nope.csv")], env={"COLUMNS": "250"})  # one line
    assert r.exit_code == 2 and "does not exist" in " ".join(r.output.split())


def test_train_out_the_system_will_not_create_is_an_error_naming_it(synthetic_csv, tmp_path, monkeypatch):
    """A folder the permission checks let by but mkdir refuses (``--out /proc/run`` as root) was a bare
    "No such file or directory" after the data had loaded."""
    from pathlib import Path

    out = tmp_path / "run"
    real_mkdir = Path.mkdir

    def refuse(self, *a, **k):
        if self == out:
            raise FileNotFoundError(2, "No such file or directory", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", refuse)
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--epochs", "1",
                            "--out", str(out)])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and f"--out {out}: cannot create the folder (No such file or directory)" in text, text


def test_distill_cache_given_a_folder_suggests_a_file_in_it(synthetic_csv, tmp_path):
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--epochs", "1",
                            "--out", str(tmp_path / "run"), "--distill", "nano", "--distill-targets", "replay",
                            "--distill-cache", str(tmp_path)])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and f"is a folder, not a file: give a file path (e.g. {tmp_path / 'replay.pt'})" in text, text


def test_path_options_show_a_path_metavar_in_help():
    r = runner.invoke(app, ["eval", "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "--data PATH" in " ".join(r.output.split()).replace("--data  PATH", "--data PATH")


@pytest.mark.parametrize("option", ["--split", "--val-split"])
def test_train_refuses_an_empty_split_instead_of_the_default(option, synthetic_csv, tmp_path):
    """``cfg.split or default_train_split(...)`` trained on the default split when given ``--split ""``."""
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--epochs", "1",
                            "--out", str(out), option, ""])
    assert r.exit_code == 2 and "is empty: name a split" in " ".join(r.output.split()), r.output
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "export", "bench", "eval", "predict", "soup"])
def test_help_piped_keeps_every_option_name_whole(command, capsys, monkeypatch):
    """QA: `fer-edge train --help | less` cut option names at Rich's 80 columns (--label-smoothi…)."""
    import typer.rich_utils

    from fer_edge.cli import main

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", None)  # restored after the test
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--help" in out and "…" not in out, out


NO_FILES_CASES = [
    ["bench", "nano", "--data", "{csv}", "--out", "{out}"],
    ["eval", "--model", "nano", "--data", "{csv}", "--out", "{out}"],
    ["export", "nano", "--target", "onnx", "--precision", "fp32", "--out", "{out}"],
    ["train", "--data", "{csv}", "--model", "simple_cnn", "--epochs", "1", "--out", "{out}"],
]


@pytest.mark.parametrize("args", NO_FILES_CASES, ids=[a[0] for a in NO_FILES_CASES])
def test_an_out_folder_no_file_can_be_made_in_is_refused_before_any_work(args, synthetic_csv, tmp_path,
                                                                        monkeypatch):
    """QA: ``--out /sys/x`` as root passed the permission-bit check (root passes every one) and failed only
    when the report was written, after the whole measuring, in words that did not name --out."""
    import tempfile

    sealed = tmp_path / "sealed"  # stands for /proc or /sys: its bits say writable, yet nothing can be made
    sealed.mkdir()
    real_mkdtemp = tempfile.mkdtemp

    def refuse(*a, dir=None, **k):
        if dir is not None and str(dir) == str(sealed):
            raise PermissionError(1, "Operation not permitted", str(dir))
        return real_mkdtemp(*a, dir=dir, **k)

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    out = sealed / "x"
    r = runner.invoke(app, [a.replace("{csv}", str(synthetic_csv)).replace("{out}", str(out)) for a in args],
                      env={"COLUMNS": "250"})
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and f"--out {out}: cannot write into {sealed} (no file can be made there: " \
                                "Operation not permitted)" in text, text
    assert list(sealed.iterdir()) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_out_under_proc_is_refused_by_name(synthetic_csv):
    r = runner.invoke(app, ["eval", "--model", "nano", "--data", str(synthetic_csv), "--out", "/proc/fer-edge-x"],
                      env={"COLUMNS": "250"})
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "--out /proc/fer-edge-x: cannot write into /proc" in text, text


@pytest.mark.parametrize("value", ["bogus", "", "CUDA"])
def test_eval_device_is_a_typed_choice(value, synthetic_csv):
    """QA: ``eval --device bogus`` was exit 1 after loading the model; train's --device was already a choice."""
    r = runner.invoke(app, ["eval", "--model", "nano", "--data", str(synthetic_csv), "--device", value],
                      env={"COLUMNS": "250"})
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "Invalid value for '--device'" in text and "'auto', 'cpu', 'cuda', 'mps'" in text, text


def test_train_model_empty_says_so(synthetic_csv, tmp_path):
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "", "--out", str(tmp_path / "r")],
                      env={"COLUMNS": "250"})
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "--model: is empty: name a registered model; registered models: " in text, text
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args", [["predict", "{dir}", "--model", "nano", "--no-detect-faces", "--json"],
                                  ["predict", "{dir}", "--model", "nano", "--no-detect-faces"],  # a rich table
                                  ["models"], ["--version"], ["--help"], ["bench", "--help"], []],
                         ids=["predict-json", "predict-table", "models", "version", "help", "bench-help", "no-args"])
def test_a_closed_stdout_ends_the_command_quietly(args, tmp_path):
    """QA: ``fer-edge predict ... --json | head -1`` printed "error: Broken pipe" and exited 1; rich's tables,
    ``--version`` and ``--help`` exited 1."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((48, 48), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    proc = subprocess.Popen([sys.executable, "-m", "fer_edge", *(a.replace("{dir}", str(tmp_path)) for a in args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err


_STOP_WHILE_IMPORTING = """
import os, signal, sys
class Stop:
    def find_spec(self, name, path=None, target=None):
        if name == "fer_edge.cli.models":  # the first command module: fer-edge is still starting
            if sys.argv[1] == "TERM":
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
sys.meta_path.insert(0, Stop())
sys.argv[1:] = ["models"]
from fer_edge.__main__ import run
run()
"""


@pytest.mark.parametrize("how", ["INT", "TERM"])
def test_an_interrupt_while_fer_edge_starts_says_so(how):
    """QA: Ctrl-C in the first second printed a traceback from inside an import; SIGTERM ended it silently (143)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _STOP_WHILE_IMPORTING, how], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 130 and r.stderr == "interrupted: fer-edge stopped while starting; nothing was done\n", \
        r.stderr


def test_a_sigterm_after_the_command_finished_is_no_traceback():
    """QA: SIGTERM while the interpreter shut down (after the report was written) raised fer-edge's interrupt into
    an atexit callback: "Exception ignored in atexit callback ... KeyboardInterrupt"; the command's own SIGTERM
    handler is put back when it ends."""
    import signal
    import subprocess
    import sys

    code = ("import atexit, os, signal, sys, time\n"
            "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.5)))\n"
            "sys.argv[1:] = ['models']\nfrom fer_edge.__main__ import run\nrun()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "fer_nano" in r.stdout  # the command ran
    assert "KeyboardInterrupt" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr
    assert r.returncode == -signal.SIGTERM  # ended by the signal, as any program killed then


def test_an_interrupt_while_typer_reads_the_command_line_says_so(monkeypatch, capsys, synthetic_csv):
    """Typer ends a Ctrl-C that comes while it parses the options with a silent exit 130."""
    import typer.core

    from fer_edge.cli import main

    def interrupted(self, ctx, args):
        raise KeyboardInterrupt

    monkeypatch.setattr(typer.core.TyperGroup, "parse_args", interrupted)
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", typer.rich_utils.MAX_WIDTH)  # main() sets it off a terminal
    with pytest.raises(SystemExit) as e:
        main(["eval", "--data", str(synthetic_csv)])
    assert e.value.code == 130
    assert capsys.readouterr().err == "interrupted: fer-edge stopped before the command ran; nothing was done\n"


def test_an_interrupt_no_command_reports_itself_is_one_line(monkeypatch, tmp_path):
    import numpy as np
    from PIL import Image

    import fer_edge.predict as predict_mod

    face_png = tmp_path / "face.png"
    Image.fromarray(np.full((48, 48), 90, np.uint8)).save(face_png)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_mod, "load", interrupted)
    r = runner.invoke(app, ["predict", str(face_png), "--model", "nano", "--no-detect-faces"])
    assert r.exit_code == 130 and r.stderr == "interrupted: the command stopped before it finished\n", r.output


def test_version():
    from fer_edge import __version__

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output == f"fer-edge {__version__}\n", r.output


def test_a_folder_the_probe_was_made_in_is_writable_even_if_it_stays(tmp_path, monkeypatch):
    """QA: in an append-only folder (chattr +a) the probe is made but cannot be removed: still writable."""
    from fer_edge import utils

    def refuse(path, *a, **k):
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(utils.os, "rmdir", refuse)
    assert utils._unwritable(tmp_path) is None

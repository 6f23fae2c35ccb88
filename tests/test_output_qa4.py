"""fer-edge's output inside scripts and pipelines: COLUMNS=0 or not a number, paths holding rich markup, a closed
stdout, a reader that stops early, narrow tables, notes on stderr, and figures written exactly."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types

import pytest
from rich.console import Console
from typer.testing import CliRunner

from fer_edge.cli import app
from test_report_files import CHEAP, report_dir  # noqa: F401 (a fixture: one cheap bench's report folder)

runner = CliRunner()


def _text(output: str) -> str:
    return " ".join(output.split())


# --- COLUMNS=0 or not a number: taken as not set --------------------------------------------------------------
@pytest.mark.parametrize("columns", ["0", "abc", "-3"])
def test_a_columns_of_0_or_no_number_is_taken_as_not_set(columns, monkeypatch):
    """QA: ``COLUMNS=0`` (Docker's, in some setups) laid every table and message out in 0 columns: nothing
    printed, errors included; ``COLUMNS=abc`` lost the 200-column default off a terminal."""
    from fer_edge.console import WideConsole

    monkeypatch.setenv("COLUMNS", columns)
    out = io.StringIO()
    console = WideConsole(file=out)
    console.print("error: something went wrong")
    assert console.width == WideConsole.OFF_TERMINAL_WIDTH
    assert out.getvalue() == "error: something went wrong\n"


def test_a_valid_columns_is_still_the_width(monkeypatch):
    from fer_edge.console import WideConsole

    monkeypatch.setenv("COLUMNS", "57")
    assert WideConsole(file=io.StringIO()).width == 57


@pytest.mark.parametrize("args, code, where, expected", [
    (["--help"], 0, "out", "Facial-expression recognition from training to the edge."),
    (["bench", "--bogus"], 2, "err", "No such option: --bogus"),
], ids=["help", "usage-error"])
def test_typer_help_and_usage_errors_are_printed_at_columns_0(args, code, where, expected, capsys, monkeypatch):
    """QA: ``COLUMNS=0 fer-edge --help`` printed one newline, ``COLUMNS=0 fer-edge bench --bogus`` exited 2 with no
    usage message."""
    import typer.rich_utils

    from fer_edge.cli import main

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", None)  # restored after the test
    monkeypatch.setenv("COLUMNS", "0")
    monkeypatch.delenv("TERMINAL_WIDTH", raising=False)
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == code
    captured = capsys.readouterr()
    assert expected in _text(getattr(captured, where)), captured


# --- paths holding rich markup ------------------------------------------------------------------------------
#: ``[/x]`` raised rich's MarkupError after the work was done; ``[b]`` was eaten (``e[b]x`` shown as ``ex``)
MARKUP_NAMES = ["o[/x]", "e[b]x"]


def _whole(result, *texts) -> str:
    out = _text(result.output)
    assert result.exit_code == 0 and "Traceback" not in result.output and "MarkupError" not in result.output, \
        result.output
    for text in texts:
        assert _text(str(text)) in out, (text, out)
    return out


@pytest.mark.parametrize("name", MARKUP_NAMES)
def test_bench_prints_an_out_holding_markup_as_it_is(name, tmp_path, tiny_checkpoint, synthetic_csv):
    out = tmp_path / name
    r = runner.invoke(app, [str(a) for a in ["bench", tiny_checkpoint, "--data", synthetic_csv, *CHEAP,
                                              "--out", out]], env={"COLUMNS": "250"})
    _whole(r, f"reports in {out}/: report.json")


@pytest.mark.parametrize("name", MARKUP_NAMES)
def test_eval_prints_an_out_and_a_checkpoint_holding_markup_as_they_are(name, tmp_path, tiny_checkpoint,
                                                                      synthetic_csv):
    ckpt = tmp_path / f"{name}.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(tiny_checkpoint.read_bytes())
    out = tmp_path / name
    r = runner.invoke(app, ["eval", "--model", str(ckpt), "--data", str(synthetic_csv), "--out", str(out)],
                      env={"COLUMNS": "250"})
    _whole(r, f"({ckpt})", f"confusion matrix: {out}/confusion_")


@pytest.mark.parametrize("name", MARKUP_NAMES)
def test_export_prints_an_out_holding_markup_as_it_is(name, tmp_path, tiny_checkpoint):
    out = tmp_path / name
    r = runner.invoke(app, ["export", str(tiny_checkpoint), "--target", "onnx", "--precision", "fp32", "--no-validate",
                            "--out", str(out)], env={"COLUMNS": "250"})
    _whole(r, f"Exported to {out}", f"manifest: {out}/manifest.json")


@pytest.mark.parametrize("name", MARKUP_NAMES)
def test_report_merge_prints_reports_and_an_out_holding_markup_as_they_are(name, tmp_path, report_dir):  # noqa: F811
    import shutil

    src = tmp_path / f"r{name}"
    shutil.copytree(report_dir, src)
    out = tmp_path / f"m{name}"
    r = runner.invoke(app, ["report", "merge", str(src), "--out", str(out)], env={"COLUMNS": "250"})
    _whole(r, f"│ {src} │", f"wrote {out / 'merged.json'}")


def test_export_bench_prints_paths_and_reasons_holding_markup_as_they_are():
    from fer_edge.benchmarks.export_bench import print_report

    report = {"checkpoint": {"path": "ck[/x]/e[b]x.pt", "model": "fer_nano", "sha256": "ab" * 32},
              "export_seconds": {"onnx": 1.0}, "within_budget": True, "export_seconds_total": 1.0,
              "budget_seconds": 60, "wall_seconds_with_data_and_validation": 2.0, "sizes": {},
              "artifacts": [{"file": "e[b]x_fp32.onnx", "validation": {"status": "not validated",
                                                                        "reason": "not validated: [/x] no [b] data"}}],
              "failed": [{"target": "openvino", "precision": "int8", "reason": "cannot write o[/x]/e[b]x.xml"}]}
    out = io.StringIO()
    print_report(report, Console(file=out, width=250))
    text = out.getvalue()
    for whole in ("checkpoint ck[/x]/e[b]x.pt", "e[b]x_fp32.onnx", "not validated: [/x] no [b] data",
                  "export failed openvino int8: cannot write o[/x]/e[b]x.xml"):
        assert whole in text, text


def test_resize_parity_prints_an_error_holding_markup_as_it_is(synthetic_csv):
    from fer_edge.benchmarks import resize_parity

    r = runner.invoke(resize_parity.cli, ["no[/x]such[b]model.pt", "--data", str(synthetic_csv)],
                      env={"COLUMNS": "250"})
    assert r.exit_code in (1, 2) and "MarkupError" not in repr(r.exception), (r.output, r.exception)
    assert "error:" in r.output and "no[/x]such[b]model.pt" in r.output, r.output


# --- report merge: a row of unknown source ----------------------------------------------------------------------
def test_merge_keeps_a_row_of_unknown_source_unknown(tmp_path, report_dir):  # noqa: F811
    """QA: a row whose model and source sha256 were None (an artifact no manifest names, a file that cannot be
    read) was given the reference checkpoint's in merged.json/.csv/.md; README: "its model shown as ?"."""
    from fer_edge.benchmarks.report import merge_reports

    rep = json.loads((report_dir / "report.json").read_text())
    unknown = {**rep["rows"][0], "reference": False, "artifact": "trunc/mystery.onnx", "target": "onnx",
               "model": None, "source_sha256": None}
    old = {k: v for k, v in rep["rows"][0].items() if k not in ("model", "source_sha256")}  # a report before the keys
    rep["rows"] = [*rep["rows"], unknown, {**old, "artifact": "old/model.onnx", "target": "onnx"}]
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "report.json").write_text(json.dumps(rep))
    merged = merge_reports([tmp_path / "r"], tmp_path / "m")
    by_artifact = {r.get("artifact"): r for r in merged.rows}
    assert by_artifact["trunc/mystery.onnx"]["model"] is None
    assert by_artifact["trunc/mystery.onnx"]["source_sha256"] is None
    assert by_artifact["old/model.onnx"]["model"] == rep["reference"]["model"]  # an older report: the reference's
    assert by_artifact["old/model.onnx"]["source_sha256"] == rep["reference"]["sha256"]
    md = (tmp_path / "m" / "merged.md").read_text()
    assert any(line.startswith("| M1 | ? | onnx |") for line in md.splitlines()), md


# --- a closed stdout, a reader that stops early -----------------------------------------------------------------
def test_a_stdout_closed_before_the_start_leaves_the_command_to_run():
    """QA: ``fer-edge models --json >&-`` ended in AttributeError: 'NoneType' object has no attribute 'isatty'."""
    proc = subprocess.run([sys.executable, "-m", "fer_edge", "models", "--json"], preexec_fn=lambda: os.close(1),
                          stderr=subprocess.PIPE, timeout=120)
    assert proc.returncode == 0 and proc.stderr.decode() == "", proc.stderr.decode()


@pytest.mark.parametrize("script", ["resize_parity", "export_bench", "distill_speed", "ort_int8", "step_cost",
                                    "train_throughput"])
def test_a_benchmark_script_whose_reader_went_away_exits_141_quietly(script):
    """QA: ``python -m fer_edge.benchmarks.export_bench ... | head -1`` (and resize_parity, also its --help)
    exited 1, a parity failure's status, where fer-edge exits 141."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line is written
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # print's lines buffered, as by default
    try:
        proc = subprocess.run([sys.executable, "-m", f"fer_edge.benchmarks.{script}", "--help"], stdout=write,
                              stderr=subprocess.PIPE, env=env, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr.decode() == "", proc.stderr.decode()


def test_run_script_passes_a_status_on():
    from fer_edge.console import run_script

    import typer.rich_utils

    width = typer.rich_utils.MAX_WIDTH
    assert run_script(lambda: 3) == 3
    assert run_script(lambda: sys.exit(2)) == 2
    # the help width it sets for the script is put back: a later command run in-process (CliRunner) kept 120
    # columns and wrapped its usage errors there
    assert typer.rich_utils.MAX_WIDTH == width


# --- narrow tables ------------------------------------------------------------------------------------------
def _bench_rows() -> list[dict]:
    row = {"target": "onnx", "precision": "fp32", "runtime": "onnxruntime", "device": "CPUExecutionProvider",
           "batch": 1, "threads": 1, "load_ms": 3.0, "first_inference_ms": 1.0, "latency_ms": {"p50": 0.123},
           "throughput_ips": 8000.0, "accuracy": 0.74, "macro_f1": 0.7, "agreement": 1.0, "flips": 0,
           "max_abs_diff": 0.0, "size_bytes": 1000, "status": "ok", "reason": None}
    return [{**row, "model": "fer_small", "source_sha256": "a" * 64, "artifact": "exp1/fer_small_fp32.onnx"},
            {**row, "model": "deep_some_longer_folder_name_exp2", "source_sha256": "b" * 64,
             "artifact": "deep/some/longer/folder/name/exp2/x.onnx", "status": "parity-failed"}]


def test_the_bench_table_keeps_its_numbers_and_status_whole_at_80_columns(monkeypatch):
    """QA: at COLUMNS=80 the bench table dropped its Status column and showed Top-1 as ``74.…``."""
    from fer_edge.cli import bench as cli_bench

    report = types.SimpleNamespace(rows=_bench_rows(), settings={"n_images": 20, "split": "PublicTest"},
                                   reference={"model": "fer_small"})
    out = io.StringIO()
    Console(file=out, width=80).print(cli_bench.bench_table(report, 80))
    text = out.getvalue()
    assert max(map(len, text.splitlines())) <= 80, text
    assert "Status" in text and "parity-failed" in text and text.count("74.0%") == 2 and "…" not in text, text


def test_the_bench_table_says_when_it_cannot_be_shown_whole(monkeypatch, tmp_path):
    """Predict said its table was cut; bench did not."""
    from fer_edge.cli import bench as cli_bench

    report = types.SimpleNamespace(rows=_bench_rows(), settings={"n_images": 20, "split": "PublicTest"},
                                   reference={"model": "fer_small"})
    err = io.StringIO()
    monkeypatch.setattr(cli_bench, "console", Console(file=io.StringIO(), width=40))
    monkeypatch.setattr(cli_bench, "err_console", Console(file=err, width=200))
    cli_bench._narrow_table_note(cli_bench.bench_table(report, 40), tmp_path)
    assert "does not fit in 40 columns" in err.getvalue() and f"{tmp_path}/report.md" in err.getvalue(), err.getvalue()
    err.truncate(0)
    err.seek(0)
    # regression review: at 48 columns no cell is cut, but the names fold to a few letters (to nothing below):
    # no row said what it measured, and no note said so
    monkeypatch.setattr(cli_bench, "console", Console(file=io.StringIO(), width=48))
    cli_bench._narrow_table_note(cli_bench.bench_table(report, 48), tmp_path)
    assert "does not fit in 48 columns" in err.getvalue() and "names are folded" in err.getvalue(), err.getvalue()
    err.truncate(0)
    err.seek(0)
    monkeypatch.setattr(cli_bench, "console", Console(file=io.StringIO(), width=80))
    cli_bench._narrow_table_note(cli_bench.bench_table(report, 80), tmp_path)
    assert err.getvalue() == ""


def test_a_narrow_predict_table_keeps_the_columns_that_say_which_image(tmp_path, tiny_checkpoint):
    """QA: at COLUMNS=40 the image, face and box columns (at the left) vanished while the note said "columns at its
    right may be cut"."""
    import numpy as np
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.full((48, 48), 60 + 80 * i, np.uint8)).save(tmp_path / f"face{i}.png")
    r = runner.invoke(app, ["predict", str(tmp_path), "--model", str(tiny_checkpoint), "--no-detect-faces"],
                      env={"COLUMNS": "40"})
    assert r.exit_code == 0, r.output
    header = next(line for line in r.stdout.splitlines() if "label" in line)
    assert header.split()[:2] == ["image", "face"] and header.split()[-2:] == ["label", "p"], r.stdout
    assert "face0.png" in r.stdout and "face1.png" in r.stdout, r.stdout
    assert max(map(len, r.stdout.splitlines())) <= 40, r.stdout
    assert "only 40 are available" in _text(r.stderr) and "at its right" not in r.stderr, r.stderr


# --- notes on stderr ------------------------------------------------------------------------------------------
def test_bench_prints_its_notes_on_stderr(tmp_path, tiny_checkpoint, synthetic_csv):
    """QA: bench printed ``note:`` lines on stdout; every other command sends them to stderr."""
    args = [a if a != "pytorch" else "pytorch,onnxruntime" for a in CHEAP]  # a runtime nothing runs in: a note
    r = runner.invoke(app, [str(a) for a in ["bench", tiny_checkpoint, "--data", synthetic_csv, *args,
                                              "--out", tmp_path / "b"]], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "note: --runtimes onnxruntime" in _text(r.stderr) and "note:" not in r.stdout, (r.stdout, r.stderr)


# --- figures written exactly ----------------------------------------------------------------------------------
def test_int8_sensitivity_agreements_are_exact_fractions(synthetic_csv, tmp_path):
    """QA: ``int8_sensitivity --json`` stored 554/560 as float32's 0.9892857074737549."""
    import numpy as np
    import torch

    from fer_edge.benchmarks.int8_sensitivity import sensitivity
    from fer_edge.data.synthetic import make_synthetic, write_csv

    val = write_csv(tmp_path / "val.csv", {"PublicTest": make_synthetic(4, seed=1)})  # 28 images
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (several times faster on a loaded 2-core machine)
    try:
        # the shipped nano calibrated on one image: a face or two of the 28 flip (the tiny test model flips none)
        res = sensitivity("nano", str(synthetic_csv), str(val), 1, 0, progress=False)
    finally:
        torch.set_num_threads(threads)
    n = res["validation"]["count"]
    values = [*res["agreement"].values(), *res["weights_plus_one_activation"].values()]
    exact = [round(a * n) / n for a in values]
    if all(float(np.float32(a)) == a for a in exact):
        pytest.skip(f"no agreement here tells float32 from exact (n={n}: {sorted(set(values))})")
    assert values == exact, (n, values)


def test_ort_int8_prints_a_bracketed_path_as_it_is(tmp_path):
    """An error naming a folder such as ``e[/x]`` went through rich markup: MarkupError and a traceback."""
    from fer_edge.benchmarks.ort_int8 import cli

    empty = tmp_path / "e[/x]"  # (the folder x] in the folder e[)
    empty.mkdir(parents=True)
    res = CliRunner().invoke(cli, [str(empty)])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "no *_int8.onnx" in out and "e[/x]" in out, res.output


def test_the_soup_progress_console_has_a_width_under_columns_0(monkeypatch):
    """A plain rich Console took COLUMNS=0 (some containers set it) as a width of 0 and drew no progress bar."""
    from fer_edge.training.soup import _progress_console

    monkeypatch.setenv("COLUMNS", "0")
    assert _progress_console().width > 0


def test_the_trainer_console_has_a_width_under_columns_0(synthetic_csv, tmp_path, monkeypatch):
    """The trainer's own rich Console took COLUMNS=0 as a width of 0: its progress bars drew nothing."""
    from test_training import _cfg

    from fer_edge.training.trainer import Trainer

    monkeypatch.setenv("COLUMNS", "0")
    assert Trainer(_cfg(synthetic_csv, tmp_path / "r"), progress=False).console.width > 0


@pytest.mark.parametrize("module", ["fer_edge.benchmarks.ort_int8", "fer_edge.weights.ship"])
def test_a_script_prints_its_usage_error_under_columns_0(module, tmp_path):
    """Regression review: COLUMNS=0 was taken as unset by the fer-edge command only; a Typer script laid its usage
    error out in 0 columns (exit 2, nothing printed)."""
    env = {**os.environ, "COLUMNS": "0"}
    proc = subprocess.run([sys.executable, "-m", module, str(tmp_path / "missing.onnx")], capture_output=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and "missing.onnx" in " ".join(proc.stderr.decode().split()), proc.stderr.decode()


def test_a_columns_value_of_other_digits_is_no_size():
    from fer_edge.console import valid_size

    assert valid_size("80") and not valid_size("0") and not valid_size("abc") and not valid_size("²")


def test_train_prints_a_bracketed_out_folder_as_it_is(synthetic_csv, tmp_path):
    """Regression review: ``fer-edge train --out 'q[/x]'`` trained, wrote the run, then died with rich's
    MarkupError (exit 1) on its summary line, which the other commands' paths were already escaped against."""
    out = tmp_path / "q[/x]"
    r = runner.invoke(app, ["train", "--data", str(synthetic_csv), "--model", "simple_cnn", "--out", str(out),
                            "--epochs", "1", "--batch-size", "32", "--max-steps-per-epoch", "2", "--device", "cpu",
                            "--no-progress"], env={"COLUMNS": "400"})
    assert r.exit_code == 0 and f"run in {out}" in r.output, r.output
    assert (out / "best.pt").is_file()

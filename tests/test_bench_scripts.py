"""The benchmark scripts under fer_edge.benchmarks: output paths checked up front, clear errors for ordinary
mistakes, one ``interrupted:`` line (exit 130) on Ctrl-C, and figures of this run only."""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from fer_edge.data.synthetic import make_synthetic, write_csv

runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def tiny_csv(tmp_path_factory) -> Path:
    """14 training images: fewer than one batch of either training pipeline."""
    return write_csv(tmp_path_factory.mktemp("tiny") / "tiny.csv",
                     {"Training": make_synthetic(2, seed=0), "PublicTest": make_synthetic(2, seed=1)})


@pytest.fixture(scope="module")
def test_only_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("test_only") / "t.csv", {"PublicTest": make_synthetic(2, seed=1)})


@pytest.fixture(scope="module")
def int8_onnx(tiny_checkpoint, synthetic_csv, tmp_path_factory) -> Path:
    from fer_edge.exporters import export

    out = tmp_path_factory.mktemp("int8")
    res = export(tiny_checkpoint, ["onnx"], ["int8"], out, calib_data=synthetic_csv, calib_size=16, validate=False,
                 data_progress=False)
    return res.artifacts[0].path


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _interrupt(*a, **k):
    raise KeyboardInterrupt


def _never(*a, **k):
    raise AssertionError("the work started before the options were checked")


# --- 1. --json checked up front; written atomically ----------------------------------------------------------
def _bad_json_paths(tmp_path: Path) -> list[tuple[Path, str]]:
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    afile = tmp_path / "afile"
    afile.write_text("x")
    return [(folder, "is a folder"), (afile / "r.json", "is a file, not a folder")]


def test_int8_sensitivity_refuses_a_bad_json_path_before_any_work(tmp_path, monkeypatch, capsys, synthetic_csv,
                                                                   tiny_checkpoint):
    from fer_edge.benchmarks import int8_sensitivity

    monkeypatch.setattr(int8_sensitivity, "sensitivity", _never)
    for path, why in _bad_json_paths(tmp_path):
        rc = int8_sensitivity.main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--json", str(path)])
        err = _one_line(capsys.readouterr().err)
        assert rc == 1 and err.startswith("error: --json") and why in err, err
    assert (tmp_path / "results" / "keep.txt").read_text() == "precious"  # the folder is left as it was


def test_export_bench_refuses_a_bad_json_path_before_any_work(tmp_path, monkeypatch, capsys, synthetic_csv,
                                                              tiny_checkpoint):
    from fer_edge.benchmarks import export_bench

    monkeypatch.setattr(export_bench, "run", _never)
    for path, why in _bad_json_paths(tmp_path):
        rc = export_bench.main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--json", str(path)])
        err = _one_line(capsys.readouterr().err)
        assert rc == 1 and err.startswith("error: --json") and why in err, err
    assert (tmp_path / "results" / "keep.txt").read_text() == "precious"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_json_path_in_a_read_only_folder_is_refused(tmp_path, monkeypatch, capsys, synthetic_csv):
    from fer_edge.benchmarks import export_bench

    monkeypatch.setattr(export_bench, "run", _never)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert export_bench.main(["x.pt", "--calib-data", str(synthetic_csv), "--json", str(ro / "r.json")]) == 1
        assert "permission denied" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def test_export_bench_writes_its_json_atomically(tmp_path, monkeypatch, synthetic_csv):
    from fer_edge.benchmarks import export_bench

    written = []
    monkeypatch.setattr(export_bench, "run", lambda *a, **k: {"within_budget": True, "failed": [], "warnings": [],
                                                              "artifacts": [], "x": 1})
    monkeypatch.setattr(export_bench, "print_report", lambda report: None)
    import fer_edge.utils

    real = fer_edge.utils.write_text_atomic
    monkeypatch.setattr(fer_edge.utils, "write_text_atomic", lambda p, t: (written.append(p), real(p, t)))
    out = tmp_path / "new" / "r.json"
    assert export_bench.main(["x.pt", "--calib-data", str(synthetic_csv), "--json", str(out)]) == 0
    assert written == [str(out)] and json.loads(out.read_text())["x"] == 1


# --- 2. export_bench counts only this run's artifacts; 9. its progress bar --------------------------------------
def test_export_bench_rerun_into_an_out_folder_reports_only_this_runs_artifacts(tiny_checkpoint, synthetic_csv,
                                                                               tmp_path):
    from fer_edge.benchmarks.export_bench import run

    out = tmp_path / "o"
    first = run(tiny_checkpoint, synthetic_csv, out, targets=["torchscript"], precisions=["fp32"])
    assert set(first["export_seconds"]) == {"torchscript"}
    second = run(tiny_checkpoint, synthetic_csv, out, targets=["onnx"], precisions=["fp32"])
    manifest = json.loads((out / "all" / "manifest.json").read_text())
    assert {a["target"] for a in manifest["artifacts"]} == {"torchscript", "onnx"}  # the folder keeps both
    assert {a["target"] for a in second["artifacts"]} == {"onnx"}  # the report: this run's only
    assert set(second["export_seconds"]) == {"onnx"} and set(second["sizes"]) == {"onnx"}
    assert second["export_seconds_total"] == second["export_seconds"]["onnx"]


def test_export_bench_progress_bar_only_on_a_terminal(tiny_checkpoint, synthetic_csv, tmp_path):
    from fer_edge.benchmarks.export_bench import run

    shown, quiet = io.StringIO(), io.StringIO()
    run(tiny_checkpoint, synthetic_csv, tmp_path / "o", targets=["torchscript"], precisions=["fp32"], progress=True,
        console=Console(file=shown, force_terminal=True, width=120))
    assert "exports" in shown.getvalue()  # the transient bar was drawn on the (forced) terminal
    # off a terminal (as this console is not one): no bar at all
    run(tiny_checkpoint, synthetic_csv, tmp_path / "o", targets=["torchscript"], precisions=["fp32"],
        console=Console(file=quiet))
    assert quiet.getvalue() == ""


def test_this_run_keeps_the_entries_of_the_manifests_latest_run():
    from fer_edge.benchmarks.export_bench import this_run

    m = {"run_id": "b", "artifacts": [{"file": "old", "run": "a"}, {"file": "new", "run": "b"}]}
    assert [e["file"] for e in this_run(m)] == ["new"]


# --- 3. distill_speed: ordinary mistakes are errors, not tracebacks ---------------------------------------------
@pytest.mark.parametrize("args, msg, rc", [
    (["--student", "bogus"], "unknown model 'bogus'", 2),  # a value wrong on its own: a usage error
    (["--amp", "bogus"], "--amp 'bogus'", 2),
    (["--teacher", "NOTCKPT"], "not a readable checkpoint", 1),
    (["--data", "TEST_ONLY"], "has no 'Training' split", 1),
    # QA: 140 images (one batch of 128) and --steps 30 timed one step under a "30 steps" title; refused as by
    # step_cost (280 images here: two batches)
    (["--steps", "3"], "Training split holds 280 images: 2 full batch(es) of --batch-size 128, and each "
                       "measurement needs --steps 3", 1),
])
def test_distill_speed_reports_mistakes_without_a_traceback(args, msg, rc, synthetic_csv, test_only_csv,
                                                            tiny_checkpoint, tmp_path, monkeypatch):
    from fer_edge.benchmarks import distill_speed

    monkeypatch.setattr(distill_speed, "distill_run", _never)
    bad = tmp_path / "notckpt.pt"
    bad.write_text("not a checkpoint")
    subst = {"NOTCKPT": str(bad), "TEST_ONLY": str(test_only_csv)}
    args = [subst.get(a, a) for a in args]
    base = ["--data", str(synthetic_csv), "--teacher", str(tiny_checkpoint), "--steps", "2", "--rounds", "1"]
    r = runner.invoke(distill_speed.cli, [*base, *args])
    assert r.exit_code == rc and isinstance(r.exception, SystemExit), r.output
    assert r.stderr.startswith("error: ") and msg in _one_line(r.stderr) and "Traceback" not in r.output


def test_distill_speed_round_line_is_not_wrapped(synthetic_csv, tiny_checkpoint, monkeypatch):
    """QA: off a terminal the round line was cut in two at the console's width (`...; labelling: offline 1 s,⏎
    replay 1 s`): one logical line, one line in a log."""
    from fer_edge.benchmarks import distill_speed

    monkeypatch.setattr(distill_speed, "distill_run", lambda *a, **k: (12345.0, 1234.0 if a[9] != "online" else None))
    r = runner.invoke(distill_speed.cli, ["--data", str(synthetic_csv), "--teacher", str(tiny_checkpoint),
                                          "--steps", "2", "--rounds", "1"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if x.startswith("round 1/1: "))
    assert line.endswith("; labelling: offline 1234 s, replay 1234 s"), r.stdout


# --- 4. Ctrl-C: one "interrupted:" line, exit 130 -----------------------------------------------------------------
def test_export_bench_ctrl_c_says_what_it_left(tiny_checkpoint, synthetic_csv, tmp_path, monkeypatch, capsys):
    import fer_edge.exporters
    from fer_edge.benchmarks import export_bench

    monkeypatch.setattr(fer_edge.exporters, "export", _interrupt)
    args = [str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--json", str(tmp_path / "r.json")]
    assert export_bench.main([*args, "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted: ") and "Traceback" not in err
    assert f"--json {tmp_path / 'r.json'} was not written" in err and "no export of this run finished" in err
    (tmp_path / "o" / "all").mkdir(parents=True)
    (tmp_path / "o" / "all" / "manifest.json").write_text("{}")  # an earlier run's: not claimed as this run's
    assert export_bench.main([*args, "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert f"no export of this run finished ({tmp_path / 'o'} holds none of them)" in err and "(all" not in err
    seen = {}
    real = export_bench.tempfile.TemporaryDirectory

    def spy(*a, **k):
        seen["tmp"] = real(*a, **k)
        return seen["tmp"]

    monkeypatch.setattr(export_bench.tempfile, "TemporaryDirectory", spy)
    assert export_bench.main(args) == 130
    assert "temporary folder, removed" in capsys.readouterr().err and not Path(seen["tmp"].name).exists()
    assert not (tmp_path / "r.json").exists()


def test_int8_sensitivity_ctrl_c_prints_one_line(tiny_checkpoint, synthetic_csv, tmp_path, monkeypatch, capsys):
    import fer_edge.exporters.calibration
    from fer_edge.benchmarks import int8_sensitivity

    monkeypatch.setattr(fer_edge.exporters.calibration, "load_calibration", _interrupt)
    out = tmp_path / "s.json"
    assert int8_sensitivity.main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--json", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted: ") and f"--json {out} was not written" in err
    assert not out.exists()


def _assert_interrupted(r):
    assert r.exit_code == 130, r.output
    assert r.stderr.startswith("interrupted: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.output


def test_step_cost_ctrl_c_prints_one_line(synthetic_csv, monkeypatch):
    from fer_edge.benchmarks import step_cost

    monkeypatch.setattr(step_cost, "fer_edge_pipeline_run", _interrupt)
    r = runner.invoke(step_cost.cli, ["--data", str(synthetic_csv), "--model", "simple_cnn", "--batch-size", "8",
                                      "--steps", "2", "--rounds", "2", "--device", "cpu"])
    _assert_interrupted(r)
    assert "0 of 2 timing round(s) finished" in r.stderr


def test_train_throughput_ctrl_c_prints_one_line(synthetic_csv, monkeypatch):
    from fer_edge.benchmarks import train_throughput

    monkeypatch.setattr(train_throughput, "fer_edge_pipeline_ips", _interrupt)
    r = runner.invoke(train_throughput.cli, ["--data", str(synthetic_csv), "--device", "cpu", "--rounds", "2"])
    _assert_interrupted(r)
    assert "0 of 2 round(s) finished" in r.stderr


def test_distill_speed_ctrl_c_prints_one_line(synthetic_csv, tiny_checkpoint, monkeypatch):
    from fer_edge.benchmarks import distill_speed

    monkeypatch.setattr(distill_speed, "distill_run", _interrupt)
    r = runner.invoke(distill_speed.cli, ["--data", str(synthetic_csv), "--teacher", str(tiny_checkpoint),
                                          "--steps", "2"])  # 280 images: two batches of 128
    # QA: it printed nothing for minutes (labelling), then "0 of 1 round(s) finished (printed above)": each
    # configuration says when it starts
    assert r.exit_code == 130, r.output
    lines = r.stderr.splitlines()
    assert lines[0] == "round 1/3: no teacher ..." and lines[1].startswith("interrupted: ") and len(lines) == 2, lines
    assert "Traceback" not in r.output


def test_ort_int8_ctrl_c_prints_one_line(int8_onnx, monkeypatch):
    from fer_edge.benchmarks import ort_int8

    monkeypatch.setattr(ort_int8, "time_modes", _interrupt)
    r = runner.invoke(ort_int8.cli, [str(int8_onnx), "--batch", "1", "--rounds", "1", "--seconds", "0.05"])
    _assert_interrupted(r)
    assert "0 of 1 artifact x batch row(s)" in r.stderr


# --- 5. train_throughput on a split smaller than a batch -------------------------------------------------------------
def test_train_throughput_refuses_a_split_smaller_than_a_batch(tiny_csv, monkeypatch):
    import torch

    from fer_edge.benchmarks import train_throughput
    from fer_edge.errors import FerEdgeError

    r = runner.invoke(train_throughput.cli, ["--data", str(tiny_csv), "--device", "cpu", "--rounds", "1"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    assert "the Training split holds 14 images" in _one_line(r.stderr) and "at least 128" in r.stderr
    images = torch.zeros(14, 48, 48, dtype=torch.uint8)
    with pytest.raises(FerEdgeError, match="at least one full batch of 32 training images; the split holds 14"):
        train_throughput.notebook_pipeline_ips(images, torch.zeros(14, dtype=torch.long), "simple_cnn",
                                               torch.device("cpu"), steps=1)


@pytest.mark.parametrize("args, msgs", [
    (["--device", "foo"], ["--device: unknown device 'foo'; valid: auto, cpu, cuda, mps"]),
    (["--model", "foo"], ["--model: unknown model 'foo'; registered models: "]),
    (["--model", "foo", "--device", "foo"], ["--model: unknown model 'foo'", "; --device: unknown device 'foo'"]),
])
def test_train_throughput_usage_errors_exit_2_before_the_data_is_read(args, msgs, synthetic_csv, monkeypatch):
    """QA: --device foo and --model foo exited 1 (the model only after the data loaded and the probe started):
    usage errors, both in one, before any work, as step_cost's."""
    import fer_edge.data
    from fer_edge.benchmarks import train_throughput

    monkeypatch.setattr(fer_edge.data, "load_split", _never)
    monkeypatch.setattr(train_throughput, "fer_edge_pipeline_ips", _never)
    r = runner.invoke(train_throughput.cli, ["--data", str(synthetic_csv), "--rounds", "1", *args])
    assert r.exit_code == 2, r.output
    err = _one_line(r.stderr)
    assert err.startswith("error: ") and all(m in err for m in msgs) and "Traceback" not in r.output, err


def test_train_throughput_times_both_pipelines_from_their_first_step(synthetic_csv, monkeypatch):
    """QA: the notebook pipeline ran two untimed warm-up steps while fer-edge's figure (the trainer's
    images_per_second) times its epoch from the first step: every notebook step is timed now, and few steps get a
    note."""
    import torch

    import fer_edge.models
    from fer_edge.benchmarks import train_throughput

    forwards = []
    real = fer_edge.models.create_model

    def counted(*a, **k):
        model = real(*a, **k)
        model.register_forward_hook(lambda *h: forwards.append(1))
        return model

    monkeypatch.setattr(fer_edge.models, "create_model", counted)
    images = torch.zeros(64, 48, 48, dtype=torch.uint8)
    ips = train_throughput.notebook_pipeline_ips(images, torch.zeros(64, dtype=torch.long), "simple_cnn",
                                                 torch.device("cpu"), steps=3)
    assert len(forwards) == 3 and ips > 0  # no step outside the timing

    monkeypatch.setattr(train_throughput, "fer_edge_pipeline_ips", lambda *a, **k: 1000.0)
    monkeypatch.setattr(train_throughput, "notebook_pipeline_ips", lambda *a, **k: 1000.0)
    r = runner.invoke(train_throughput.cli, ["--data", str(synthetic_csv), "--device", "cpu", "--rounds", "1",
                                             "--seconds-hint", "1"])
    assert r.exit_code == 0, r.output
    note = next(line for line in r.stdout.splitlines() if line.startswith("note: each measurement"))
    assert note.startswith("note: each measurement is 2 step(s) of fer-edge's pipeline and 31 of the notebook's; "
                           "both are timed from the first step of a freshly built model"), r.stdout
    assert note.endswith("for steady-state rates")  # one line, as in a log


# --- 6, 7. step_cost: a split too small for --steps, repeated options ----------------------------------------------
def test_step_cost_refuses_fewer_batches_than_steps(synthetic_csv, monkeypatch):
    from fer_edge.benchmarks import step_cost

    monkeypatch.setattr(step_cost, "fer_edge_pipeline_run", _never)
    # 280 training images hold 17 batches of 16: 30 steps cannot run
    r = runner.invoke(step_cost.cli, ["--data", str(synthetic_csv), "--model", "simple_cnn", "--batch-size", "16",
                                      "--steps", "30", "--device", "cpu"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    err = _one_line(r.stderr)
    assert "Training split holds 280 images: 17 full batch(es) of --batch-size 16" in err
    assert "--steps 30" in err and "lower --steps or --batch-size" in err
    # the profiled runs need 6 steps even when --steps is lower
    r = runner.invoke(step_cost.cli, ["--data", str(synthetic_csv), "--model", "simple_cnn", "--batch-size", "64",
                                      "--steps", "2", "--device", "cpu"])
    assert r.exit_code == 1 and "4 full batch(es) of --batch-size 64" in _one_line(r.stderr)


@pytest.mark.parametrize("args, msg", [
    (["--model", "simple_cnn", "--model", "simple_cnn", "--batch-size", "8"], "--model simple_cnn is given more"),
    (["--model", "simple_cnn", "--batch-size", "8", "--batch-size", "8"], "--batch-size 8 is given more"),
])
def test_step_cost_refuses_repeated_options(args, msg, synthetic_csv, monkeypatch):
    from fer_edge.benchmarks import step_cost

    monkeypatch.setattr(step_cost, "step_counts", lambda *a, **k: {"ops_per_step": 1.0, "kernels_per_step": None})
    r = runner.invoke(step_cost.cli, ["--data", str(synthetic_csv), *args, "--steps", "2", "--rounds", "1",
                                      "--device", "cpu", "--amp", "off", "--threads", "1"])
    assert r.exit_code == 2 and msg in _one_line(r.stderr), r.output  # a usage error


@pytest.mark.parametrize("args, msg", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),  # QA: ZeroDivisionError
    (["--batch-size", "-4"], "--batch-size must be at least 1, got -4"),  # QA: "-35 full batch(es)"
    (["--device", "gpu"], "--device: unknown device 'gpu'; valid: auto, cpu, cuda, mps"),
    (["--amp", "bogus"], "--amp 'bogus': valid: auto, off, bf16, fp16"),
    (["--model", "nope"], "--model: unknown model 'nope'"),
])
def test_step_cost_usage_errors_exit_2_before_the_data_is_read(args, msg, synthetic_csv, monkeypatch):
    """QA: step_cost's own checks exited 1 where README says a value wrong on its own is a usage error (2)."""
    import fer_edge.data
    from fer_edge.benchmarks import step_cost

    monkeypatch.setattr(fer_edge.data, "load_split", _never)
    monkeypatch.setattr(step_cost, "fer_edge_pipeline_run", _never)
    r = runner.invoke(step_cost.cli, ["--data", str(synthetic_csv), "--steps", "2", "--rounds", "1", *args])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: ") and msg in _one_line(r.stderr) and "Traceback" not in r.output


def test_step_cost_title_names_the_autocast_used(synthetic_csv, monkeypatch):
    """QA: the title said "--amp auto", not which autocast ran, so runs could not be compared with --amp off."""
    import torch

    from fer_edge.benchmarks import step_cost
    from fer_edge.training import TrainConfig
    from fer_edge.training.trainer import autocast_dtype

    class _Res:
        history = [{"images_per_second": 100.0}]

    monkeypatch.setattr(step_cost, "fer_edge_pipeline_run", lambda *a, **k: _Res())
    monkeypatch.setattr(step_cost, "step_counts", lambda *a, **k: {"ops_per_step": 1.0, "kernels_per_step": None})
    used = autocast_dtype(TrainConfig(data="", amp="auto"), torch.device("cpu"))
    want = "--amp auto: " + {None: "off (fp32)", torch.bfloat16: "bf16"}[used]
    for amp, title in (("auto", want), ("off", "--amp off,"), ("bf16", "--amp bf16,")):
        r = runner.invoke(step_cost.cli, ["--data", str(synthetic_csv), "--model", "simple_cnn", "--batch-size", "8",
                                          "--steps", "2", "--rounds", "1", "--device", "cpu", "--amp", amp],
                          env={"COLUMNS": "300"})
        assert r.exit_code == 0, r.output
        assert title in r.stdout, r.stdout


# --- 8. ort_int8: --seconds, repeated paths, names that collide -------------------------------------------------------
@pytest.mark.parametrize("seconds", ["inf", "1e300"])
def test_ort_int8_refuses_an_unbounded_seconds(seconds, int8_onnx, monkeypatch):
    from fer_edge.benchmarks import ort_int8

    monkeypatch.setattr(ort_int8, "int8_artifacts", _never)
    r = runner.invoke(ort_int8.cli, [str(int8_onnx), "--seconds", seconds])
    assert r.exit_code == 2 and "--seconds" in r.stderr and "finite" in r.stderr, r.output  # a usage error


@pytest.mark.parametrize("args, msg", [
    (["--batch", "0"], "--batch takes comma-separated positive integers, got '0'"),
    (["--data", "CSV", "--split", ""], "is empty: name a split"),
    # QA: without --data they were ignored (even --split Foo), rc 0
    (["--split", "Foo"], "--split chooses the images of --data, and no --data was given: pass --data, or leave it out"),
    (["--n-images", "5"], "--n-images chooses the images of --data, and no --data was given"),
    (["--split", "PublicTest", "--n-images", "5"],
     "--split and --n-images choose the images of --data, and no --data was given: pass --data, or leave them out"),
    (["--batch", "0", "--split", "Foo"], "got '0'; --split chooses the images of --data"),  # all in one error
])
def test_ort_int8_usage_errors_exit_2(args, msg, int8_onnx, synthetic_csv, monkeypatch):
    """QA: --batch 0, --seconds inf and --split '' exited 1 (README: a value wrong on its own exits 2)."""
    from fer_edge.benchmarks import ort_int8

    monkeypatch.setattr(ort_int8, "int8_artifacts", _never)
    r = runner.invoke(ort_int8.cli, [str(int8_onnx), *[str(synthetic_csv) if a == "CSV" else a for a in args]])
    assert r.exit_code == 2 and msg in _one_line(r.stderr) and "Traceback" not in r.output, r.output


def test_ort_int8_measures_a_file_once_and_tells_same_named_files_apart(int8_onnx, tmp_path):
    from fer_edge.benchmarks import ort_int8

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        shutil.copy(int8_onnx, d / int8_onnx.name)
    args = [str(a), str(a / int8_onnx.name), str(b / int8_onnx.name), "--batch", "1", "--rounds", "1",
            "--seconds", "0.05"]
    r = runner.invoke(ort_int8.cli, args, env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    rows = [line for line in r.stdout.splitlines() if int8_onnx.name in line]
    assert len(rows) == 2, rows  # a's file once, though named twice
    assert f"a/{int8_onnx.name}" in rows[0] and f"b/{int8_onnx.name}" in rows[1]
    assert "measured once" in _one_line(r.stderr)


def test_display_names():
    from fer_edge.benchmarks.ort_int8 import display_names

    assert display_names([Path("/x/a/m.onnx"), Path("/x/b/m.onnx"), Path("/x/n.onnx")]) == [
        "a/m.onnx", "b/m.onnx", "n.onnx"]
    assert display_names([Path("/x/a/m.onnx"), Path("/y/a/m.onnx")]) == ["x/a/m.onnx", "y/a/m.onnx"]


# --- 9. int8_sensitivity's progress bar; 10. small messages ----------------------------------------------------------
def test_int8_sensitivity_progress_bar_only_on_a_terminal(tiny_checkpoint, synthetic_csv):
    from fer_edge.benchmarks.int8_sensitivity import sensitivity

    shown, quiet = io.StringIO(), io.StringIO()
    res = sensitivity(tiny_checkpoint, synthetic_csv, calib_size=16, progress=True,
                      console=Console(file=shown, force_terminal=True, width=120))
    assert "INT8 sensitivity" in shown.getvalue() and res["agreement"]
    sensitivity(tiny_checkpoint, synthetic_csv, calib_size=16, console=Console(file=quiet))
    assert quiet.getvalue() == ""


def test_int8_sensitivity_calib_size_zero_names_the_option(tiny_checkpoint, synthetic_csv, capsys):
    from fer_edge.benchmarks.int8_sensitivity import main

    assert main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--calib-size", "0"]) == 2  # usage error
    assert "--calib-size" in capsys.readouterr().err


def test_int8_sensitivity_prints_the_calibration_warnings(tiny_checkpoint, synthetic_csv, tmp_path, capsys):
    """QA: load_calibration's warnings were dropped (fer-edge export prints them on the same data): 16 images, or
    all 280 of the split when 9999 were asked for, without a word."""
    from fer_edge.benchmarks.int8_sensitivity import main

    out = tmp_path / "s.json"
    assert main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--calib-size", "16",
                 "--json", str(out)]) == 0
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("warning: calibration used 16 images of Training") and "fewer than 200" in err, err
    assert json.loads(out.read_text())["warnings"] == [err.removeprefix("warning: ")]
    assert main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--calib-size", "9999"]) == 0
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("warning: calibration used 280 images, all that Training of") and "(9999 asked for)" in err


def test_export_bench_empty_target_says_what_is_accepted(tiny_checkpoint, synthetic_csv, monkeypatch, capsys):
    from fer_edge.benchmarks import export_bench

    monkeypatch.setattr(export_bench, "run", _never)
    assert export_bench.main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--target", ""]) == 2
    err = _one_line(capsys.readouterr().err)
    assert "--target '' names no target; accepted: comma-separated onnx, openvino, coreml, torchscript, or all" in err


@pytest.mark.parametrize("args, msg", [
    (["--target", "bogus"], "unknown target 'bogus'"),
    (["--calib-seeds", "a"], "--calib-seeds: expected comma-separated integers, got 'a'"),
    (["--calib-seeds", "1,1"], "--calib-seeds: a seed is repeated"),
    (["--calib-size", "0"], "--calib-size must be at least 1 (got 0)"),
    # QA: accepted and ignored (the main export ran, no method compared), where --calib-seeds "" is refused
    (["--calib-methods", ""], "--calib-methods was given an empty value ('')"),
])
def test_export_bench_usage_errors_exit_2(args, msg, tiny_checkpoint, synthetic_csv, monkeypatch, capsys):
    """QA: export_bench returned 1 for every error; a value wrong on its own is a usage error (README: exit 2)."""
    import fer_edge.exporters.calibration
    from fer_edge.benchmarks import export_bench

    monkeypatch.setattr(fer_edge.exporters.calibration, "load_calibration", _never)  # refused before any work
    assert export_bench.main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), *args]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("error: ") and msg in err, err


def test_export_bench_prints_the_exports_warnings(tiny_checkpoint, synthetic_csv, tmp_path, monkeypatch, capsys):
    """QA: 16 calibration images and a parity gate on 84 validation images ("not validated") passed without a
    word, where fer-edge export warns: the exports' warnings are in the report, each once, and printed."""
    from fer_edge.benchmarks import export_bench

    report = export_bench.run(tiny_checkpoint, synthetic_csv, tmp_path / "o", targets=["onnx"], precisions=["int8"],
                              calib_size=16, calib_methods=["minmax"])  # a second export: its warnings once
    text = " | ".join(report["warnings"])
    assert "calibration used 16 images" in text and "the parity gate has only 84 validation images" in text, text
    assert len(report["warnings"]) == len(set(report["warnings"]))
    monkeypatch.setattr(export_bench, "run", lambda *a, **k: report)
    assert export_bench.main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv)]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("warning: ")] == \
        [f"warning: {w}" for w in report["warnings"]], err


def test_export_bench_fails_on_parity_as_bench_does_and_always_names_the_failures(tmp_path, monkeypatch, capsys,
                                                                               synthetic_csv):
    """QA: an artifact that failed the parity gate ("failed: ..." in the table) left the exit status 0, where
    fer-edge export and fer-edge bench exit 1, and nothing closed the output naming it: it exits 1 with an error
    line; with --no-parity-gate (bench's option) a closing warning names the artifacts and the status stays 0."""
    from fer_edge.benchmarks import export_bench

    why = "top-1 agreement 90.00% < 97.00% (8 of 84 flipped)"
    report = {"within_budget": True, "failed": [], "warnings": [],
              "artifacts": [{"file": "fer_nano_fp32.onnx", "validation": {"status": "passed", "reason": ""}},
                            {"file": "fer_nano_int8.onnx", "validation": {"status": "failed", "reason": why}}]}
    monkeypatch.setattr(export_bench, "run", lambda *a, **k: report)
    monkeypatch.setattr(export_bench, "print_report", lambda report: None)
    args = ["x.pt", "--calib-data", str(synthetic_csv), "--json", str(tmp_path / "r.json")]
    assert export_bench.main([*args, "--no-parity-gate"]) == 0
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == (f"warning: 1 artifact(s) failed the parity gate: fer_nano_int8.onnx ({why}) (exit status "
                    "unaffected: --no-parity-gate)"), last
    (tmp_path / "r.json").unlink()
    assert export_bench.main(args) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"error: 1 artifact(s) failed the parity gate: fer_nano_int8.onnx ({why})", err
    assert err.count("parity gate") == 1 and (tmp_path / "r.json").exists()  # the report is still written
    report["artifacts"][1]["validation"] = {"status": "passed", "reason": ""}
    assert export_bench.main(args) == 0 and "parity" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_bench.main(["--help"])
    assert "exit status: 0; 1 when an export failed" in _one_line(capsys.readouterr().out)


def test_export_bench_closes_with_every_reason_for_exit_1(tmp_path, monkeypatch, capsys, synthetic_csv):
    """A failed export or an export time over the budget exited 1 with no closing word (only the tables said why):
    one closing error line names every reason, the parity gate's too."""
    from fer_edge.benchmarks import export_bench

    report = {"within_budget": False, "export_seconds_total": 75.4, "budget_seconds": 60.0, "warnings": [],
              "failed": [{"target": "openvino", "precision": "int8", "reason": "No suitable implementations"}],
              "artifacts": [{"file": "fer_nano_int8.onnx", "validation": {"status": "failed", "reason": "why"}}]}
    monkeypatch.setattr(export_bench, "run", lambda *a, **k: report)
    monkeypatch.setattr(export_bench, "print_report", lambda report: None)
    args = ["x.pt", "--calib-data", str(synthetic_csv)]
    assert export_bench.main(args) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == ("error: 1 export(s) failed: openvino int8 (No suitable implementations); the total export "
                       "time 75.4 s is over the 60 s budget; 1 artifact(s) failed the parity gate: "
                       "fer_nano_int8.onnx (why)"), err
    assert export_bench.main([*args, "--no-parity-gate"]) == 1  # the other reasons still fail it
    err = capsys.readouterr().err.splitlines()
    assert err[-2].startswith("warning: 1 artifact(s) failed the parity gate") and err[-1].startswith(
        "error: 1 export(s) failed: openvino int8") and "parity" not in err[-1], err


def test_export_bench_too_small_val_data_advises_only_its_own_options(tiny_checkpoint, synthetic_csv, tmp_path,
                                                                      capsys):
    """QA: export_bench's error for a --val-data below the gate's minimum advised --no-validate, an option of
    fer-edge export that export_bench does not have; fer-edge export's own advice stays as it was."""
    from fer_edge.benchmarks import export_bench
    from fer_edge.errors import FerEdgeError
    from fer_edge.exporters import export

    assert export_bench.main([str(tiny_checkpoint), "--calib-data", str(synthetic_csv), "--val-data",
                              str(synthetic_csv), "--target", "torchscript", "--out", str(tmp_path / "o")]) == 1
    err = _one_line(capsys.readouterr().err)
    assert "only 84 validation images" in err and err.endswith(
        ": pass a larger validation split (--val-split) or data set (--val-data)"), err
    assert "--no-validate" not in err
    with pytest.raises(FerEdgeError) as e:
        export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path / "e", val_data=synthetic_csv, data_progress=False)
    assert str(e.value).endswith(": pass a larger validation split (--val-split) or data set, or --no-validate")


def test_export_bench_shows_why_an_artifact_was_not_validated():
    from fer_edge.benchmarks.export_bench import print_report

    why = "not validated: Core ML runs on macOS only"
    report = {
        "checkpoint": {"path": "c.pt", "model": "fer_nano", "sha256": "0" * 64}, "calibration": None,
        "validation_data": None, "export_seconds": {"coreml": 1.0}, "export_seconds_total": 1.0,
        "within_budget": True, "budget_seconds": 60.0, "wall_seconds_with_data_and_validation": 2.0,
        "sizes": {}, "failed": [],
        "artifacts": [{"file": "fer_nano_fp32.mlpackage", "validation": {"status": "not validated", "reason": why}},
                      {"file": "fer_nano_fp32.onnx", "validation": {"status": "passed", "reason": "ok"}}],
    }
    console = Console(record=True, width=250, file=io.StringIO())
    print_report(report, console=console)
    text = console.export_text()
    assert why in text and "passed" in text and "passed: ok" not in text


def test_resize_parity_puts_other_resizes_beside_fer_edges(tiny_checkpoint, synthetic_csv, monkeypatch):
    """The OpenCV and resize-then-luma rows count top-label changes against fer-edge's own resize."""
    import numpy as np

    from fer_edge.benchmarks import resize_parity

    gray = np.random.default_rng(0).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    crops = resize_parity.crops(gray, seed=0)
    assert all(c.ndim == 3 and c.shape[2] == 3 and 80 <= c.shape[0] < 220 for c in crops)
    ways = resize_parity.resized(crops[0])
    assert set(ways) == {"fer-edge", "opencv-area", "rgb-then-luma", "android-bilinear", "android-halving"}
    assert all(w.shape == (48, 48) and w.dtype == np.uint8 for w in ways.values())
    assert not np.array_equal(ways["fer-edge"], ways["opencv-area"])  # another filter, other pixels
    # Android's createScaledBitmap(filter=true) samples 2x2 source pixels per output pixel however large the crop;
    # halving first (exact 2x2 averages) keeps more of the picture: closer to a box filter than bilinear alone
    big = np.random.default_rng(1).integers(0, 256, (192, 192, 3), dtype=np.uint8)
    w = resize_parity.resized(big)
    box = big.astype(np.float64).reshape(48, 4, 48, 4, 3).mean((1, 3)) @ [0.299, 0.587, 0.114]
    err = {k: np.abs(w[k] - box).mean() for k in ("android-bilinear", "android-halving")}
    assert err["android-halving"] < 1 < err["android-bilinear"], err  # a 4x halving is exactly the box
    flat = np.full((100, 100, 3), 77, dtype=np.uint8)
    assert all((v == 77).all() for v in resize_parity.resized(flat).values())  # every way keeps a flat grey
    monkeypatch.setenv("COLUMNS", "250")
    r = CliRunner().invoke(resize_parity.cli, [str(tiny_checkpoint), "--data", str(synthetic_csv),
                                               "--n-images", "20"])
    assert r.exit_code == 0, r.output
    assert "opencv-area" in r.output and "rgb-then-luma" in r.output and "on 20 " in r.output
    assert "android-bilinear" in r.output and "android-halving" in r.output and "accuracy" in r.output
    r = CliRunner().invoke(resize_parity.cli, ["nope.pt", "--data", str(synthetic_csv)])
    assert r.exit_code == 1 and "error:" in r.output and "Traceback" not in r.output


def test_resize_parity_usage_errors_exit_2_and_notes_a_sample_above_the_split(tiny_checkpoint, synthetic_csv):
    """QA: --split '' exited 1; --n-images 999 on a smaller split used all of it without a word (fer-edge bench
    notes it)."""
    from fer_edge.benchmarks import resize_parity

    for args in (["--split", ""], []):
        r = CliRunner().invoke(resize_parity.cli, [*args, "--data", str(synthetic_csv), "--n-images", "1"]
                               if args else ["", "--data", str(synthetic_csv)])
        assert r.exit_code == 2 and "is empty" in r.stderr and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(resize_parity.cli, [str(tiny_checkpoint), "--data", str(synthetic_csv),
                                               "--n-images", "9999"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "note: --n-images 9999 is more than the 84 images of the PublicTest split: all of them were used" in \
        _one_line(r.stderr) and "on 84 PublicTest faces" in r.stdout


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_resize_parity_interrupted_while_loading_prints_one_line(how, tiny_checkpoint, synthetic_csv, monkeypatch):
    """QA: interrupted while it read the data, it exited 130 (SIGINT) or 143 (SIGTERM) with nothing on stderr."""
    import signal

    import fer_edge.benchmarks.bench
    from fer_edge.benchmarks import resize_parity

    class _NotHandled(Exception):
        pass

    def _signal(*a, **k):
        if how == "SIGINT":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the work")

    def _unhandled(signum, frame):  # what a SIGTERM the script does not catch does (here: without killing pytest)
        raise _NotHandled

    monkeypatch.setattr(fer_edge.benchmarks.bench, "load_inputs", _signal)
    previous = signal.signal(signal.SIGTERM, _unhandled)
    try:
        r = CliRunner().invoke(resize_parity.cli, [str(tiny_checkpoint), "--data", str(synthetic_csv)])
    finally:
        signal.signal(signal.SIGTERM, previous)
    _assert_interrupted(r)
    assert "nothing was measured" in r.stderr


def test_the_scripts_tables_are_wide_off_a_terminal(monkeypatch):
    """QA: `python -m fer_edge.benchmarks.export_bench ... > log` cut every table to 80 columns (fer_nan…, Agreem…),
    where `fer-edge`'s own tables are 200 wide off a terminal, as README says."""
    import io
    from pathlib import Path

    import fer_edge.benchmarks
    from fer_edge.console import WideConsole

    monkeypatch.delenv("COLUMNS", raising=False)
    assert WideConsole(file=io.StringIO()).size.width >= 200
    assert WideConsole(file=io.StringIO(), width=90).size.width == 90  # a width asked for is kept
    plain = [p.name for p in Path(fer_edge.benchmarks.__file__).parent.glob("*.py")
             if "from rich.console import Console" in p.read_text()]
    assert plain == [], f"scripts printing with rich's 80-column Console off a terminal: {plain}"


def test_step_cost_profiling_on_a_cpu_prints_no_gpu_errors(synthetic_csv):
    """torch's profiler (kineto) printed `ERROR: ... gpuGetDeviceCount failed` and trace lines to stderr on a
    machine without a GPU, where nothing was wrong. The C++ library writes to the process's stderr: a subprocess."""
    import os
    import subprocess
    import sys

    code = ("from fer_edge.benchmarks.step_cost import step_counts; "
            f"r = step_counts({str(synthetic_csv)!r}, 'simple_cnn', 'cpu', 32, 'off', steps=(1, 2)); "
            "print(r['ops_per_step'] > 0, r['kernels_per_step'])")
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "None"]
    assert "gpuGetDeviceCount" not in r.stderr and "ERROR:" not in r.stderr and "USDT:" not in r.stderr, r.stderr

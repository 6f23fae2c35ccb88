"""QA pass 4 of fer-edge bench: a validation failure keeps earlier rows' timing, a --runtimes that runs nothing is a
usage error before any work, a file changed while being benchmarked fails its rows, merged.md shows each machine's
Top-1 when they differ, and an interrupted bench or merge names only what its own write put in --out."""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fer_edge.cli import app

#: One timed call per row, batch 1 and 4, one thread: the machine is shared.
QUICK_KW = dict(iters=2, warmup=0, rounds=1, batches=(1, 4), threads=1)
QUICK = ["--iters", "2", "--warmup", "0", "--rounds", "1", "--batch", "1", "--threads", "1"]


def invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _text(result) -> str:
    return " ".join(result.output.split())


def _bench(artifacts, synthetic_csv, **kw):
    from fer_edge.benchmarks.bench import run_bench

    return run_bench(artifacts, data=synthetic_csv, split="PublicTest", **{**QUICK_KW, **kw})


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint) -> Path:
    """fp32 ONNX and fp32 OpenVINO IR of the tiny checkpoint, with their manifest (no export gate: quick)."""
    from fer_edge.exporters import export

    out = tmp_path_factory.mktemp("qa4_export")
    export(tiny_checkpoint, targets=["onnx", "openvino"], precisions=["fp32"], out_dir=out, validate=False,
           data_progress=False)
    return out


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, tiny_checkpoint, synthetic_csv) -> Path:
    """A real bench report of the tiny checkpoint alone (PyTorch rows only: quick)."""
    out = tmp_path_factory.mktemp("qa4_report")
    _bench([tiny_checkpoint], synthetic_csv, batches=(1,), out_dir=out)
    return out


# --- 1: a later group's validation failure ---------------------------------------------------------------------------
def test_a_later_validation_failure_keeps_the_timing_of_earlier_parity_failed_rows(monkeypatch, tmp_path, exported,
                                                                                    tiny_checkpoint, synthetic_csv):
    """QA: after a group's validation error, every row not ``ok`` was dropped from the timing, so an earlier
    artifact's parity-failed rows ended with no latency and no reason."""
    import onnx
    from onnx import numpy_helper

    from fer_edge.benchmarks import bench

    model = onnx.load(str(exported / "fer_nano_fp32.onnx"))
    bias = [t for t in model.graph.initializer if list(t.dims) == [7]][-1]
    arr = numpy_helper.to_array(bias).copy()
    arr[0] += 0.5  # |diff| 0.5, far above fp32's 1e-3: parity-failed
    bias.CopyFrom(numpy_helper.from_array(arr, bias.name))
    off = tmp_path / "a" / "off_fp32.onnx"
    off.parent.mkdir()
    onnx.save(model, str(off))
    good = tmp_path / "b" / "good_fp32.onnx"
    good.parent.mkdir()
    shutil.copy(exported / "fer_nano_fp32.onnx", good)
    real = bench.run_in_chunks

    def run_in_chunks(run, x, batch):  # the second artifact's accuracy pass fails (the first one's is fine)
        rt = getattr(run, "__self__", None)
        if rt is not None and Path(rt.path).name == good.name:
            raise RuntimeError("validation went wrong")
        return real(run, x, batch)

    monkeypatch.setattr(bench, "run_in_chunks", run_in_chunks)
    report = _bench([off, good], synthetic_csv, reference=tiny_checkpoint, runtimes=["onnxruntime"])
    by = {(Path(r["artifact"]).name, r["batch"]): r for r in report.rows}
    assert set(by) == {(off.name, 1), (off.name, 4), (good.name, 1), (good.name, 4)}
    for b in (1, 4):
        r = by[(off.name, b)]
        assert r["status"] == "parity-failed" and "max |logit diff|" in r["reason"], r
        assert r["latency_ms"] is not None and r["iters"] == 2 and r["throughput_ips"], r  # still timed
        g = by[(good.name, b)]
        assert g["status"] == "failed" and g["reason"] == "validation: RuntimeError: validation went wrong", g
        assert g["latency_ms"] is None


# --- 2: a --runtimes that no input runs in ---------------------------------------------------------------------------
@pytest.mark.parametrize("runtime", ["torchscript", "coreml"])
def test_runtimes_no_input_runs_in_is_a_usage_error_before_any_work(runtime, monkeypatch, tmp_path, exported,
                                                                     synthetic_csv):
    """QA: ``--runtimes torchscript`` over an ONNX/OpenVINO folder loaded the data, ran the reference, then
    replaced a good report.json with one of no rows (and an error about a status column that was not there)."""
    from fer_edge.benchmarks import bench
    from fer_edge.errors import OptionError

    def no_work(*a, **k):
        raise AssertionError("the data was loaded")

    monkeypatch.setattr(bench, "load_inputs", no_work)
    out = tmp_path / "out"
    out.mkdir()
    old = {"report.json": b'{"created_at": "earlier"}', "report.md": b"earlier"}
    for name, data in old.items():
        (out / name).write_bytes(data)
    result = invoke(["bench", exported, "--data", synthetic_csv, "--runtimes", runtime, *QUICK, "--out", out])
    assert result.exit_code == 2, result.output
    text = _text(result)
    assert f"error: --runtimes {runtime}: none of the inputs runs in it; they run in onnxruntime, openvino and " \
           "pytorch (the reference checkpoint)" in text, text
    assert " rows; reports in" not in text
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # the earlier report, byte for byte
    with pytest.raises(OptionError, match="--runtimes torchscript,coreml: none of the inputs runs in them"):
        _bench([exported], synthetic_csv, runtimes=["torchscript", "coreml"])
    # one of several that runs something: the bench goes on, and its notes name the other
    monkeypatch.undo()
    report = _bench([exported], synthetic_csv, runtimes=[runtime, "pytorch"], batches=(1,))
    assert report.rows and {r["runtime"] for r in report.rows} == {"pytorch"}
    assert f"--runtimes {runtime}: no artifact among the inputs runs in it" in report.notes


def test_one_runtime_given_as_a_string_is_that_runtime(tmp_path, exported, synthetic_csv):
    """Regression review: ``run_bench(runtimes="onnxruntime")`` (one name, not a list) was read letter by letter
    ("--runtimes o,n,n,x,...: none of the inputs runs in them"); before that check it ran by a substring test."""
    report = _bench([exported], synthetic_csv, runtimes="onnxruntime", devices="cpu", batches=(1,))
    assert report.rows and {r["runtime"] for r in report.rows} == {"onnxruntime"}


# --- 3: a file changed between its check and its load ----------------------------------------------------------------
@pytest.mark.parametrize("which", ["onnx", "openvino-bin", "checkpoint"])
def test_a_file_changed_while_being_benchmarked_fails_its_rows(which, monkeypatch, tmp_path, exported,
                                                               tiny_checkpoint, synthetic_csv):
    """QA: a file written over between the SHA-256 check and its load was benchmarked under the old hash and size
    (the rows' sha256 named bytes that were not measured)."""
    from fer_edge.runtimes.onnxruntime import OnnxRuntime
    from fer_edge.runtimes.openvino import OpenVINORuntime
    from fer_edge.runtimes.pytorch import PyTorchRuntime

    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    ckpt = tmp_path / "tiny.pt"
    shutil.copy(tiny_checkpoint, ckpt)
    cls, changed, runtime = {
        "onnx": (OnnxRuntime, folder / "fer_nano_fp32.onnx", "onnxruntime"),
        "openvino-bin": (OpenVINORuntime, folder / "fer_nano_fp32.bin", "openvino"),  # the weights beside the .xml
        "checkpoint": (PyTorchRuntime, ckpt, "pytorch"),
    }[which]
    real_init = cls.__init__

    def init(self, *a, **k):  # the runtime has read the file; another process writes it over now
        real_init(self, *a, **k)
        with open(changed, "ab") as fh:
            fh.write(b"\0")

    monkeypatch.setattr(cls, "__init__", init)
    other = "onnxruntime" if runtime == "pytorch" else "pytorch"
    report = _bench([folder], synthetic_csv, reference=ckpt, runtimes=[runtime, other], batches=(1,))
    mine = [r for r in report.rows if r["runtime"] == runtime]
    assert mine and all(r["status"] == "failed" for r in mine), mine
    for r in mine:
        assert r["reason"].startswith(f"ArtifactError: {changed}: changed while being benchmarked"), r["reason"]
        assert r["latency_ms"] is None and r["accuracy"] is None
    others = [r for r in report.rows if r["runtime"] == other]
    assert others and all(r["status"] == "ok" for r in others), others  # the other artifacts are measured


def test_an_unchanged_artifact_passes_the_check_and_every_file_is_covered(exported):
    """The check covers every file of an entry (OpenVINO's .xml and .bin), and a file no manifest lists is hashed
    when collected."""
    from fer_edge.benchmarks.artifacts import check_unchanged, collect_artifacts

    arts = {a.runtime: a for a in collect_artifacts([exported])}
    assert set(arts["openvino"].files) == {str(exported / "fer_nano_fp32.xml"), str(exported / "fer_nano_fp32.bin")}
    assert set(arts["onnxruntime"].files) == {str(exported / "fer_nano_fp32.onnx")}
    for art in arts.values():
        check_unchanged(art)
    loose = collect_artifacts([exported / "fer_nano_fp32.xml"])[0]
    assert set(loose.files) == set(arts["openvino"].files)


# --- 4: merged.md on the same data ------------------------------------------------------------------------------------
def test_merged_p50_table_shows_each_machines_top1_when_they_differ_on_the_same_data(tmp_path, report_dir):
    """QA: on the same data the p50 table had one Top-1 column, the first machine's, hiding another accuracy
    (INT8 on CPUs with and without VNNI)."""
    from fer_edge.benchmarks.report import merge_reports

    a = json.loads((report_dir / "report.json").read_text())
    b = json.loads(json.dumps(a))
    b["environment"]["hostname"] = "other-host"
    b["rows"][0]["accuracy"] = 0.125
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    merged = merge_reports([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "m")
    assert not merged.warnings  # the same data
    p50 = (tmp_path / "m" / "merged.md").read_text().split("All rows:")[0]
    header = next(line for line in p50.splitlines() if "M1 p50 ms" in line)
    assert "| M1 Top-1 | M2 Top-1 |" in header, header
    line = next(line for line in p50.splitlines() if "12.5%" in line)
    assert f"{100 * a['rows'][0]['accuracy']:.1f}%" in line, line
    # the same figures: one column
    merge_reports([tmp_path / "a.json", report_dir / "report.json"], tmp_path / "same")  # (one machine, twice)
    c = json.loads(json.dumps(a))
    c["environment"]["hostname"] = "third-host"
    (tmp_path / "c.json").write_text(json.dumps(c))
    merge_reports([tmp_path / "a.json", tmp_path / "c.json"], tmp_path / "same")
    header = next(line for line in (tmp_path / "same" / "merged.md").read_text().splitlines() if "M1 p50" in line)
    assert "| Top-1 |" in header and "M1 Top-1" not in header, header


# --- 5: interrupted runs and another run's files ---------------------------------------------------------------------
def test_an_interrupted_bench_does_not_take_another_runs_report_for_its_own(monkeypatch, tmp_path, tiny_checkpoint,
                                                                            synthetic_csv):
    """QA: bench A interrupted after bench B wrote its report into the same --out said it held A's report."""
    from fer_edge.benchmarks import bench

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"created_at": "earlier"}))

    def other_run_then_ctrl_c(*a, **k):  # run B finishes its report while A is timing; then A gets Ctrl-C
        tmp = out / ".b.json"
        tmp.write_text(json.dumps({"created_at": "run B"}))
        os.replace(tmp, out / "report.json")
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "timed_turn", other_run_then_ctrl_c)
    result = invoke(["bench", tiny_checkpoint, "--data", synthetic_csv, "--split", "PublicTest", *QUICK,
                     "--runtimes", "pytorch", "--out", out])
    assert result.exit_code == 130, result.output
    text = _text(result)
    assert "this run's" not in text, text
    assert (f"interrupted: no report was written by this run; the report.json in {out}/ (created run B) was "
            "written meanwhile by another one") in text, text


def test_a_signal_while_the_bench_writes_still_names_this_runs_files(monkeypatch, tmp_path, tiny_checkpoint,
                                                                     synthetic_csv):
    """An interrupt held over the writes is raised after them: the files are this run's, and only those written."""
    import fer_edge.benchmarks.report as report_mod
    from fer_edge.errors import PlotError

    real = report_mod.BenchReport.write

    def write(self, out_dir):
        os.kill(os.getpid(), signal.SIGINT)  # held until the files are written
        return real(self, out_dir)

    def no_plot(*a, **k):  # (a plot not drawn: its PNG is not this run's file)
        raise PlotError("no plot here")

    monkeypatch.setattr(report_mod.BenchReport, "write", write)
    monkeypatch.setattr(report_mod, "plot_latency_vs_accuracy", no_plot)
    out = tmp_path / "out"
    result = invoke(["bench", tiny_checkpoint, "--data", synthetic_csv, "--split", "PublicTest", *QUICK,
                     "--runtimes", "pytorch", "--out", out])
    assert result.exit_code == 130, result.output
    text = _text(result)
    assert (f"interrupted: after the report was written: {out}/ holds this run's report.json, report.csv, "
            "report.md; the summary was not printed") in text, text
    assert json.loads((out / "report.json").read_text())["rows"]


def test_an_interrupted_merge_does_not_take_another_runs_files_for_its_own(monkeypatch, tmp_path, report_dir):
    import fer_edge.benchmarks.report as report_mod

    out = tmp_path / "m"

    def other_merge_then_ctrl_c(*a, **k):  # another merge writes into the same --out; then this one gets Ctrl-C
        out.mkdir(exist_ok=True)
        (out / "merged.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(report_mod, "merged_markdown", other_merge_then_ctrl_c)
    result = invoke(["report", "merge", report_dir, "--out", out])
    assert result.exit_code == 130, result.output
    text = _text(result)
    assert "this run's" not in text, text
    assert (f"interrupted: no merged files were written by this run; the merged.json in {out}/ was written "
            "meanwhile by another one") in text, text

"""fer-edge bench, devices and report merge, on the tiny checkpoint and a small exported artifact set."""
from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fer_edge.benchmarks.schema import LATENCY_KEYS, REPORT_SCHEMA, ROW_SCHEMA, validate
from fer_edge.cli import app

#: Keep every run short: few timed calls, small batches, one thread (the test machine is shared).
FAST = ["--iters", "3", "--warmup", "1", "--rounds", "2", "--batch", "1,4", "--threads", "1"]
FAST_KW = dict(iters=3, warmup=1, rounds=2, batches=(1, 4), threads=1)
LINUX_RUNTIMES = {"pytorch", "torchscript", "onnxruntime", "openvino"}
MEASURED_FIELDS = ("threads", "load_ms", "first_inference_ms", "latency_ms", "throughput_ips", "peak_rss_mb",
                   "accuracy", "macro_f1", "agreement", "max_abs_diff", "kl", "flips", "artifact", "size_bytes")


def invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory, tiny_checkpoint, synthetic_csv) -> Path:
    """fp32 + int8 ONNX, fp32 OpenVINO IR and TorchScript of the tiny checkpoint, one manifest."""
    from fer_edge.exporters import export

    out = tmp_path_factory.mktemp("bench_artifacts")
    common = dict(out_dir=out, validate=False, data_progress=False)
    export(tiny_checkpoint, targets=["onnx"], precisions=["fp32", "int8"], calib_data=synthetic_csv,
           calib_size=56, **common)
    export(tiny_checkpoint, targets=["openvino", "torchscript"], precisions=["fp32"], **common)
    return out


@pytest.fixture(scope="session")
def bench_run(tmp_path_factory, artifact_dir, synthetic_csv):
    """One CLI bench over the artifact dir (int8 thresholds relaxed: 84 synthetic images are few)."""
    out = tmp_path_factory.mktemp("bench_report")
    result = invoke(["bench", artifact_dir, "--data", synthetic_csv, "--split", "PublicTest", *FAST,
                     "--min-agreement", "int8=0.5", "--max-accuracy-drop", "int8=0.5", "--out", out])
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else None
    return result, out, report


def _not_sample(warnings: list[str]) -> list[str]:
    """The warnings other than the one every bench of the synthetic data gets (84 images: a coarse parity gate)."""
    return [w for w in warnings if not w.startswith("the parity gate runs on ")]


def _bench(artifacts, synthetic_csv, **kw):
    from fer_edge.benchmarks.bench import run_bench

    return run_bench(artifacts, data=synthetic_csv, split="PublicTest", **{**FAST_KW, **kw})


# --- the main run -------------------------------------------------------------------------
def test_every_linux_runtime_runs_with_all_fields(bench_run):
    result, _, report = bench_run
    assert result.exit_code == 0, result.output
    rows = report["rows"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["runtime"] for r in ok} >= LINUX_RUNTIMES, [(r["runtime"], r["status"], r["reason"]) for r in rows]
    # every artifact x runtime x device has one row per batch size
    keys = {(r["artifact"], r["runtime"], r["device"]) for r in ok}
    for key in keys:
        assert sorted(r["batch"] for r in ok if (r["artifact"], r["runtime"], r["device"]) == key) == [1, 4]
    assert {(r["target"], r["precision"]) for r in ok} >= {
        ("checkpoint", "fp32"), ("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("torchscript", "fp32")}
    for r in ok:
        missing = [f for f in MEASURED_FIELDS if r[f] is None]
        assert not missing, (r["runtime"], r["precision"], missing)
        assert set(r["latency_ms"]) == set(LATENCY_KEYS)
        lat = r["latency_ms"]
        assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["iters"] == 3 and r["threads"] == 1 and r["reason"] == ""
        assert r["throughput_ips"] == pytest.approx(r["batch"] * 1000 / lat["mean"])
    # the reference row agrees with itself; accuracy/parity are shared by the batch sizes of a group
    ref = [r for r in ok if r["reference"]]
    assert ref and all(r["agreement"] == 1.0 and r["flips"] == 0 for r in ref)
    ov = [r for r in ok if r["runtime"] == "openvino"]
    assert ov[0]["accuracy"] == ov[1]["accuracy"] and ov[0]["kl"] == ov[1]["kl"]
    # OpenVINO: LATENCY hint at batch 1, THROUGHPUT above; the precision hint is recorded
    hints = {r["batch"]: r["runtime_info"]["performance_hint"] for r in ov}
    assert hints == {1: "LATENCY", 4: "THROUGHPUT"}
    assert all(r["runtime_info"].get("precision_hint") for r in ov)
    assert report["settings"]["thresholds"]["int8"]["min_agreement"] == 0.5
    assert report["settings"]["thresholds"]["fp32"]["min_agreement"] == 1.0  # the export gate's default


def test_terminal_output(bench_run):
    result, out, _ = bench_run
    output = " ".join(result.output.split())  # rich wraps lines where the numbers' widths put the breaks
    for text in ("fer-edge bench", "onnxruntime", "openvino", "torchscript", "compute limit", "Peak assumption",
                 "report.json"):
        assert text in output, text


def test_report_matches_schema(bench_run):
    _, _, report = bench_run
    assert validate(report, REPORT_SCHEMA) == []
    assert report["environment"]["fingerprint"] and report["environment"]["cpu"]["model"]
    assert report["reference"]["macs_per_image"] > 0
    cl = report["compute_limit"]
    if cl is not None:  # needs a known clock
        assert cl["peak_too_low"] or 0 < cl["fraction_of_peak"] <= 1
        assert cl["peak_gflops"] > 0 and "FLOP/cycle" in cl["assumption"]
    # the checker is not vacuous
    bad = json.loads(json.dumps(report))
    del bad["rows"][0]["latency_ms"]
    bad["rows"][1]["status"] = "great"
    bad["rows"][2]["batch"] = "1"
    errors = validate(bad, REPORT_SCHEMA)
    assert any("latency_ms" in e for e in errors) and any("great" in e for e in errors)
    assert any("rows[2].batch" in e for e in errors)
    assert validate({**report["rows"][0], "extra": 1}, ROW_SCHEMA)


def test_report_matches_schema_with_jsonschema(bench_run):
    """The published schema is a valid JSON Schema that a standard validator accepts the report with."""
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(REPORT_SCHEMA)
    jsonschema.validate(bench_run[2], REPORT_SCHEMA)


def test_all_four_report_files(bench_run):
    _, out, report = bench_run
    for name in ("report.json", "report.csv", "report.md", "latency_vs_accuracy.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "latency_vs_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(report["rows"]) and "latency_p50_ms" in rows[0]
    md = (out / "report.md").read_text()
    assert "| Target | Precision | Runtime |" in md and "openvino" in md
    assert not list(out.glob(".tmp-*"))  # atomic writes leave no debris


# --- statuses -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def perturbed_onnx(tmp_path_factory, artifact_dir) -> Path:
    """The fp32 ONNX with its last bias pushed towards one class: most top-1 answers flip."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(artifact_dir / "fer_nano_fp32.onnx"))
    bias = [t for t in model.graph.initializer if list(t.dims) == [7]][-1]
    arr = numpy_helper.to_array(bias).copy()
    arr[3] += 50.0
    bias.CopyFrom(numpy_helper.from_array(arr, bias.name))
    out = tmp_path_factory.mktemp("perturbed") / "perturbed_fp32.onnx"
    onnx.save(model, str(out))
    return out


def test_perturbed_artifact_fails_parity_and_exit_code(perturbed_onnx, tiny_checkpoint, synthetic_csv, tmp_path):
    args = ["bench", perturbed_onnx, "--reference", tiny_checkpoint, "--data", synthetic_csv, "--split", "PublicTest",
            "--runtimes", "onnxruntime", *FAST]
    result = invoke([*args, "--out", tmp_path / "gated"])
    assert result.exit_code == 1, result.output
    assert "parity gate" in result.output
    report = json.loads((tmp_path / "gated" / "report.json").read_text())  # written before the gate
    rows = report["rows"]
    assert rows and all(r["status"] == "parity-failed" for r in rows)
    assert all("agreement" in r["reason"] for r in rows) and all(r["flips"] > 0 for r in rows)
    assert all(r["latency_ms"] is not None for r in rows)  # still measured

    result = invoke([*args, "--out", tmp_path / "ungated", "--no-parity-gate"])
    assert result.exit_code == 0, result.output
    assert "failed parity" in result.output


def test_missing_runtime_is_skipped(monkeypatch, artifact_dir, synthetic_csv):
    from fer_edge.runtimes.openvino import OpenVINORuntime

    monkeypatch.setattr(OpenVINORuntime, "available",
                        classmethod(lambda cls: (False, "package openvino missing (pip install openvino)")))
    report = _bench([artifact_dir], synthetic_csv, runtimes=["openvino", "onnxruntime"], batches=(1,))
    ov = [r for r in report.rows if r["runtime"] == "openvino"]
    assert ov and all(r["status"] == "skipped" and "openvino missing" in r["reason"] for r in ov)
    assert all(r["latency_ms"] is None for r in ov)
    assert any(r["runtime"] == "onnxruntime" and r["status"] == "ok" for r in report.rows)


def test_absent_device_is_skipped(artifact_dir, synthetic_csv):
    from fer_edge.errors import OptionError

    # a device the runtime has on other machines (TensorRT) is absent here: skipped rows, the bench goes on
    report = _bench([artifact_dir], synthetic_csv, runtimes=["onnxruntime"],
                    devices=["cpu", "TensorrtExecutionProvider"], batches=(1,))
    absent = [r for r in report.rows if r["device"] == "TensorrtExecutionProvider"]
    assert absent and all(r["status"] == "skipped" and "device absent" in r["reason"] for r in absent)
    with pytest.raises(OptionError, match="unknown device 'NoSuchDevice'"):  # a name no runtime has: a typo
        _bench([artifact_dir], synthetic_csv, runtimes=["onnxruntime"], devices=["cpu", "NoSuchDevice"])
    # "cpu" selects onnxruntime's CPUExecutionProvider
    assert any(r["device"] == "CPUExecutionProvider" and r["status"] == "ok" for r in report.rows)


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_rows_skipped_off_macos(tmp_path, tiny_checkpoint, synthetic_csv):
    pkg = tmp_path / "tiny_fp16.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_text("{}")
    report = _bench([pkg], synthetic_csv, reference=tiny_checkpoint, runtimes=["coreml"])
    assert [r["batch"] for r in report.rows] == [1, 4]
    for r in report.rows:
        assert (r["target"], r["precision"], r["runtime"]) == ("coreml", "fp16", "coreml")
        assert r["status"] == "skipped" and r["reason"] == "needs macOS"


def test_failing_row_does_not_stop_the_others(tmp_path, tiny_checkpoint, synthetic_csv):
    broken = tmp_path / "broken_fp32.onnx"
    broken.write_bytes(b"not an onnx model")
    report = _bench([broken], synthetic_csv, reference=tiny_checkpoint, runtimes=["onnxruntime", "pytorch"])
    by = {(r["runtime"], r["batch"]): r for r in report.rows}
    assert by[("onnxruntime", 1)]["status"] == "failed" and by[("onnxruntime", 1)]["reason"]
    assert by[("pytorch", 1)]["status"] == "ok" and by[("pytorch", 4)]["status"] == "ok"
    assert validate(report.to_dict(), REPORT_SCHEMA) == []


def test_tampered_manifest_file_is_refused(tmp_path, artifact_dir, synthetic_csv):
    for name in ("fer_nano_fp32.onnx", "fer_nano_fp32.bin"):  # an artifact, and OpenVINO's weights companion
        copy = tmp_path / name.replace(".", "_")
        shutil.copytree(artifact_dir, copy)
        with open(copy / name, "ab") as fh:
            fh.write(b"\0")
        result = invoke(["bench", copy, "--data", synthetic_csv, "--split", "PublicTest", *FAST,
                         "--out", tmp_path / "out"])
        assert result.exit_code == 1
        assert name in result.output and "SHA-256" in result.output, result.output
        assert not (tmp_path / "out" / "report.json").exists()


def test_artifact_files_resolve_reference_from_manifest(artifact_dir, tiny_checkpoint, synthetic_csv):
    from fer_edge.benchmarks.artifacts import collect_artifacts, resolve_reference

    arts = collect_artifacts([artifact_dir / "fer_nano_int8.onnx", artifact_dir / "fer_nano_fp32.xml"])
    assert [(a.target, a.precision) for a in arts] == [("onnx", "int8"), ("openvino", "fp32")]
    assert all(a.sha256 and a.manifest is not None for a in arts)  # listed in the manifest: verified
    ref, notes = resolve_reference(arts)
    assert ref.resolve() == Path(tiny_checkpoint).resolve() and notes == []


# --- timing method -------------------------------------------------------------------------
def test_rows_are_timed_interleaved(monkeypatch, tiny_checkpoint, synthetic_csv):
    from fer_edge.benchmarks import bench

    turns = []
    real = bench.timed_turn

    def spy(rt, x, buf, quota, budget_ns):
        turns.append(len(x))
        return real(rt, x, buf, quota, budget_ns)

    monkeypatch.setattr(bench, "timed_turn", spy)
    report = _bench([tiny_checkpoint], synthetic_csv, batches=(1, 2, 3), iters=6, rounds=3)
    assert len(turns) == 9
    for r in range(3):  # each round gives every row one turn, the order rotated
        assert sorted(turns[3 * r:3 * r + 3]) == [1, 2, 3]
    assert turns[:3] != turns[3:6]
    assert all(r["iters"] == 6 and r["p50_spread_pct"] is not None for r in report.rows)


def test_seconds_budget(tiny_checkpoint, synthetic_csv):
    import torch

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    report = _bench([tiny_checkpoint], synthetic_csv, iters=None, seconds=0.2, batches=(1,), rounds=2,
                    threads=other)
    assert torch.get_num_threads() == before  # the caller's thread count is given back
    (row,) = report.rows
    assert row["status"] == "ok" and row["iters"] >= 2
    assert report.settings["seconds"] == 0.2 and report.settings["iters"] is None


def test_stats_helpers():
    from fer_edge.benchmarks.stats import compute_limit, latency_summary, p50_spread_pct, pareto_front

    s = latency_summary(np.arange(1, 101) * 1_000_000)  # 1..100 ms
    assert s["min"] == 1 and s["max"] == 100 and s["p50"] == pytest.approx(50.5) and s["mean"] == 50.5
    assert s["p99"] == pytest.approx(99.01) and s["p90"] == pytest.approx(90.1)
    assert s["std"] == pytest.approx((100 * 101 / 12) ** 0.5)  # the sample std of 1..100: n(n+1)/12 is its variance
    assert p50_spread_pct([[10, 10], [10, 10]]) == 0.0 and p50_spread_pct([[1]]) is None
    # rounds with medians 1 and 3 around an overall median of 2: each 50% off it
    assert p50_spread_pct([[1, 1], [3, 3]]) == pytest.approx(50.0)
    assert p50_spread_pct([[2, 2], [2, 2], [2, 3, 3]]) == pytest.approx(50.0)  # the worst round counts
    assert pareto_front([1.0, 2.0, 3.0, 0.5], [0.5, 0.7, 0.6, 0.4]) == [3, 0, 1]
    env = {"cpu": {"isa": "avx512", "clock_mhz": 2000.0, "clock_source": "test"}}
    cl = compute_limit(1_000_000, 1000.0, 2, env)  # 2 GFLOP/s against 2 x 64 x 2 GHz = 256 GFLOP/s
    assert cl["achieved_gflops"] == pytest.approx(2.0) and cl["peak_gflops"] == pytest.approx(256.0)
    assert cl["fraction_of_peak"] == pytest.approx(2 / 256)
    assert compute_limit(1, 1.0, 1, {"cpu": {"isa": "unknown", "clock_mhz": 1.0}}) is None


# --- devices and merge --------------------------------------------------------------------
def test_devices_command():
    result = invoke(["devices", "--json"])
    assert result.exit_code == 0, result.output
    env = json.loads(result.output)
    for key in ("hostname", "os", "cpu", "memory_gb", "libraries", "runtimes", "fingerprint"):
        assert key in env
    rts = env["runtimes"]
    assert {d["name"] for d in rts["pytorch"]["devices"]} >= {"cpu"}
    import torch

    n = torch.get_num_threads()
    cpu_detail = next(d for d in rts["pytorch"]["devices"] if d["name"] == "cpu")["detail"]
    assert cpu_detail.startswith(f"{n} thread, " if n == 1 else f"{n} threads, "), cpu_detail
    ort_cpu = next(d for d in rts["onnxruntime"]["devices"] if d["name"] == "CPUExecutionProvider")
    from fer_edge.cpu import int8_can_saturate_here

    # which INT8 kernels ONNX Runtime sessions get here (exact_int8="auto")
    assert ort_cpu["detail"].startswith("INT8: exact U8U8" if int8_can_saturate_here() else "INT8: fast U8S8")
    assert all(d["full_name"] for d in rts["openvino"]["devices"])
    if sys.platform != "darwin":
        assert rts["coreml"] == {"available": False, "reason": "needs macOS", "devices": []}
    result = invoke(["devices"])
    assert result.exit_code == 0 and "onnxruntime" in result.output and "openvino" in result.output


def test_merge_two_reports(bench_run, tmp_path):
    _, out, report = bench_run
    other = json.loads(json.dumps(report))
    other["environment"]["hostname"] = "other-host"
    other["environment"]["cpu"]["model"] = "Other CPU"
    (tmp_path / "b.json").write_text(json.dumps(other))
    result = invoke(["report", "merge", out / "report.json", tmp_path / "b.json", "--out", tmp_path / "merged"])
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "merged" / "merged.json").read_text())
    assert [m["machine"] for m in merged["machines"]][1] == "other-host (Other CPU)"
    assert len(merged["rows"]) == 2 * len(report["rows"])
    md = (tmp_path / "merged" / "merged.md").read_text()
    assert "M1 p50 ms" in md and "M2 p50 ms" in md and "other-host (Other CPU)" in md
    with open(tmp_path / "merged" / "merged.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(merged["rows"])
    assert (tmp_path / "merged" / "merged_latency_vs_accuracy.png").stat().st_size > 0
    # a merge into a bench report's folder keeps that report's plot (they shared the name latency_vs_accuracy.png)
    own = tmp_path / "own"
    shutil.copytree(out, own)
    before = (own / "latency_vs_accuracy.png").read_bytes()
    result = invoke(["report", "merge", own / "report.json", tmp_path / "b.json", "--out", own])
    assert result.exit_code == 0, result.output
    assert (own / "latency_vs_accuracy.png").read_bytes() == before
    assert (own / "merged_latency_vs_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    single = invoke(["report", "merge", out / "report.json", "--out", tmp_path / "single"])
    assert single.exit_code == 0 and f"1 report, {len(report['rows'])} rows" in single.output, single.output

    (tmp_path / "bad.json").write_text(json.dumps({"rows": []}))
    result = invoke(["report", "merge", out / "report.json", tmp_path / "bad.json", "--out", tmp_path / "m2"])
    assert result.exit_code == 1 and "not a fer-edge bench report" in result.output


def test_no_artifacts_and_no_shipped_model_is_a_clear_error(synthetic_csv, tmp_path, monkeypatch):
    import fer_edge.weights

    monkeypatch.setattr(fer_edge.weights, "PRETRAINED", {})  # as if no weight shipped
    result = invoke(["bench", "--data", synthetic_csv, *FAST, "--out", tmp_path])
    assert result.exit_code == 1 and "no artifacts given" in result.output and "fer-edge export" in result.output


def test_default_artifacts_exported_once_into_the_cache(monkeypatch, tiny_checkpoint, synthetic_csv):
    """Without artifacts the shipped model is exported into the cache once, then reused."""
    import fer_edge.exporters
    import fer_edge.weights
    from fer_edge.benchmarks.bench import default_artifacts

    calls = []

    def fast_export(ckpt, out, **kw):  # the real exporter, one target only to stay fast
        calls.append(kw.get("calib_data"))
        return fer_edge.exporters.export(ckpt, targets=["onnx"], precisions=["fp32"], out_dir=out, validate=False,
                                         data_progress=False)

    monkeypatch.setattr(fer_edge.weights, "resolve_checkpoint", lambda spec: Path(tiny_checkpoint))
    monkeypatch.setattr(fer_edge.exporters, "export_artifacts", fast_export)
    notes: list[str] = []
    first = default_artifacts(notes, synthetic_csv)
    again = default_artifacts(notes, synthetic_csv)
    assert calls == [synthetic_csv]  # int8 would be calibrated on the bench data
    assert [a.path for a in first] == [a.path for a in again] and first[0].target == "onnx"
    assert "exported the shipped model" in notes[0] and "cached" in notes[1]


def test_a_shipped_reference_weights_own_gate_applies(monkeypatch, artifact_dir, tiny_checkpoint, synthetic_csv):
    """As in fer-edge export: the reference weight's own gate over the defaults, overrides over both."""
    import fer_edge.weights as weights
    from fer_edge.weights import WeightMeta

    meta = WeightMeta(name="tiny", architecture="simple_cnn", file=str(tiny_checkpoint), params=1, macs=1,
                      mean=0.5, std=0.25, parity_gate={"fp32": {"max_abs_diff": 0.0}},
                      parity_gate_reason="a test gate no artifact meets")
    monkeypatch.setattr(weights, "PRETRAINED", {"tiny": meta})
    (ts,) = artifact_dir.glob("*.ts")
    report = _bench([ts], synthetic_csv, runtimes=["torchscript"], batches=(4,))
    (row,) = [r for r in report.rows if r["runtime"] == "torchscript"]
    assert row["status"] == "parity-failed" and "max |logit diff|" in row["reason"]
    assert report.settings["thresholds"]["fp32"]["max_abs_diff"] == 0.0
    assert report.settings["thresholds_source"]["weight"]["name"] == "tiny"
    report = _bench([ts], synthetic_csv, runtimes=["torchscript"], batches=(4,),
                    threshold_overrides={"max_abs_diff": {"fp32": 1.0}})
    (row,) = [r for r in report.rows if r["runtime"] == "torchscript"]
    assert row["status"] == "ok", row["reason"]
    assert report.settings["thresholds_source"]["overrides"] == {"max_abs_diff": {"fp32": 1.0}}


def test_a_weights_gate_is_cut_to_the_precisions_judged():
    from fer_edge.cli.common import gate_judged

    src = {"defaults": True, "weight": {"name": "nano", "gate": {"int8": {"min_agreement": 0.965}}}}
    assert gate_judged(src, {"int8", "fp32"}) == src
    assert gate_judged(src, {"fp32"}) is None and gate_judged(src, set()) is None
    assert gate_judged({"defaults": True, "weight": None}, set()) == {"defaults": True, "weight": None}


def test_weight_gate_line_names_the_weight_its_limits_and_where_the_reason_is():
    from fer_edge.cli.common import weight_gate_line

    assert weight_gate_line(None, "r.json") is None
    assert weight_gate_line({"defaults": True, "weight": None}, "r.json") is None
    line = weight_gate_line({"weight": {"name": "nano", "gate": {"int8": {"min_agreement": 0.97,
                                                                           "max_accuracy_drop": 0.005}},
                                        "reason": "measured"}}, "out/report.json")
    assert line == ("parity gate: nano's own (int8 min_agreement 0.97, max_accuracy_drop 0.005) over the defaults; "
                    "why: thresholds_source in out/report.json")


def test_ort_int8_benchmark_compares_exact_and_fast_sessions(artifact_dir, synthetic_csv, tmp_path):
    """``python -m fer_edge.benchmarks.ort_int8``: both sessions timed side by side, their answers compared."""
    from fer_edge.benchmarks.ort_int8 import cli
    from fer_edge.cpu import int8_can_saturate_here

    res = CliRunner().invoke(cli, [str(artifact_dir), "--data", str(synthetic_csv), "--split", "PublicTest",
                                   "--batch", "1,4", "--rounds", "2", "--seconds", "0.05"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    rows = [line for line in res.output.splitlines() if "_int8.onnx" in line]
    import re

    assert len(rows) == 2 and all(re.search(r" \d+\.\d\dx ", r) and "%" in r for r in rows), rows
    # the fast kernels agree with the exact ones wherever they cannot saturate (this CPU, if it has VNNI)
    if not int8_can_saturate_here():
        assert all("100.00%" in r for r in rows)
    assert "answers compared on" in out and "PublicTest images" in out
    assert f"session.x64quantprecision={'1' if int8_can_saturate_here() else '0'} here" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(cli, [str(empty)])
    assert res.exit_code == 1 and "no *_int8.onnx" in " ".join(res.output.split())
    res = CliRunner().invoke(cli, [str(next(artifact_dir.glob("*_fp32.onnx")))])
    assert res.exit_code == 1 and "says precision fp32" in " ".join(res.output.split())


# --- exit status, several models, merge keys, the default export's cache, unverified files, --out -----------
def _junk_artifacts(tmp_path: Path, artifact_dir: Path) -> list[Path]:
    """A text file named .onnx, a truncated real .onnx and a text file named .xml: none can be loaded."""
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model\n")
    real = (artifact_dir / "fer_nano_fp32.onnx").read_bytes()
    truncated = tmp_path / "truncated_fp32.onnx"
    truncated.write_bytes(real[: len(real) // 2])
    xml = tmp_path / "junk.xml"
    xml.write_text("not an IR\n")
    return [junk, truncated, xml]


def test_a_failed_row_fails_the_run(tmp_path, artifact_dir, tiny_checkpoint, synthetic_csv):
    files = _junk_artifacts(tmp_path, artifact_dir)
    result = invoke(["bench", *files, "--reference", tiny_checkpoint, "--data", synthetic_csv, "--split", "PublicTest",
                     *FAST, "--batch", "1", "--out", tmp_path / "out"])
    assert result.exit_code == 1, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())  # the report is still written
    by_name = {Path(r["artifact"]).name: r for r in report["rows"]}
    assert by_name["junk.onnx"]["status"] == "failed" and by_name["truncated_fp32.onnx"]["status"] == "failed"
    assert by_name["junk.xml"]["status"] == "failed"
    assert by_name[Path(tiny_checkpoint).name]["status"] == "ok"
    out = " ".join(result.output.split())
    error = out.split("error:", 1)[1]
    assert error.startswith(" 3 row(s) failed") and all(f.name in error for f in files), out
    # --no-parity-gate does not accept a row that could not even be loaded
    result = invoke(["bench", files[0], "--reference", tiny_checkpoint, "--data", synthetic_csv, "--split",
                     "PublicTest", *FAST, "--batch", "1", "--no-parity-gate", "--out", tmp_path / "out2"])
    assert result.exit_code == 1 and "1 row(s) failed" in " ".join(result.output.split()), result.output


def test_skipped_rows_do_not_fail_the_run(monkeypatch, tmp_path, artifact_dir, synthetic_csv):
    from fer_edge.runtimes.openvino import OpenVINORuntime

    monkeypatch.setattr(OpenVINORuntime, "available",
                        classmethod(lambda cls: (False, "package openvino missing (pip install openvino)")))
    result = invoke(["bench", artifact_dir / "fer_nano_fp32.xml", "--data", synthetic_csv, "--split", "PublicTest",
                     "--runtimes", "openvino,pytorch", *FAST, "--batch", "1", "--out", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["rows"]
    assert {r["runtime"]: r["status"] for r in rows} == {"openvino": "skipped", "pytorch": "ok"}


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory, tiny_checkpoint) -> Path:
    """Another fer_nano checkpoint: the tiny one with its classifier negated (so its answers differ)."""
    import torch

    from fer_edge.checkpoint import save_checkpoint

    payload = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    sd = payload["state_dict"]
    last = [k for k, v in sd.items() if v.ndim == 2 and v.shape[0] == 7][-1]
    sd[last] = -sd[last]
    bias = last.rsplit(".", 1)[0] + ".bias"
    if bias in sd:
        sd[bias] = -sd[bias]
    return save_checkpoint(tmp_path_factory.mktemp("other_ckpt") / "other.pt", payload)


@pytest.fixture(scope="session")
def other_export(tmp_path_factory, other_checkpoint) -> Path:
    from fer_edge.exporters import export

    out = tmp_path_factory.mktemp("other_export")
    export(other_checkpoint, targets=["onnx"], precisions=["fp32"], out_dir=out, validate=False, data_progress=False)
    return out


def test_artifacts_of_two_checkpoints_each_against_its_own(tmp_path, artifact_dir, other_export, tiny_checkpoint,
                                                          other_checkpoint, synthetic_csv):
    from fer_edge.utils import sha256_path

    out = tmp_path / "out"
    result = invoke(["bench", artifact_dir / "fer_nano_fp32.onnx", other_export, "--data", synthetic_csv, "--split",
                     "PublicTest", "--runtimes", "onnxruntime,pytorch", *FAST, "--batch", "1", "--out", out])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert validate(report, REPORT_SCHEMA) == []
    tiny_sha, other_sha = sha256_path(tiny_checkpoint), sha256_path(other_checkpoint)
    assert [r["sha256"] for r in report["references"]] == [tiny_sha, other_sha]
    onnx = {r["source_sha256"]: r for r in report["rows"] if r["runtime"] == "onnxruntime"}
    refs = {r["source_sha256"]: r for r in report["rows"] if r["reference"]}
    assert set(onnx) == set(refs) == {tiny_sha, other_sha}
    for sha in (tiny_sha, other_sha):  # each compared with its own checkpoint: full agreement
        assert onnx[sha]["status"] == "ok" and onnx[sha]["agreement"] == 1.0, onnx[sha]
        assert onnx[sha]["accuracy"] == pytest.approx(refs[sha]["accuracy"])
    assert onnx[tiny_sha]["accuracy"] != onnx[other_sha]["accuracy"]  # really two models
    # rows name their model: two fer_nano checkpoints are told apart by their sha256
    labels = {f"fer_nano @{tiny_sha[:8]}", f"fer_nano @{other_sha[:8]}"}
    md = (out / "report.md").read_text()
    assert "| Model | Target |" in md and all(f"| {lab} | onnx |" in md for lab in labels), md
    with open(out / "report.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert {r["source_sha256"] for r in csv_rows if r["target"] == "onnx"} == {tiny_sha, other_sha}
    assert all(lab in " ".join(result.output.split()) for lab in labels)


def test_artifact_of_unknown_source_among_two_checkpoints_is_refused(tmp_path, artifact_dir, other_export):
    from fer_edge.benchmarks.artifacts import collect_artifacts, reference_groups, resolve_reference
    from fer_edge.errors import ArtifactError

    arts = collect_artifacts([artifact_dir / "fer_nano_fp32.onnx", other_export])
    with pytest.raises(ArtifactError, match="several checkpoints.*bench them separately.*--reference"):
        resolve_reference(arts)  # one reference only: refused, not silently the first
    import onnx

    model = onnx.load(str(artifact_dir / "fer_nano_fp32.onnx"))  # a loadable model whose metadata names no source
    del model.metadata_props[:]
    nosource = tmp_path / "nosource.onnx"
    onnx.save(model, str(nosource))
    with pytest.raises(ArtifactError, match=r"nosource\.onnx came from.*2 different checkpoints.*--reference"):
        reference_groups(collect_artifacts([artifact_dir / "fer_nano_fp32.onnx", other_export, nosource]))


def _p50_table(md: str) -> list[list[str]]:
    """The cells of the merged p50 table's lines (Model, Target, Precision, Runtime, Device, Batch, M1.., Top-1)."""
    section = md.split("p50 latency per call (ms) by machine:")[1].split("All rows:")[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")][1:]  # without the header
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]


def test_merge_keeps_models_apart_and_drops_nothing(bench_run, tmp_path):
    _, out, report = bench_run
    a = json.loads(json.dumps(report))
    b = json.loads(json.dumps(report))  # "fer_small" benched on another machine
    b["environment"]["hostname"] = "other-host"
    b["reference"].update(model="fer_small", sha256="ab" * 32)
    for r in b["rows"]:
        r.update(model="fer_small", source_sha256="ab" * 32)
    n = len(a["rows"])

    def merge(name, *reports):
        paths = []
        for i, rep in enumerate(reports):
            (tmp_path / f"{name}{i}.json").write_text(json.dumps(rep))
            paths.append(tmp_path / f"{name}{i}.json")
        result = invoke(["report", "merge", *paths, "--out", tmp_path / name])
        assert result.exit_code == 0, result.output
        return _p50_table((tmp_path / name / "merged.md").read_text())

    table = merge("two_models", a, b)
    assert len(table) == 2 * n  # nano's rows and small's rows, never one row of "two machines"
    assert sum(cells[0] == "fer_small" for cells in table) == n
    assert all(cells[6:-1].count("-") == 1 for cells in table)  # each measured on one machine only
    # one report holding two models' rows (and a duplicate): every row has its line
    both = json.loads(json.dumps(a))
    both["rows"] = a["rows"] + b["rows"] + [a["rows"][-1]]
    assert len(merge("one_report", both)) == 2 * n + 1
    # a report written before rows named their source: its rows count as its reference's model
    old = json.loads(json.dumps(a))
    old["environment"]["hostname"] = "old-host"
    for r in old["rows"]:
        r.pop("source_sha256", None)
        r.pop("model", None)
    table = merge("old", a, old)
    assert len(table) == n and all("-" not in cells[6:-1] for cells in table)


def test_default_export_cache_is_keyed_by_the_calibration_data(monkeypatch, tmp_path, tiny_checkpoint,
                                                               synthetic_csv):
    """Another --data gets its own INT8 calibration; the notes say which data the cached one used."""
    import fer_edge.exporters
    import fer_edge.weights
    from fer_edge.benchmarks.bench import default_artifacts
    from fer_edge.data.synthetic import make_synthetic, write_csv
    from fer_edge.errors import ArtifactError

    monkeypatch.setenv("FER_EDGE_CACHE_DIR", str(tmp_path / "cache"))
    other = write_csv(tmp_path / "other.csv.gz", {"Training": make_synthetic(8, seed=5),
                                                  "PublicTest": make_synthetic(2, seed=6)})
    calls = []

    def int8_export(ckpt, out, **kw):
        calls.append(kw.get("calib_data"))
        return fer_edge.exporters.export(ckpt, targets=["onnx"], precisions=["int8"], calib_data=kw["calib_data"],
                                         calib_size=28, out_dir=out, validate=False, data_progress=False)

    monkeypatch.setattr(fer_edge.weights, "resolve_checkpoint", lambda spec: Path(tiny_checkpoint))
    monkeypatch.setattr(fer_edge.exporters, "export_artifacts", int8_export)
    notes: list[str] = []
    first = default_artifacts(notes, synthetic_csv)
    second = default_artifacts(notes, other)
    again = default_artifacts(notes, synthetic_csv)
    assert calls == [synthetic_csv, other]  # not the first export's calibration for the other data
    assert first[0].path.parent != second[0].path.parent and [a.path for a in again] == [a.path for a in first]
    assert str(Path(other).resolve()) in notes[1] and "INT8 calibrated on" in notes[1]
    assert "cached" in notes[2] and str(Path(synthetic_csv).resolve()) in notes[2]
    # a cached export that did not finish is exported again, not reused
    manifest = first[0].path.parent / "manifest.json"
    m = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**m, "complete": False}))
    default_artifacts(notes, synthetic_csv)
    assert calls == [synthetic_csv, other, synthetic_csv] and "exported the shipped model" in notes[-1]
    # a cached export whose recorded calibration is not this data's is refused, not reused
    m = json.loads(manifest.read_text())
    m["calibration"]["data_sha256"] = "0" * 64
    manifest.write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="was calibrated on"):
        default_artifacts(notes, synthetic_csv)


def test_files_without_a_manifest_are_benched_with_a_warning(tmp_path, artifact_dir, tiny_checkpoint,
                                                             synthetic_csv):
    interrupted = tmp_path / "interrupted"  # an export killed before it wrote manifest.json
    interrupted.mkdir()
    for name in ("fer_nano_fp32.onnx", "fer_nano_fp32.xml", "fer_nano_fp32.bin"):
        shutil.copy(artifact_dir / name, interrupted / name)
    result = invoke(["bench", interrupted, "--reference", tiny_checkpoint, "--data", synthetic_csv, "--split",
                     "PublicTest", "--runtimes", "onnxruntime,openvino", *FAST, "--batch", "1",
                     "--out", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "warning: 2 artifact file(s) have no manifest.json" in out and "neither verified (SHA-256)" in out
    assert "fer_nano_fp32.onnx" in out and "fer_nano_fp32.xml" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {r["status"] for r in report["rows"]} == {"ok"} and len(_not_sample(report["warnings"])) == 1
    assert "Warning: 2 artifact file(s)" in (tmp_path / "out" / "report.md").read_text()
    # files a manifest lists get no such warning
    report = _bench([artifact_dir / "fer_nano_fp32.onnx"], synthetic_csv, runtimes=["onnxruntime"], batches=(1,))
    assert _not_sample(report.warnings) == []
    # ...unless the manifest says its export did not finish
    unfinished = tmp_path / "unfinished"
    shutil.copytree(artifact_dir, unfinished)
    m = json.loads((unfinished / "manifest.json").read_text())
    run = next(e["run"] for e in m["artifacts"] if e["file"] == "fer_nano_fp32.onnx")
    if run == m["run_id"]:  # the run that wrote it: the latest, or an earlier one into the same folder
        m["complete"] = False
    else:
        next(r for r in m["earlier_runs"] if r["run_id"] == run)["complete"] = False
    (unfinished / "manifest.json").write_text(json.dumps(m))
    report = _bench([unfinished / "fer_nano_fp32.onnx"], synthetic_csv, runtimes=["onnxruntime"], batches=(1,))
    assert len(_not_sample(report.warnings)) == 1 and "did not finish" in _not_sample(report.warnings)[0]


def test_an_artifact_that_failed_its_export_gate_is_benched_with_a_warning(tmp_path, artifact_dir, synthetic_csv):
    """bench ran an artifact its export had marked 'failed' and said nothing (report.json neither)."""
    folder = tmp_path / "gated"
    shutil.copytree(artifact_dir, folder)
    m = json.loads((folder / "manifest.json").read_text())
    entry = next(e for e in m["artifacts"] if e["file"] == "fer_nano_fp32.onnx")
    before = (entry.get("validation") or {}).get("status")
    entry["validation"] = {**(entry.get("validation") or {}), "status": "failed",
                           "reason": "accuracy 60.00% is 1.17 points below the reference's"}
    (folder / "manifest.json").write_text(json.dumps(m))
    report = _bench([folder / "fer_nano_fp32.onnx"], synthetic_csv, runtimes=["onnxruntime"], batches=(1,))
    gate = [w for w in report.warnings if "failed the parity gate of the export" in w]
    assert len(gate) == 1 and "fer_nano_fp32.onnx (accuracy 60.00% is 1.17 points below" in gate[0], report.warnings
    row = next(r for r in report.to_dict()["rows"] if r["target"] == "onnx")
    assert row["export_validation"] == "failed"
    # the unchanged folder: its status as exported, and no such warning
    report = _bench([artifact_dir / "fer_nano_fp32.onnx"], synthetic_csv, runtimes=["onnxruntime"], batches=(1,))
    assert not [w for w in report.warnings if "failed the parity gate of the export" in w]
    assert next(r for r in report.to_dict()["rows"] if r["target"] == "onnx")["export_validation"] == before


def test_out_that_is_a_file_is_refused_before_any_work(monkeypatch, tmp_path, tiny_checkpoint, synthetic_csv):
    from fer_edge.benchmarks import bench

    started = []
    monkeypatch.setattr(bench, "collect_artifacts", lambda *a, **k: started.append(1))
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "sub"):
        result = invoke(["bench", tiny_checkpoint, "--data", synthetic_csv, *FAST, "--out", out])
        text = " ".join(result.output.split())
        assert result.exit_code == 1 and "error:" in text and "not a directory" in text, result.output
        assert not isinstance(result.exception, FileExistsError) and "Traceback" not in result.output
    assert started == [] and afile.read_text() == "x"
    result = invoke(["report", "merge", tmp_path / "r.json", "--out", afile])
    assert result.exit_code == 1 and "not a directory" in " ".join(result.output.split()), result.output


def test_each_reference_weights_own_gate_gets_its_line(monkeypatch, tmp_path, artifact_dir, other_export,
                                                        tiny_checkpoint, other_checkpoint, synthetic_csv):
    import fer_edge.weights as weights
    from fer_edge.weights import WeightMeta

    metas = {name: WeightMeta(name=name, architecture="fer_nano", file=str(ck), params=1, macs=1, mean=0.5,
                              std=0.25, parity_gate={"fp32": {"max_abs_diff": 1.0}}, parity_gate_reason="a test")
             for name, ck in (("tiny", tiny_checkpoint), ("other", other_checkpoint))}
    monkeypatch.setattr(weights, "PRETRAINED", metas)
    out = tmp_path / "out"
    result = invoke(["bench", artifact_dir / "fer_nano_fp32.onnx", other_export, "--data", synthetic_csv, "--split",
                     "PublicTest", "--runtimes", "onnxruntime", *FAST, "--batch", "1", "--out", out])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "parity gate: tiny's own (fp32 max_abs_diff 1.0)" in text
    assert "parity gate: other's own (fp32 max_abs_diff 1.0)" in text


def test_a_weights_gate_line_counts_only_its_own_checkpoints_rows(monkeypatch, tmp_path, artifact_dir, other_export,
                                                                   tiny_checkpoint, other_checkpoint, synthetic_csv):
    """tiny's int8 artifact beside other's fp32 one: other's int8 gate judged nothing, so it gets no line."""
    import fer_edge.weights as weights
    from fer_edge.weights import WeightMeta

    lenient = {"int8": {"min_agreement": 0.0, "max_accuracy_drop": 1.0}}
    metas = {name: WeightMeta(name=name, architecture="fer_nano", file=str(ck), params=1, macs=1, mean=0.5,
                              std=0.25, parity_gate=lenient, parity_gate_reason="a test")
             for name, ck in (("tiny", tiny_checkpoint), ("other", other_checkpoint))}
    monkeypatch.setattr(weights, "PRETRAINED", metas)
    result = invoke(["bench", artifact_dir / "fer_nano_int8.onnx", other_export, "--data", synthetic_csv, "--split",
                     "PublicTest", "--runtimes", "onnxruntime", *FAST, "--batch", "1", "--out", tmp_path / "out"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "parity gate: tiny's own (int8 min_agreement 0.0" in text
    assert "parity gate: other's own" not in text


def test_bad_threshold_overrides_are_refused_before_the_default_export(tmp_path, synthetic_csv, monkeypatch):
    import fer_edge.benchmarks.bench as bench_mod

    def no_export(*a, **k):
        raise AssertionError("the default export ran before the thresholds were checked")

    monkeypatch.setattr(bench_mod, "default_artifacts", no_export)
    from fer_edge.errors import FerEdgeError

    with pytest.raises(FerEdgeError, match="int8.min_agreement: 1.5 is out of range"):
        bench_mod.run_bench(None, data=synthetic_csv, threshold_overrides={"min_agreement": {"int8": 1.5}},
                            seconds=0.1, out_dir=tmp_path / "b")


@pytest.mark.parametrize("module", ["artifacts", "bench", "environment", "report", "schema", "stats"])
def test_a_library_module_run_as_a_script_names_the_command_to_use(module, capsys):
    """`python -m fer_edge.benchmarks.bench --help` used to print nothing and exit 0."""
    import runpy
    import warnings

    from fer_edge.benchmarks import LIBRARY_USE, SCRIPTS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is already imported
        with pytest.raises(SystemExit) as e:
            runpy.run_module(f"fer_edge.benchmarks.{module}", run_name="__main__")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"use `{LIBRARY_USE[module]}`" in err and all(f"fer_edge.benchmarks.{s}" in err for s in SCRIPTS)


def test_the_benchmarks_package_lists_its_scripts_and_each_runs_as_one(capsys, monkeypatch):
    import importlib
    import pkgutil
    import runpy

    import fer_edge.benchmarks as pkg

    monkeypatch.setattr("sys.argv", ["fer_edge.benchmarks"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("fer_edge.benchmarks", run_name="__main__")
    assert e.value.code == 0
    out = capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["fer_edge.benchmarks", "--bogus"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("fer_edge.benchmarks", run_name="__main__")
    assert e.value.code == 2 and "takes no arguments (got --bogus)" in capsys.readouterr().err
    modules = {m.name for m in pkgutil.iter_modules(pkg.__path__)} - {"__main__"}
    assert set(pkg.SCRIPTS) | set(pkg.LIBRARY_USE) == modules  # every module is one or the other
    for name in pkg.SCRIPTS:
        assert f"python -m fer_edge.benchmarks.{name}" in out
        assert callable(getattr(importlib.import_module(f"fer_edge.benchmarks.{name}"), "main"))


# --- an unreadable artifact, the Pareto front, merged data, interrupts ----------------------------------------
def test_an_unreadable_artifact_is_named_with_its_read_error(tmp_path, artifact_dir, synthetic_csv):
    """A truncated .onnx with no manifest: its reader's error is named, not "no manifest 'source'"."""
    bad = tmp_path / "bad"
    bad.mkdir()
    trunc = bad / "trunc.onnx"
    trunc.write_bytes((artifact_dir / "fer_nano_fp32.onnx").read_bytes()[:10000])
    args = ["--data", synthetic_csv, "--split", "PublicTest", "--runtimes", "onnxruntime", *FAST, "--batch", "1"]
    # alone: nothing names a checkpoint to compare it with, and the error says why it could not be read
    result = invoke(["bench", trunc, *args, "--out", tmp_path / "alone"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert f"{trunc}: cannot read its metadata: onnxruntime cannot load it (InvalidProtobuf" in text, text
    assert "no manifest 'source'" not in text and not (tmp_path / "alone" / "report.json").exists()
    # among other artifacts (README: a truncated .onnx is a `failed` row): the others still run
    result = invoke(["bench", trunc, artifact_dir / "fer_nano_fp32.onnx", *args, "--out", tmp_path / "out"])
    assert result.exit_code == 1, result.output
    rows = {Path(r["artifact"]).name: r for r in json.loads((tmp_path / "out" / "report.json").read_text())["rows"]}
    assert rows["trunc.onnx"]["status"] == "failed" and "InvalidProtobuf" in rows["trunc.onnx"]["reason"]
    assert rows["trunc.onnx"]["source_sha256"] is None  # which checkpoint it came from is unknown
    assert rows["fer_nano_fp32.onnx"]["status"] == "ok"
    assert "1 row(s) failed" in " ".join(result.output.split())


def test_an_unreadable_artifact_among_two_checkpoints_is_a_failed_row_not_a_refusal(tmp_path, artifact_dir,
                                                                                    other_export):
    from fer_edge.benchmarks.artifacts import collect_artifacts, reference_groups

    trunc = tmp_path / "trunc.onnx"
    trunc.write_bytes((artifact_dir / "fer_nano_fp32.onnx").read_bytes()[:10000])
    groups, notes = reference_groups(collect_artifacts([artifact_dir / "fer_nano_fp32.onnx", other_export, trunc]))
    assert len(groups) == 2 and trunc in [a.path for a in groups[0].artifacts]
    assert any("trunc.onnx: cannot read its metadata:" in n and "InvalidProtobuf" in n for n in notes), notes


def _plot_row(target, precision, runtime, p50_ms, accuracy, status="ok", reference=False):
    lat = {k: p50_ms for k in LATENCY_KEYS}
    return {"target": target, "precision": precision, "runtime": runtime, "device": "cpu", "batch": 1,
            "status": status, "reason": "agreement 50% < 98.5%" if status == "parity-failed" else "",
            "latency_ms": lat, "accuracy": accuracy, "model": "fer_nano", "source_sha256": "ab" * 32,
            "reference": reference, "parity_failures": ["agreement"] if status == "parity-failed" else []}


def test_parity_failed_rows_are_never_on_the_pareto_front(monkeypatch, tmp_path):
    """A fast, 'accurate' artifact that failed the parity gate is drawn hollow, not put on the front."""
    import matplotlib.axes

    from fer_edge.benchmarks.report import plot_latency_vs_accuracy

    rows = [_plot_row("checkpoint", "fp32", "pytorch", 2.0, 0.50, reference=True),
            _plot_row("onnx", "fp32", "onnxruntime", 1.0, 0.49),
            _plot_row("onnx", "int8", "onnxruntime", 0.5, 0.60, status="parity-failed")]
    labels, legend_labels, hollow = [], [], []
    real_annotate, real_legend, real_scatter = (matplotlib.axes.Axes.annotate, matplotlib.axes.Axes.legend,
                                                matplotlib.axes.Axes.scatter)

    def annotate(self, text, *a, **k):
        labels.append(text)
        return real_annotate(self, text, *a, **k)

    def legend(self, *a, handles=(), **k):
        legend_labels.extend(h.get_label() for h in handles)
        return real_legend(self, *a, handles=handles, **k)

    def scatter(self, x, y, *a, **k):
        if k.get("facecolors") == "none" and k.get("s") != 160:  # 160: the front's circles
            hollow.append(x)
        return real_scatter(self, x, y, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", annotate)
    monkeypatch.setattr(matplotlib.axes.Axes, "legend", legend)
    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", scatter)
    plot_latency_vs_accuracy(rows, tmp_path / "plot.png", "test")
    assert sorted(labels) == ["checkpoint fp32 pytorch/cpu b1", "onnx fp32 onnxruntime/cpu b1"], labels
    assert hollow == [0.5]
    assert any("parity-failed" in h and "excluded from the Pareto front" in h for h in legend_labels), legend_labels
    # colour says runtime and precision: the int8 point off the front is not taken for the fp32 one
    assert {"onnxruntime fp32", "onnxruntime int8", "pytorch fp32"} <= set(legend_labels), legend_labels
    from fer_edge.benchmarks.stats import pareto_eligible  # the one rule: a gate verdict of "failed" excludes

    assert [pareto_eligible(r) for r in rows] == [True, True, False]
    assert not pareto_eligible({"status": "ok", "parity_failures": ["agreement"]})


def _merge_inputs(report, tmp_path):
    a = json.loads(json.dumps(report))
    a["settings"].update(split="train", n_images=10, split_size=280, data_sha256="11" * 32)
    b = json.loads(json.dumps(report))
    b["environment"]["hostname"] = "other-host"
    b["settings"].update(split="val", n_images=56, split_size=56, data_sha256="22" * 32)
    for r in b["rows"]:
        if r["accuracy"] is not None:
            r["accuracy"] = 0.25
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    return tmp_path / "a.json", tmp_path / "b.json"


def test_merge_shows_each_reports_data_and_warns_when_it_differs(bench_run, tmp_path, monkeypatch):
    import fer_edge.benchmarks.report as report_mod

    _, _, report = bench_run
    a, b = _merge_inputs(report, tmp_path)
    titles = []
    real_plot = report_mod.plot_latency_vs_accuracy

    def plot(rows, path, title, **kw):  # the plot says it too: its front would mix accuracies of other images
        titles.append(title)
        return real_plot(rows, path, title, **kw)

    monkeypatch.setattr(report_mod, "plot_latency_vs_accuracy", plot)
    result = CliRunner().invoke(app, ["report", "merge", str(a), str(b), "--out", str(tmp_path / "m")],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    md = (tmp_path / "m" / "merged.md").read_text()
    m1 = next(line for line in md.splitlines() if line.startswith("- M1 = "))
    m2 = next(line for line in md.splitlines() if line.startswith("- M2 = "))
    assert "10 images of `train`" in m1 and "sha256 111111111111" in m1, m1
    assert "56 images of `val`" in m2 and "sha256 222222222222" in m2, m2
    assert "Warning: the reports measured different data" in md and "not comparable" in md
    # each report's Top-1, not one of them for both
    header = next(line for line in md.splitlines() if "M1 p50 ms" in line)
    assert "M1 Top-1" in header and "M2 Top-1" in header
    assert "25.0%" in md.split("All rows:")[0]
    assert "warning: the reports measured different data" in " ".join(result.output.split())
    merged = json.loads((tmp_path / "m" / "merged.json").read_text())
    assert [m["data"]["split"] for m in merged["machines"]] == ["train", "val"] and len(merged["warnings"]) == 1
    assert titles == ["fer-edge bench: 2 reports of different data: their accuracies are not comparable"]
    # the same data: no warning, one Top-1 column
    b2 = json.loads(a.read_text())
    b2["environment"]["hostname"] = "third-host"
    (tmp_path / "c.json").write_text(json.dumps(b2))
    result = invoke(["report", "merge", a, tmp_path / "c.json", "--out", tmp_path / "same"])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "same" / "merged.md").read_text()
    assert "Warning" not in md and "M1 Top-1" not in md and "| Top-1 |" in md
    assert titles[-1] == "fer-edge bench: 2 reports"


def test_merge_refuses_a_report_holding_nan(bench_run, tmp_path):
    """QA: a report with "accuracy": NaN (not JSON; fer-edge writes null) was merged, and merged.md showed nan%."""
    _, out, _ = bench_run
    text = (out / "report.json").read_text()
    bad = tmp_path / "nan.json"
    bad.write_text(text.replace('"accuracy": ', '"accuracy": NaN, "was": ', 1))
    assert bad.read_text() != text
    result = CliRunner().invoke(app, ["report", "merge", str(out), str(bad), "--out", str(tmp_path / "m")],
                                env={"COLUMNS": "250"})
    assert result.exit_code == 1 and "not a readable JSON bench report (NaN is not JSON" in " ".join(
        result.output.split()), result.output
    assert not (tmp_path / "m").exists()


def test_merge_takes_a_report_given_twice_once(bench_run, tmp_path):
    _, out, report = bench_run
    copy = tmp_path / "copy.json"
    shutil.copy(out / "report.json", copy)
    reindented = tmp_path / "reindented.json"  # the same content in other bytes (QA: merged as a second machine)
    reindented.write_text(json.dumps(json.loads((out / "report.json").read_text()), indent=4) + "\n\n")
    result = CliRunner().invoke(app, ["report", "merge", str(out / "report.json"), str(out), str(copy),
                                      str(reindented), "--out", str(tmp_path / "m")], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    merged = json.loads((tmp_path / "m" / "merged.json").read_text())
    assert len(merged["machines"]) == 1 and len(merged["rows"]) == len(report["rows"])
    assert not any("#2" in m["machine"] for m in merged["machines"])
    text = " ".join(result.output.split())
    assert f"note: {out} is the same file as {out / 'report.json'} (M1): merged once" in text, text
    assert f"note: {copy} is identical to {out / 'report.json'} (M1): merged once" in text, text
    assert f"note: {reindented} is identical to {out / 'report.json'} (M1): merged once" in text, text
    assert "merged once" in (tmp_path / "m" / "merged.md").read_text()


def test_interrupted_bench_says_what_it_left(monkeypatch, tmp_path, tiny_checkpoint, synthetic_csv):
    """Ctrl-C: one stderr line saying what was (not) written, exit 130, earlier reports untouched."""
    from fer_edge.benchmarks import bench

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "timed_turn", interrupt)
    args = ["bench", tiny_checkpoint, "--data", synthetic_csv, "--split", "PublicTest", *FAST, "--batch", "1"]
    result = invoke([*args, "--out", tmp_path / "fresh"])
    assert result.exit_code == 130, result.output
    assert f"interrupted: no report was written ({tmp_path / 'fresh'}/ holds none)" in " ".join(result.output.split())
    old = tmp_path / "old"
    old.mkdir()
    (old / "report.json").write_text(json.dumps({"created_at": "2024-01-02T03:04:05+00:00"}))
    (old / "report.md").write_text("old")
    result = invoke([*args, "--out", old])
    assert result.exit_code == 130, result.output
    text = " ".join(result.output.split())
    assert "interrupted: no new report was written; the earlier report in" in text
    assert "created 2024-01-02T03:04:05+00:00) was left as it was" in text, text
    assert json.loads((old / "report.json").read_text()) == {"created_at": "2024-01-02T03:04:05+00:00"}
    assert (old / "report.md").read_text() == "old"


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_an_interrupt_after_the_report_is_written_says_so(how, monkeypatch, tmp_path, tiny_checkpoint, synthetic_csv):
    """QA: Ctrl-C while the summary was printed (the reports already written) exited 130 with no word, and
    SIGTERM there killed it (143)."""
    import signal

    import fer_edge.cli.bench as cli_bench

    def stop(*a, **k):
        if how == "sigterm":
            signal.raise_signal(signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_bench, "bench_table", stop)
    out = tmp_path / "out"
    result = invoke(["bench", tiny_checkpoint, "--data", synthetic_csv, "--split", "PublicTest", *FAST, "--batch", "1",
                     "--runtimes", "pytorch", "--out", out])
    assert result.exit_code == 130, result.output
    text = " ".join(result.output.split())
    assert f"interrupted: after the report was written: {out}/ holds this run's" in text, text
    assert "the summary was not printed" in text and (out / "report.json").is_file()


def test_sigterm_stops_a_bench_as_ctrl_c_does(monkeypatch, tiny_checkpoint, synthetic_csv):
    """``kill PID`` raises KeyboardInterrupt inside run_bench (its interrupt path), as in fer-edge export."""
    import os
    import signal

    from fer_edge.benchmarks import bench

    class Killed(Exception):
        pass

    def raise_killed(signum, frame):
        raise Killed  # what SIGTERM would do without run_bench's handler (instead of killing pytest)

    monkeypatch.setattr(bench, "timed_turn", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM))
    previous = signal.signal(signal.SIGTERM, raise_killed)
    try:
        with pytest.raises(KeyboardInterrupt):
            _bench([tiny_checkpoint], synthetic_csv, batches=(1,))
        assert signal.getsignal(signal.SIGTERM) is raise_killed  # put back afterwards
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- QA fixes ------------------------------------------------------------------------------
def test_compute_limit_uses_the_rows_own_models_macs(tmp_path, artifact_dir, tiny_checkpoint, synthetic_csv):
    """--reference of another architecture: the fastest row's MACs are its own model's, never the reference's."""
    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.models import count_macs
    from fer_edge.weights import resolve_checkpoint

    nano_macs = count_macs(load_checkpoint(tiny_checkpoint).build_model())
    small_macs = count_macs(load_checkpoint(resolve_checkpoint("small")).build_model())
    assert nano_macs != small_macs
    report = _bench([artifact_dir / "fer_nano_fp32.onnx"], synthetic_csv, reference="small",
                    runtimes=["onnxruntime"], batches=(1,), parity_gate=False)
    assert report.reference["macs_per_image"] == small_macs
    if report.compute_limit is None:
        pytest.skip("no compute-limit estimate on this CPU (unknown clock or SIMD level)")
    assert report.compute_limit["macs_per_image"] == nano_macs, report.compute_limit
    # a row whose checkpoint cannot be found (a copy without its manifest, of no shipped model): no estimate
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(artifact_dir / "fer_nano_fp32.onnx", loose / "fer_nano_fp32.onnx")
    report = _bench([loose / "fer_nano_fp32.onnx"], synthetic_csv, reference="small", runtimes=["onnxruntime"],
                    batches=(1,), parity_gate=False)
    assert report.compute_limit is None
    assert any(n.startswith("compute limit: not estimated") and "MACs of that checkpoint are unknown" in n
               for n in report.notes), report.notes


def test_a_folder_with_a_manifest_benches_unlisted_files_with_a_warning(tmp_path, artifact_dir, synthetic_csv):
    from fer_edge.benchmarks.artifacts import collect_artifacts

    folder = tmp_path / "extra"
    shutil.copytree(artifact_dir, folder)
    shutil.copy(artifact_dir / "fer_nano_fp32.onnx", folder / "copy_fp32.onnx")  # listed by no manifest
    arts = collect_artifacts([folder])
    extra = [a for a in arts if a.path.name == "copy_fp32.onnx"]
    assert len(extra) == 1 and extra[0].manifest is None
    assert all(a.manifest is not None for a in arts if a is not extra[0])  # the listed ones are still verified
    assert not any(a.path.suffix == ".bin" for a in arts)  # OpenVINO's .bin belongs to its listed .xml
    report = _bench([folder], synthetic_csv, runtimes=["onnxruntime"], batches=(1,))
    assert {r["artifact"] for r in report.rows} >= {str(folder / "copy_fp32.onnx")}
    assert any(w.startswith("1 artifact file(s) have no manifest.json listing them") and "copy_fp32.onnx" in w
               for w in report.warnings), report.warnings


def test_a_file_beside_an_unreadable_manifest_is_refused(tmp_path, artifact_dir, synthetic_csv):
    from fer_edge.benchmarks.artifacts import collect_artifacts
    from fer_edge.errors import ArtifactError

    folder = tmp_path / "cman"
    folder.mkdir()
    shutil.copy(artifact_dir / "fer_nano_fp32.onnx", folder / "fer_nano_fp32.onnx")
    (folder / "manifest.json").write_text('{"broken')
    for spec in (folder, folder / "fer_nano_fp32.onnx"):  # the folder and the file alone: the same error
        with pytest.raises(ArtifactError, match="not a readable manifest"):
            collect_artifacts([spec])
    result = invoke(["bench", folder / "fer_nano_fp32.onnx", "--data", synthetic_csv, *FAST,
                     "--out", tmp_path / "out"])
    assert result.exit_code == 1 and "not a readable manifest" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_accuracy_pass_never_pads_beyond_its_images():
    from fer_edge.benchmarks.bench import run_in_chunks

    shapes = []

    def run(x):
        shapes.append(x.shape[0])
        return np.zeros((len(x), 7), np.float32)

    x = np.zeros((8, 1, 48, 48), np.float32)
    assert run_in_chunks(run, x, 100_000).shape == (8, 7) and shapes == [8]
    shapes.clear()
    assert run_in_chunks(run, x, 3).shape == (8, 7) and shapes == [3, 3, 3]  # one shape: the last chunk padded


def test_a_batch_that_cannot_fit_in_memory_is_refused_before_any_work(monkeypatch, tmp_path, tiny_checkpoint,
                                                                      synthetic_csv):
    from fer_edge.benchmarks import bench

    monkeypatch.setattr(bench, "available_memory_bytes", lambda: 64 * 2**20)  # 64 MiB available
    monkeypatch.setattr(bench, "load_inputs", lambda *a, **k: pytest.fail("data loaded before the check"))
    result = CliRunner().invoke(app, ["bench", str(tiny_checkpoint), "--data", str(synthetic_csv), *FAST,
                                      "--batch", "1,100000", "--out", str(tmp_path / "out")], env={"COLUMNS": "250"})
    out = " ".join(result.output.split())
    assert result.exit_code == 1, result.output
    assert "--batch 100000 cannot fit in memory" in out and "64 MiB is available" in out, out
    assert "KiB per image" in out and "Traceback" not in out
    # a batch that fits runs
    monkeypatch.undo()
    from fer_edge.checkpoint import load_checkpoint

    per_image = bench.bytes_per_image(load_checkpoint(tiny_checkpoint).build_model())
    assert per_image > 48 * 48 * 4
    bench.check_batch_memory(4, per_image, "fer_nano", available=per_image * 4)
    with pytest.raises(bench.FerEdgeError, match="--batch 5 cannot fit"):
        bench.check_batch_memory(5, per_image, "fer_nano", available=per_image * 4)


def test_a_parity_gate_on_fewer_images_than_the_export_gate_says_so(perturbed_onnx, tiny_checkpoint,
                                                                    synthetic_csv, tmp_path):
    from fer_edge.exporters.calibration import MIN_VAL_SIZE

    result = CliRunner().invoke(app, [str(a) for a in [
        "bench", perturbed_onnx, "--reference", tiny_checkpoint, "--data", synthetic_csv, "--split", "PublicTest",
        "--runtimes", "onnxruntime", *FAST, "--batch", "1", "--n-images", "40", "--out", tmp_path / "o"]],
        env={"COLUMNS": "250"})
    out = " ".join(result.output.split())
    assert result.exit_code == 1, result.output  # never passed silently
    warning = (f"warning: the parity gate runs on 40 images, fewer than the {MIN_VAL_SIZE} the export gate "
               f"requires")
    assert warning in out, out
    assert out.index(warning) < out.index("fer-edge bench:")  # before the work, not after the table
    assert "note: the parity gate runs on 40 images" in out.split("failed the parity gate")[1]
    # the synthetic split has 84 images: the advice is the whole split, not --n-images 512 it cannot give
    assert "leave --n-images out to use all 84 images of the split" in out and "--no-parity-gate" in out
    from fer_edge.benchmarks.bench import small_sample_text

    assert ("leave --n-images out to gate on all 3589 images of the split, as export does (at 512, the least it "
            "takes, a 0.5-point accuracy-drop limit is still only 2.6 images)") in small_sample_text(100, 512, 3589)
    assert "the split holds only 84 images: a larger data set" in small_sample_text(84, MIN_VAL_SIZE, 84)
    # a checkpoint compared with itself cannot fail the gate: no warning
    report = _bench([tiny_checkpoint], synthetic_csv, batches=(1,))
    assert not any("parity gate runs on" in w for w in report.warnings), report.warnings
    # without the gate, nothing to warn about
    report = _bench([perturbed_onnx], synthetic_csv, reference=tiny_checkpoint, runtimes=["onnxruntime"],
                    batches=(1,), parity_gate=False)
    assert not any("parity gate runs on" in w for w in report.warnings)


def test_more_threads_than_usable_cores_is_warned_about(monkeypatch, tiny_checkpoint, synthetic_csv):
    import fer_edge.benchmarks.environment as environment

    monkeypatch.setattr(environment, "usable_cores", lambda: 1)
    seen = []
    report = _bench([tiny_checkpoint], synthetic_csv, threads=2, batches=(1,), on_warning=seen.append)
    w = [x for x in report.warnings if x.startswith("--threads 2 is more than the 1 CPU core(s)")]
    assert len(w) == 1 and w[0] in seen, report.warnings
    assert report.rows and all(r["status"] == "ok" for r in report.rows)  # a warning, not a refusal
    report = _bench([tiny_checkpoint], synthetic_csv, threads=1, batches=(1,))
    assert not any(x.startswith("--threads") for x in report.warnings)


def test_merge_warns_about_different_settings_and_shows_them(bench_run, tmp_path):
    _, _, report = bench_run
    a = json.loads(json.dumps(report))
    b = json.loads(json.dumps(report))
    b["environment"]["hostname"] = "other-host"
    b["settings"].update(threads=4, batches=[1, 32])
    b["fer_edge_version"] = "0.0.1-other"
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    result = CliRunner().invoke(app, ["report", "merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                      "--out", str(tmp_path / "m")], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "warning: the reports were taken with different settings" in out, out
    assert "threads: M1 1, M2 4" in out and "batches: M1 1,4, M2 1,32" in out
    assert f"fer-edge version: M1 {report['fer_edge_version']}, M2 0.0.1-other" in out
    assert "warmup" not in out.split("different settings")[1].split(")")[0]  # only what differs
    md = (tmp_path / "m" / "merged.md").read_text()
    m1 = next(line for line in md.splitlines() if line.startswith("- M1 = "))
    m2 = next(line for line in md.splitlines() if line.startswith("- M2 = "))
    assert f"fer-edge {report['fer_edge_version']}; threads 1, batches 1,4, 3 iters per row in 2 rounds" in m1, m1
    assert "fer-edge 0.0.1-other; threads 4, batches 1,32" in m2, m2
    assert "Warning: the reports were taken with different settings" in md
    assert len(json.loads((tmp_path / "m" / "merged.json").read_text())["warnings"]) == 1
    # the same settings: no such warning
    result = invoke(["report", "merge", tmp_path / "a.json", tmp_path / "a.json", "--out", tmp_path / "same"])
    assert "different settings" not in result.output
    # two machines each benched at the default threads (all their physical cores): a difference in cores, which
    # is what a comparison of machines compares, not a setting to warn about
    for rep, cores in ((a, 2), (b, 4)):
        rep["environment"]["cpu"].update(physical_cores=cores, usable_cores=cores)
        rep["settings"].update(threads=cores, batches=[1, 4])
        rep["fer_edge_version"] = a["fer_edge_version"]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    result = invoke(["report", "merge", tmp_path / "a.json", tmp_path / "b.json", "--out", tmp_path / "cores"])
    assert result.exit_code == 0 and "different settings" not in result.output, result.output


def test_a_shipped_model_name_is_an_artifact(monkeypatch, tmp_path, synthetic_csv):
    from fer_edge.benchmarks.artifacts import collect_artifacts
    from fer_edge.errors import ArtifactError
    from fer_edge.weights import resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    shipped = Path(resolve_checkpoint("nano"))
    [art] = collect_artifacts(["nano"])
    assert art.path == shipped and art.is_checkpoint and not art.notes
    result = CliRunner().invoke(app, ["bench", "nano", "--data", str(synthetic_csv), *FAST, "--batch", "1",
                                      "--out", str(tmp_path / "out")], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "out" / "report.json").read_text())["rows"]
    assert rows and {r["artifact"] for r in rows} == {str(shipped)} and all(r["reference"] for r in rows)
    # nano's own gate is for int8: no artifact was gated here, so its line is not claimed
    assert "parity gate: nano's own" not in " ".join(result.output.split()), result.output
    # a path of that name in the current folder wins, with a note
    (tmp_path / "nano").mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json and no exported artifact") as e:
        collect_artifacts(["nano"])
    # and what to do (QA: a new user benching an empty folder got no next step)
    assert "export into it first (fer-edge export MODEL --out nano), or bench a checkpoint" in str(e.value)
    assert "(fer-edge bench small --data DATA)" in str(e.value)  # bench needs --data: the hint has it
    # unknown names and suffixes: the errors list what is accepted, .pt included
    with pytest.raises(ArtifactError, match=r"nor a shipped model name \(.*nano"):
        collect_artifacts(["no_such_model"])
    (tmp_path / "model.xyz").write_text("?")
    with pytest.raises(ArtifactError, match=r"expected one of the suffixes .*\.ts, \.pt"):
        collect_artifacts(["model.xyz"])


def test_a_shipped_name_that_is_also_a_path_here_benches_the_path(monkeypatch, tmp_path, artifact_dir):
    from fer_edge.benchmarks.artifacts import collect_artifacts

    monkeypatch.chdir(tmp_path)
    shutil.copytree(artifact_dir, tmp_path / "nano")
    arts = collect_artifacts(["nano"])
    assert all(a.path.parent == Path("nano") for a in arts) and len(arts) > 1
    assert any("benchmarked the folder ./nano, not the shipped model nano" in n for n in arts[0].notes)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_seconds_must_be_a_finite_positive_number(value, tmp_path, synthetic_csv):
    result = CliRunner().invoke(app, ["bench", "--data", str(synthetic_csv), "--seconds", value,
                                      "--out", str(tmp_path / "out")], env={"COLUMNS": "250"})
    assert result.exit_code == 2, result.output
    assert "--seconds must be a finite number > 0" in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words", [
    (["--runtimes", ""], "--runtimes was given an empty value"),
    (["--runtimes", ","], "--runtimes was given an empty value"),
    (["--devices", ""], "--devices was given an empty value"),
    (["--devices", " , "], "--devices was given an empty value"),
    (["--devices", "cpu", "--devices", ""], "--devices was given an empty value ('')"),
    (["--runtimes", "onnxruntime", "--runtimes", ""], "--runtimes was given an empty value ('')"),  # QA: it ran
    (["--devices", "cpus"], "--devices: unknown device 'cpus' (not a device of any runtime); valid (any case): cpu, "
                            "cuda, mps"),
    (["--devices", "AzureExecutionProvider"], "is a remote (cloud) provider that ONNX Runtime lists, not a device"),
    (["--devices", "cpu,CPU_AND_NE", "--runtimes", "onnxruntime"],
     "unknown device 'CPU_AND_NE' (not a device of --runtimes onnxruntime)"),
    (["--batch", "0"], "--batch takes comma-separated positive integers"),
    (["--batch", "-1"], "--batch takes comma-separated positive integers"),
    (["--batch", "1,x"], "--batch takes comma-separated positive integers"),
    (["--batch", ""], "--batch takes comma-separated positive integers"),
], ids=lambda v: repr(v) if isinstance(v, str) else " ".join(map(repr, v)))
def test_empty_or_bad_list_options_are_usage_errors(args, words, tmp_path, synthetic_csv, monkeypatch):
    """QA: ``--runtimes ""`` and ``--devices ""`` (a script's unset variable) ran every runtime and device;
    a bad --batch was exit 1 where every other bad option value is a usage error (exit 2)."""
    import fer_edge.benchmarks.bench as bench_mod

    # run_bench checks the devices first thing; finding the artifacts is the start of the work
    monkeypatch.setattr(bench_mod, "collect_artifacts", lambda *a, **k: pytest.fail("worked despite a bad option"))
    result = CliRunner().invoke(app, ["bench", "nano", "--data", str(synthetic_csv), *args,
                                      "--out", str(tmp_path / "out")], env={"COLUMNS": "250"})
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out").exists()


def test_threads_0_means_the_default_as_in_train(tmp_path, synthetic_csv, monkeypatch, tiny_checkpoint):
    """QA: ``bench --threads 0`` was a usage error while ``train --threads 0`` means "the default"."""
    import fer_edge.benchmarks.bench as bench_mod
    from fer_edge.benchmarks.environment import default_threads
    from fer_edge.errors import FerEdgeError

    def reached(*a, **k):
        raise FerEdgeError("reached the work")

    monkeypatch.setattr(bench_mod, "collect_artifacts", reached)
    result = CliRunner().invoke(app, ["bench", "nano", "--data", str(synthetic_csv), "--threads", "0",
                                      "--out", str(tmp_path / "out")], env={"COLUMNS": "250"})
    assert result.exit_code == 1 and "reached the work" in result.output, result.output
    monkeypatch.undo()
    report = _bench([tiny_checkpoint], synthetic_csv, **{**FAST_KW, "threads": 0, "batches": (1,)})
    assert report.settings["threads"] == default_threads()


def test_merged_plot_legend_lists_machines_in_m_order(monkeypatch, tmp_path):
    import matplotlib.axes

    from fer_edge.benchmarks.report import legend_order, plot_latency_vs_accuracy

    names = {"vm (Xeon)": "M1", "pi5 (Cortex-A76)": "M2"}
    assert legend_order({"pi5 (Cortex-A76)", "vm (Xeon)"}, names) == ["vm (Xeon)", "pi5 (Cortex-A76)"]
    assert legend_order({"onnxruntime", "openvino", "pytorch"}) == ["onnxruntime", "openvino", "pytorch"]
    rows = [{**_plot_row("onnx", "fp32", "onnxruntime", 1.0, 0.5), "machine": m} for m in names]
    seen = []
    real_legend = matplotlib.axes.Axes.legend

    def legend(self, *args, **kw):
        seen.extend(h.get_label() for h in kw.get("handles") or [])
        return real_legend(self, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", legend)
    plot_latency_vs_accuracy(rows, tmp_path / "p.png", "t", color_key="machine", machine_names=names)
    assert seen[:2] == ["M1: vm (Xeon)", "M2: pi5 (Cortex-A76)"], seen


def test_pareto_labels_stay_inside_the_axes_and_batch_markers_are_black(monkeypatch, tmp_path):
    """A label of a point near the top was drawn over the plot's title; the legend's batch marker was gray, the
    colour of the 8th series."""
    import matplotlib.axes
    from matplotlib.figure import Figure

    from fer_edge.benchmarks.report import plot_latency_vs_accuracy

    rows = [_plot_row("onnx", p, rt, ms, acc) for p, rt, ms, acc in
            (("fp32", "onnxruntime", 1.0, 0.70), ("int8", "onnxruntime", 0.5, 0.699), ("fp32", "openvino", 0.3, 0.60),
             ("int8", "openvino", 0.2, 0.40))]
    legends, boxes = [], []
    real_legend, real_save = matplotlib.axes.Axes.legend, Figure.savefig

    def legend(self, *args, **kw):
        legends.extend(kw.get("handles") or [])
        return real_legend(self, *args, **kw)

    def save(fig, *a, **k):
        fig.canvas.draw()
        ax = fig.axes[0]
        boxes.append((ax.get_window_extent(), [t.get_window_extent() for t in ax.texts]))
        return real_save(fig, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "legend", legend)
    monkeypatch.setattr(Figure, "savefig", save)
    plot_latency_vs_accuracy(rows, tmp_path / "p.png", "a title")
    axes_box, texts = boxes[0]
    assert texts and all(t.y1 <= axes_box.y1 + 1 for t in texts), (axes_box, texts)
    batch = [h for h in legends if h.get_label().startswith("batch ")]
    assert batch and all(h.get_color() == "black" for h in batch)


def test_more_n_images_than_the_split_holds_is_noted(tiny_checkpoint, synthetic_csv):
    """QA: --n-images 99999 was cut to the split's size without a word."""
    report = _bench([tiny_checkpoint], synthetic_csv, batches=(1,), n_images=99999)
    assert report.settings["n_images"] == report.settings["split_size"] == 84
    assert "--n-images 99999 is more than the 84 images of the split: all of them were used" in report.notes
    assert not any("--n-images" in n for n in _bench([tiny_checkpoint], synthetic_csv, batches=(1,),
                                                     n_images=84).notes)


def test_artifact_tags_tell_apart_two_files_of_one_model_target_and_precision():
    from fer_edge.benchmarks.report import artifact_tags, row_label

    def row(path, target="onnx", precision="int8", sha="aa"):
        return {"artifact": path, "target": target, "precision": precision, "source_sha256": sha, "model": "m",
                "runtime": "onnxruntime", "device": "CPUExecutionProvider"}

    rows = [row("exports/a/m_int8.onnx"), row("exports/b/m_int8.onnx"), row("exports/a/m_fp32.onnx", precision="fp32"),
            row("x/m_int8.onnx", sha="bb")]  # another checkpoint's: told apart by its model already
    tags = artifact_tags(rows)
    assert tags == {"exports/a/m_int8.onnx": "a/m_int8.onnx", "exports/b/m_int8.onnx": "b/m_int8.onnx"}
    assert row_label(rows[0], tags=tags) == "m: onnx int8 (a/m_int8.onnx) / onnxruntime / CPUExecutionProvider"
    assert artifact_tags([row("a/m.onnx"), row("b/m.onnx"), row("b/m.onnx")]) == {"a/m.onnx": "a/m.onnx",
                                                                                  "b/m.onnx": "b/m.onnx"}
    assert artifact_tags([row("/m.onnx"), row("m.onnx")]) == {"/m.onnx": "/m.onnx", "m.onnx": "m.onnx"}  # not //


def test_two_folders_int8_onnx_of_one_checkpoint_are_told_apart_in_the_table(artifact_dir, tiny_checkpoint,
                                                                             synthetic_csv, tmp_path):
    """QA: two export folders' int8 ONNX (of one checkpoint) gave two rows that read the same."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(artifact_dir / "fer_nano_int8.onnx", tmp_path / name / "fer_nano_int8.onnx")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [str(a) for a in [
        "bench", tmp_path / "a" / "fer_nano_int8.onnx", tmp_path / "b" / "fer_nano_int8.onnx", "--reference",
        tiny_checkpoint, "--data", synthetic_csv, "--split", "PublicTest", *FAST, "--batch", "1",
        "--max-abs-diff", "int8=0", "--out", out]], env={"COLUMNS": "200"})
    assert result.exit_code == 1, result.output  # every int8 row fails a zero logit-difference limit
    gate = result.output.split("failed the parity gate")[1]  # the closing error lists each row once, by its file
    for text in (result.output, (out / "report.md").read_text(), gate):
        assert "(a/fer_nano_int8.onnx)" in text and "(b/fer_nano_int8.onnx)" in text, text
    # report merge: another machine's report of the same two files; merged.md tells them apart too
    other = json.loads((out / "report.json").read_text())
    other["environment"]["hostname"] = "other-host"
    (tmp_path / "other.json").write_text(json.dumps(other))
    merged = invoke(["report", "merge", out / "report.json", tmp_path / "other.json", "--out", tmp_path / "m"])
    assert merged.exit_code == 0, merged.output
    md = (tmp_path / "m" / "merged.md").read_text()
    p50_table = md.split("All rows:")[0]
    assert "onnx (a/fer_nano_int8.onnx)" in p50_table and "onnx (b/fer_nano_int8.onnx)" in p50_table, md
    assert md.count("(a/fer_nano_int8.onnx)") == 3, md  # its p50 line, then one row per machine
    # files of different content (say two calibrations): a machine that benched only b's joins b's line, not a's
    mine = json.loads((out / "report.json").read_text())
    for r in mine["rows"]:
        r["sha256"] = ("aa" if "/a/" in r["artifact"] else "bb") * 32 if r["precision"] == "int8" else r["sha256"]
    only_b = json.loads(json.dumps(mine))
    only_b["environment"]["hostname"] = "other-host"
    only_b["rows"] = [r for r in only_b["rows"] if "/a/" not in r["artifact"]]
    for r in only_b["rows"]:
        if r["latency_ms"]:
            r["latency_ms"]["p50"] = 999.0
    (tmp_path / "mine.json").write_text(json.dumps(mine))
    (tmp_path / "only_b.json").write_text(json.dumps(only_b))
    merged = invoke(["report", "merge", tmp_path / "mine.json", tmp_path / "only_b.json", "--out", tmp_path / "m2"])
    assert merged.exit_code == 0, merged.output
    lines = {cells[1]: cells for cells in _p50_table((tmp_path / "m2" / "merged.md").read_text())
             if cells[2] == "int8"}
    assert lines["onnx (a/fer_nano_int8.onnx)"][7] == "-", lines
    assert lines["onnx (b/fer_nano_int8.onnx)"][7].startswith("999.000"), lines

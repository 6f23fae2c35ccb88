"""The compute-limit arithmetic used by the bench."""
from fer_edge.benchmarks.stats import compute_limit

ENV = {"cpu": {"isa": "avx512", "clock_mhz": 2000.0, "flags": ["avx512f", "avx512_vnni"], "clock_source": "test"}}


def test_fp32_peak_and_fraction():
    cl = compute_limit(50_000_000, 1000.0, 1, ENV)
    assert cl["peak_gflops"] == 64 * 2.0 and abs(cl["achieved_gflops"] - 100.0) < 1e-9
    assert abs(cl["fraction_of_peak"] - 100 / 128) < 1e-9


def test_int8_rows_use_the_int8_peak():
    vnni = compute_limit(50_000_000, 1000.0, 1, ENV, precision="int8")
    plain = compute_limit(50_000_000, 1000.0, 1, {"cpu": {**ENV["cpu"], "flags": ["avx512f"]}}, precision="int8")
    assert vnni["peak_gflops"] == 4 * 128 and plain["peak_gflops"] == 2 * 128
    assert "VNNI" in vnni["assumption"]


def test_a_rate_above_the_assumed_peak_is_no_percentage_over_100():
    """A VM reporting its base clock (2596 MHz) below the boost clock: the measured rate exceeds the 'peak'."""
    from fer_edge.benchmarks.report import report_markdown
    from fer_edge.cli.bench import compute_limit_text

    env = {"cpu": {"isa": "avx512", "clock_mhz": 2596.12, "clock_source": "psutil.cpu_freq().current"}}
    cl = compute_limit(97_225_000, 1000.0, 1, env)  # 194.45 GFLOP/s against 1 x 64 x 2.596 GHz = 166.2
    assert cl["peak_too_low"] and cl["fraction_of_peak"] is None
    assert abs(cl["clock_needed_mhz"] - 194.45e9 / 64 / 1e6) < 1
    cl["row"] = "fer_nano: onnx fp32 / onnxruntime / CPUExecutionProvider batch 1"
    text = compute_limit_text(cl)
    assert "117.0%" not in text and "peak estimate is too low" in text and "boost clock" in text, text
    assert "needs at least 3038 MHz" in text
    # a report written before this (fraction_of_peak 1.17 stored) is shown the same way
    old = {k: v for k, v in cl.items() if k not in ("peak_too_low", "clock_needed_mhz")}
    old["fraction_of_peak"] = 1.17
    report = {"settings": {"n_images": 1, "split": "s", "batches": [1], "threads": 1, "warmup": 0, "iters": 1,
                           "rounds": 1},
              "reference": {"model": "m", "path": "m.pt", "sha256": "0" * 64}, "rows": [],
              "environment": {}, "compute_limit": old}
    md = report_markdown(report)
    assert "117" not in md and "peak estimate is too low" in md, md
    ok = compute_limit(9_722_500, 1000.0, 1, env)
    assert not ok["peak_too_low"] and "11.7% of a 166.2 GFLOP/s peak" in compute_limit_text({**ok, "row": "r"})

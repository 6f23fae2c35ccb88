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

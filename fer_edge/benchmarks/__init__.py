"""Benchmarks: ``fer-edge bench`` (latency, accuracy and parity of exported artifacts on every runtime
and device), ``fer-edge devices`` and ``fer-edge report merge``.

    from fer_edge.benchmarks import run_bench, describe_environment, merge_reports
    report = run_bench(["exports/"], data="fer2013.csv.gz", split="PublicTest", out_dir="reports/bench")

Modules: :mod:`~fer_edge.benchmarks.bench` (the run), :mod:`~fer_edge.benchmarks.artifacts`
(artifact dirs, manifests, the reference), :mod:`~fer_edge.benchmarks.environment` (the machine),
:mod:`~fer_edge.benchmarks.stats` (latency statistics, Pareto front, compute limit),
:mod:`~fer_edge.benchmarks.report` (the report files, merging) and
:mod:`~fer_edge.benchmarks.schema` (the published JSON schema of ``report.json``).
Names are imported on first use, so importing this package stays cheap.
"""
from __future__ import annotations

_EXPORTS = {
    "run_bench": "fer_edge.benchmarks.bench",
    "BenchReport": "fer_edge.benchmarks.report",
    "load_report": "fer_edge.benchmarks.report",
    "merge_reports": "fer_edge.benchmarks.report",
    "describe_environment": "fer_edge.benchmarks.environment",
    "REPORT_SCHEMA": "fer_edge.benchmarks.schema",
    "validate": "fer_edge.benchmarks.schema",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_EXPORTS)

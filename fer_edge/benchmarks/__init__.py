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

#: The modules of this package that run as ``python -m fer_edge.benchmarks.<name>``, with what each measures.
SCRIPTS = {
    "distill_speed": "distillation step speed: teachers in PyTorch or ONNX Runtime, offline or replayed targets",
    "export_bench": "export time, artifact size and parity of every target x precision (calibration draws too)",
    "int8_sensitivity": "where INT8 rounding error comes from (weights, activations, single tensors)",
    "leaderboard": "every registered model trained with one recipe, exported and benched; table and plot",
    "ort_int8": "ONNX Runtime INT8 with and without its exact-INT8 session entry: speed and answers",
    "resize_parity": "how an app's own resize (OpenCV's area filter, resize-then-luma) changes a model's answers",
    "step_cost": "images/s, ms, operator calls and kernel launches of a training step",
    "train_throughput": "training images/s of fer-edge's pipeline against the source notebooks'",
}

#: Library modules run with ``python -m`` by mistake: the command that does their work.
LIBRARY_USE = {
    "artifacts": "fer-edge bench", "bench": "fer-edge bench", "environment": "fer-edge devices",
    "report": "fer-edge report merge", "schema": "fer-edge bench", "stats": "fer-edge bench",
}


def scripts_text() -> str:
    return "\n".join(f"  python -m fer_edge.benchmarks.{n:<17} {what}" for n, what in SCRIPTS.items())


def not_a_script(module: str) -> int:
    """What ``python -m fer_edge.benchmarks.<library module>`` prints (to stderr) instead of nothing; exit code 2."""
    import sys

    name = module.rsplit(".", 1)[-1]
    print(f"fer_edge.benchmarks.{name} is a library module, not a command: use `{LIBRARY_USE[name]}` "
          f"(see `{LIBRARY_USE[name]} --help`). The benchmark scripts:\n{scripts_text()}", file=sys.stderr)
    return 2

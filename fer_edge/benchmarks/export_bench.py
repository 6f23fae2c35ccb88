"""Export benchmark: time every target x precision, size the artifacts, report parity.

    python -m fer_edge.benchmarks.export_bench CHECKPOINT --calib-data fer2013.csv.gz \
        [--val-data ...] [--out DIR] [--calib-methods minmax,entropy,percentile] [--calib-seeds 0,1,2,3,4]
        [--json report.json] [--no-parity-gate]

Prints export seconds per target (and in total: the budget is 60 s for every target and
precision), artifact size per precision with the INT8/FP32 ratio (ONNX and OpenVINO INT8
should be close to a quarter of FP32), and the parity figures of the export gate.
``--calib-methods`` also exports ONNX INT8 once per calibration method and compares them on
the whole validation split (agreement and accuracy against FP32): how the default was chosen.
``--calib-seeds`` exports INT8 once per calibration draw (``--calib-seed``: which ``--calib-size`` images
calibrate) for every target that can run here, and prints each draw's agreement and accuracy drop, then per
target the median, the range and how many draws stay within :data:`INT8_MAX_DROP` (the project's INT8 bar):
how much an INT8 figure owes to the one draw the export used. A calibration split of at most ``--calib-size``
images gives every seed all of them, the same images: the draws cannot differ, and a note (and the JSON's
``same_images``) says so; the title gives the number of images each draw used.

Exit status: 0; 1 when an export failed, when the total export time is over the budget, or when an artifact of
the main export failed the parity gate (named in a closing ``error:`` line, as ``fer-edge export`` and ``fer-edge
bench`` exit 1; with ``--no-parity-gate``, as bench's, a closing ``warning:`` line names them and the status
stays 0; the draws of ``--calib-methods`` and ``--calib-seeds`` are measurements, never a failure); 2 for a bad
option; 130 on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

#: Every target and precision must export within this many seconds in total.
BUDGET_S = 60.0
#: The project's INT8 bar: at most half a point of top-1 below FP32.
INT8_MAX_DROP = 0.005
#: What the export's error for a ``--val-data`` below the gate's minimum advises, in this script's options (it has no
#: ``--no-validate``).
SMALL_VAL_ADVICE = "pass a larger validation split (--val-split) or data set (--val-data)"


def _weights_bytes(entry: dict) -> int:
    """Bytes of the weight-carrying files: OpenVINO's ``.bin`` (its ``.xml`` is the graph text), else all."""
    files = entry.get("files") or []
    weights = [f["size_bytes"] for f in files if not f["file"].endswith(".xml")]
    return sum(weights) if weights else int(entry["size_bytes"])


def _size_table(entries: list[dict]) -> dict:
    """{target: {precision: bytes, "<p>/fp32": ratio, "int8/fp32 weights": ratio}} over the main artifacts."""
    out: dict[str, dict] = {}
    weights: dict[str, dict] = {}
    for e in entries:
        if e["variant"] != "main":
            continue
        out.setdefault(e["target"], {})[e["precision"]] = e["size_bytes"]
        weights.setdefault(e["target"], {})[e["precision"]] = _weights_bytes(e)
    for target, sizes in out.items():
        if "fp32" in sizes:
            for p in ("fp16", "int8"):
                if p in sizes:
                    sizes[f"{p}/fp32"] = round(sizes[p] / sizes["fp32"], 3)
            w = weights[target]
            if "int8" in w:
                sizes["int8/fp32 weights"] = round(w["int8"] / w["fp32"], 3)
    return out


def this_run(manifest: dict) -> list[dict]:
    """The manifest's entries written by its latest run: an export into a folder keeps earlier runs' entries
    (each names its ``run``), which are not this run's figures."""
    run_id = manifest.get("run_id")
    return [e for e in manifest.get("artifacts") or [] if e.get("run") == run_id]


class _Bar:
    """A transient rich progress bar on a terminal's stderr (nothing off a terminal): one line for the export
    calls of this benchmark, one for the steps of the current call (the exporter's ProgressEvents)."""

    def __init__(self, total_calls: int, show: bool | None = None, console=None):
        from fer_edge.console import WideConsole as Console  # wide off a terminal
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = console or Console(stderr=True)
        show = console.is_terminal if show is None else show
        self.progress = Progress(TextColumn("[bold]{task.fields[label]}[/]"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.description}"), console=console,
                                 transient=True, disable=not show)
        self.calls = self.progress.add_task("", total=total_calls, label="exports")
        self.steps = self.progress.add_task("", total=None, label="  step")

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def call(self, what: str):
        """Start export call ``what``; returns the exporter's ``progress`` callback for it."""
        self.progress.update(self.calls, description=what)
        self.progress.reset(self.steps, total=None, description="")

        def on_event(ev) -> None:
            if ev.stage == "done":
                self.progress.update(self.steps, total=ev.total, completed=ev.total, description="")
            else:
                self.progress.update(self.steps, total=ev.total, completed=ev.index,
                                     description=f"{ev.stage} {ev.target} {ev.precision}")
        return on_event

    def done(self) -> None:
        self.progress.advance(self.calls)


def seed_targets_problem(targets) -> str | None:
    """Why ``--calib-seeds`` cannot run with ``targets`` (what :func:`~fer_edge.exporters.export` takes: None, a
    name, ``"all"``, names or :class:`~fer_edge.targets.Target` objects), or None: the draws are INT8 exports
    validated here, so at least one target must export INT8 and run on this machine. Targets the export refuses
    (an unknown name) are left to its own check."""
    from fer_edge.errors import FerEdgeError
    from fer_edge.exporters.api import _resolve_targets
    from fer_edge.targets import TARGETS, Precision

    try:
        names = [t.name for t in _resolve_targets(targets)]
    except FerEdgeError:
        return None
    can = [n for n, t in TARGETS.items() if Precision.int8 in t.precisions and t.runs_here()]
    if any(n in can for n in names):
        return None
    return (f"--calib-seeds compares INT8 exports validated here, and --target {','.join(names)} has no target that "
            f"exports INT8 and runs on this machine ({', '.join(can)}): add one, or leave --calib-seeds out")


def run(checkpoint, calib_data, out_dir=None, val_data=None, val_split=None, val_size=None,
        targets="all", precisions=None, calib_size: int | None = None, calib_methods=None, calib_seeds=None,
        progress: bool | None = None, console=None) -> dict:
    """Export and measure; returns the report dict (see the module docstring).

    Only this run's exports count: an ``out_dir`` holding earlier runs' artifacts (their entries stay listed in
    the manifests) reports none of them. ``progress``: a transient bar on ``console`` (default stderr); None: only
    when it is a terminal. A temporary ``out_dir`` (None) is removed also when the run stops (an error, Ctrl-C),
    and neither an error nor the report names it (each draw's ``export_dir`` is None). ``calib_seeds`` with no
    target that exports INT8 and runs here is refused (:class:`~fer_edge.errors.OptionError`) before any export.
    """
    from fer_edge.targets import Target

    if targets is not None and not isinstance(targets, (str, Target)):
        targets = list(targets)  # read twice (the check below, the export): a generator would be empty the second time
    if calib_seeds:
        why = seed_targets_problem(targets)
        if why:
            from fer_edge.errors import OptionError

            raise OptionError(why)
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="fer-edge-export-bench-")
        out_dir = tmp.name
    try:
        calls = 1 + len(calib_methods or []) + len(calib_seeds or [])
        with _Bar(calls, progress, console) as bar:
            return _run(checkpoint, calib_data, Path(out_dir), val_data, val_split, val_size, targets, precisions,
                        calib_size, calib_methods, calib_seeds, bar, kept=tmp is None)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _run(checkpoint, calib_data, out_dir: Path, val_data, val_split, val_size, targets, precisions, calib_size,
         calib_methods, calib_seeds, bar: _Bar, kept: bool = True) -> dict:
    """:func:`run`'s work in ``out_dir``; ``kept``: False for a temporary folder, named nowhere (removed after)."""
    from fer_edge.exporters import export

    t0 = time.perf_counter()
    result = export(checkpoint, targets, precisions, out_dir / "all", calib_data=calib_data,
                    calib_size=calib_size, val_data=val_data, val_split=val_split, val_size=val_size,
                    raise_on_failure=False, data_progress=False, small_val_advice=SMALL_VAL_ADVICE,
                    progress=bar.call("main export"))
    bar.done()
    wall = time.perf_counter() - t0
    warnings = list(result.warnings)  # the calibration's and the parity gate's (too few images...): printed by main
    entries = this_run(result.manifest)
    per_target: dict[str, float] = {}
    for e in entries:
        per_target[e["target"]] = per_target.get(e["target"], 0.0) + float(e["export_seconds"])
    export_total = sum(per_target.values())
    report = {
        "checkpoint": result.manifest["source"],
        "tool_versions": result.manifest["tool_versions"],
        "calibration": result.manifest["calibration"],
        "validation_data": result.manifest["validation_data"],
        "export_seconds": {k: round(v, 2) for k, v in per_target.items()},
        "export_seconds_total": round(export_total, 2),
        "wall_seconds_with_data_and_validation": round(wall, 2),
        "budget_seconds": BUDGET_S,
        "within_budget": export_total < BUDGET_S,
        "sizes": _size_table(entries),
        "artifacts": [
            {k: e.get(k) for k in ("file", "target", "precision", "variant", "size_bytes", "export_seconds")}
            | {"validation": {k: e["validation"].get(k) for k in (
                "status", "reason", "agreement", "max_abs_diff", "kl", "accuracy", "reference_accuracy",
                "accuracy_drop", "n", "precision_hint")}}
            for e in entries
        ],
        "failed": result.failed,
        "calib_methods": None,
    }
    if calib_methods:
        rows = []
        for method in calib_methods:
            t1 = time.perf_counter()
            r = export(checkpoint, ["onnx"], ["int8"], out_dir / f"calib-{method}", calib_data=calib_data,
                       calib_size=calib_size, calib_method=method, val_data=val_data, val_split=val_split,
                       val_size=None, raise_on_failure=False, data_progress=False, small_val_advice=SMALL_VAL_ADVICE,
                       progress=bar.call(f"calibration method {method}"))
            bar.done()
            secs = time.perf_counter() - t1
            warnings += r.warnings
            if r.failed:
                rows.append({"method": method, "error": r.failed[0]["reason"]})
                continue
            v = r.artifacts[0].validation
            rows.append({"method": method, "seconds": round(secs, 2), "n": v.get("n"),
                         "agreement": v.get("agreement"), "accuracy": v.get("accuracy"),
                         "reference_accuracy": v.get("reference_accuracy"), "accuracy_drop": v.get("accuracy_drop"),
                         "kl": v.get("kl"), "max_abs_diff": v.get("max_abs_diff"), "status": v.get("status")})
        report["calib_methods"] = rows
    report["calib_seeds"] = None
    if calib_seeds:
        int8_targets = sorted({e["target"] for e in entries if e["precision"] == "int8"
                               and e["validation"].get("agreement") is not None})
        if not int8_targets:  # nothing to compare the other draws with: say why rather than export nothing
            from fer_edge.errors import FerEdgeError

            why = "; ".join(sorted({f"{e['target']} int8: {e['validation'].get('reason') or e['validation']['status']}"
                                    for e in entries if e["precision"] == "int8"})) or "no int8 artifact was exported"
            where = f"; its artifacts are in {out_dir / 'all'}" if kept else ""  # a temporary folder: removed
            raise FerEdgeError(f"--calib-seeds needs INT8 artifacts validated on the whole split, and the main export "
                               f"validated none ({why}){where}")
        from fer_edge.exporters.calibration import DEFAULT_SEED

        # the main export above is the default draw, validated the same way when on the whole split: reused
        known = ({DEFAULT_SEED: (out_dir / "all", [e for e in entries if e["precision"] == "int8"
                                                 and e["variant"] == "main" and e["target"] in int8_targets],
                                 result.manifest["calibration"])}
                 if val_size is None else {})
        report["calib_seeds"] = calib_seed_spread(checkpoint, calib_data, out_dir, calib_seeds, int8_targets,
                                                  calib_size, val_data, val_split, known=known, bar=bar,
                                                  warnings=warnings, kept=kept)
    report["warnings"] = list(dict.fromkeys(warnings))  # each once: the extra exports repeat the main one's
    return report


def _draw_row(seed: int, target: str, export_dir: Path | None, v: dict) -> dict:
    return {"seed": seed, "target": target, "export_dir": None if export_dir is None else str(export_dir),
            "agreement": v.get("agreement"),
            "accuracy": v.get("accuracy"), "reference_accuracy": v.get("reference_accuracy"),
            "accuracy_drop": v.get("accuracy_drop"), "n": v.get("n"), "status": v.get("status")}


def calib_seed_spread(checkpoint, calib_data, out_dir, seeds, targets, calib_size=None, val_data=None,
                      val_split=None, known: dict | None = None, bar: _Bar | None = None,
                      warnings: list[str] | None = None, kept: bool = True) -> dict:
    """INT8 exported once per calibration seed for ``targets``, each validated on the whole split.

    ``known``: ``{seed: (export_dir, manifest entries, manifest calibration record)}`` of draws already exported
    and validated this way (the main export's default draw), taken as they are instead of exported again. Returns
    ``{"rows": [per seed and target], "summary": [per target: median/min/max drop, draws within the bar],
    "calib_size": images each draw calibrated on (the manifests' count: fewer than asked for when the split is
    smaller; None if the draws differ in it), "calib_size_requested", "calib_split_size", "same_images": True when
    the split holds at most ``calib_size`` images, so every seed takes all of them and the draws cannot differ,
    "note": a line saying so, else None}``; a draw whose export fails is a row with its ``error``, left out of the
    summary. ``warnings``: the exports' warnings are added to it.
    ``kept``: False when ``out_dir`` is a temporary folder, removed after: the rows' ``export_dir`` is None.
    """
    import statistics

    from fer_edge.exporters import export

    known = known or {}
    rows = []
    calibrations = []  # each draw's calibration record (its manifest's)
    for seed in seeds:
        if seed in known and {e["target"] for e in known[seed][1]} == set(targets):
            where, done, calibration = known[seed]
            calibrations.append(calibration)
            rows += [_draw_row(seed, e["target"], where if kept else None, e["validation"]) for e in done]
            if bar is not None:
                bar.done()
            continue
        where = Path(out_dir) / f"calib-seed-{seed}"
        r = export(checkpoint, targets, ["int8"], where, calib_data=calib_data,
                   calib_size=calib_size, calib_seed=seed, val_data=val_data, val_split=val_split, val_size=None,
                   raise_on_failure=False, data_progress=False, small_val_advice=SMALL_VAL_ADVICE,
                   progress=None if bar is None else bar.call(f"calibration seed {seed}"))
        if bar is not None:
            bar.done()
        if warnings is not None:
            warnings += r.warnings
        calibrations.append(r.manifest.get("calibration"))
        rows += [{"seed": seed, "target": f["target"], "error": f["reason"]} for f in r.failed]
        rows += [_draw_row(seed, a.target, where if kept else None, a.validation) for a in r.artifacts
                 if a.variant == "main"]
    summary = []
    for target in targets:
        drops = [r["accuracy_drop"] for r in rows if r["target"] == target and r.get("accuracy_drop") is not None]
        agree = [r["agreement"] for r in rows if r["target"] == target and r.get("agreement") is not None]
        if not drops:
            continue
        summary.append({"target": target, "draws": len(drops), "median_drop": statistics.median(drops),
                        "min_drop": min(drops), "max_drop": max(drops),
                        "median_agreement": statistics.median(agree),
                        "within_bar": sum(d <= INT8_MAX_DROP for d in drops), "bar": INT8_MAX_DROP})
    from fer_edge.exporters.calibration import DEFAULT_CALIB_SIZE

    requested = calib_size or DEFAULT_CALIB_SIZE
    recs = [c for c in calibrations if c]
    counts = {c["count"] for c in recs}
    same = bool(recs) and all(c["count"] == c["split_size"] for c in recs)  # all of the split: seeds change nothing
    note = None
    if same:
        n = recs[0]["split_size"]
        note = (f"the calibration split ({recs[0]['split']}) holds {n} images, no more than --calib-size {requested}"
                f"{' (the default)' if calib_size is None else ''}: every seed calibrates on all of them, the same "
                f"images, so the draws cannot differ (a --calib-size below {n} draws different images)")
    return {"calib_size": counts.pop() if len(counts) == 1 else None, "calib_size_requested": requested,
            "calib_split_size": recs[0]["split_size"] if recs else None, "same_images": same, "note": note,
            "rows": rows, "summary": summary}


def _pct(v) -> str:
    return "-" if v is None else f"{v:.2%}"


def _num(v, fmt: str, scale: float = 1) -> str:
    """``v * scale`` in ``fmt``; "-" for a figure not measured (an artifact that was not validated)."""
    return "-" if v is None else format(v * scale, fmt)


def _status(v: dict) -> str:
    """The validation status, with the reason the manifest records when it is not "passed" (Core ML off a Mac:
    "not validated: ...")."""
    status, reason = str(v.get("status")), v.get("reason")
    if status == "passed" or not reason:
        return status
    return reason if str(reason).startswith(status) else f"{status}: {reason}"


def print_report(report: dict, console=None) -> None:
    """The report's tables on ``console`` (stdout). Paths, names and reasons are markup-escaped (or printed with
    no markup): a checkpoint path holding [/x] raised rich's MarkupError, one holding [b] lost it."""
    from fer_edge.console import WideConsole as Console  # wide off a terminal
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    src = report["checkpoint"]
    console.print(f"checkpoint {src['path']} ({src['model']}, sha256 {src['sha256'][:12]}...)", markup=False)
    cal = report.get("calibration") or {}
    if cal:
        console.print(f"calibration: {cal.get('count')} images of {cal.get('split')} ({cal.get('sampling')})",
                      markup=False)
    val = report.get("validation_data") or {}
    if val:
        console.print(f"validation: {val.get('count')} images of {val.get('split')} ({val.get('sampling')})",
                      markup=False)

    t = Table(title="Export seconds per target")
    t.add_column("Target")
    t.add_column("Seconds (all precisions)", justify="right")
    for k, v in report["export_seconds"].items():
        t.add_row(k, f"{v:.2f}")
    ok = "[green]within[/]" if report["within_budget"] else "[bold red]over[/]"
    t.add_row("[bold]total[/]", f"[bold]{report['export_seconds_total']:.2f}[/]")
    console.print(t)
    console.print(f"total export time {report['export_seconds_total']:.1f} s: {ok} the {report['budget_seconds']:.0f} s "
                  f"budget (wall with data loading and validation: {report['wall_seconds_with_data_and_validation']:.1f} s)")

    t = Table(title="Artifact size (bytes; Core ML: the app package; OpenVINO: .xml + .bin)",
              caption="int8/fp32 weights: OpenVINO's .bin alone (its .xml is graph text)")
    ratios = ("fp16/fp32", "int8/fp32", "int8/fp32 weights")
    for col in ("Target", "fp32", "fp16", "int8", *ratios):
        t.add_column(col, justify="right" if col != "Target" else "left")
    for target, sizes in report["sizes"].items():
        t.add_row(target, *[f"{sizes[c]:,}" if c in sizes else "-" for c in ("fp32", "fp16", "int8")],
                  *[f"{sizes[c]:.3f}" if c in sizes else "-" for c in ratios])
    console.print(t)

    t = Table(title="Parity with the PyTorch FP32 model")
    for col in ("Artifact", "Status", "Agreement", "Max |diff|", "KL", "Accuracy", "Ref. acc.", "n"):
        t.add_column(col, justify="left" if col in ("Artifact", "Status") else "right")
    for a in report["artifacts"]:
        v = a["validation"]
        t.add_row(escape(a["file"]), escape(_status(v)), _pct(v.get("agreement")),
                  "-" if v.get("max_abs_diff") is None else f"{v['max_abs_diff']:.2e}",
                  "-" if v.get("kl") is None else f"{v['kl']:.2e}", _pct(v.get("accuracy")),
                  _pct(v.get("reference_accuracy")), str(v.get("n") or "-"))
    console.print(t)
    for f in report["failed"]:
        console.print("[bold red]export failed[/] " + escape(f"{f['target']} {f['precision']}: {f['reason']}"))

    if report.get("calib_methods"):
        t = Table(title="ONNX INT8 calibration methods (whole validation split)")
        for col in ("Method", "Agreement", "Accuracy", "FP32 acc.", "Drop (points)", "KL", "Max |diff|", "Seconds"):
            t.add_column(col, justify="left" if col == "Method" else "right")
        for r in report["calib_methods"]:
            if "error" in r:
                t.add_row(r["method"], f"[red]{escape(str(r['error']))}[/]", *[""] * 6)
                continue
            t.add_row(r["method"], _pct(r["agreement"]), _pct(r["accuracy"]), _pct(r["reference_accuracy"]),
                      _num(r["accuracy_drop"], ".2f", 100), _num(r["kl"], ".2e"), _num(r["max_abs_diff"], ".2f"),
                      f"{r['seconds']:.1f}")
        console.print(t)

    spread = report.get("calib_seeds")
    if spread:
        each = ("a number of images that differs between draws, see their manifests" if spread.get("calib_size") is None
                else f"{spread['calib_size']} images each")
        t = Table(title=f"INT8 per calibration draw ({each}; whole validation split)")
        for col in ("Seed", "Target", "Agreement", "Accuracy", "FP32 acc.", "Drop (points)"):
            t.add_column(col, justify="left" if col == "Target" else "right")
        for r in spread["rows"]:
            if "error" in r:
                t.add_row(str(r["seed"]), r["target"], f"[red]{escape(str(r['error']))}[/]", "", "", "")
                continue
            t.add_row(str(r["seed"]), r["target"], _pct(r["agreement"]), _pct(r["accuracy"]),
                      _pct(r["reference_accuracy"]), f"{r['accuracy_drop'] * 100:+.2f}")
        console.print(t)
        if spread.get("note"):
            console.print(f"note: {spread['note']}", highlight=False, markup=False, soft_wrap=True)  # one line
        t = Table(title="INT8 accuracy drop over the draws")
        for col in ("Target", "Draws", "Median drop", "Range", "Median agreement", "Within the bar"):
            t.add_column(col, justify="left" if col == "Target" else "right")
        for s in spread["summary"]:
            t.add_row(s["target"], str(s["draws"]), f"{s['median_drop'] * 100:+.2f}",
                      f"{s['min_drop'] * 100:+.2f} to {s['max_drop'] * 100:+.2f}", _pct(s["median_agreement"]),
                      f"{s['within_bar']} of {s['draws']} (drop <= {s['bar'] * 100:.1f} points)")
        console.print(t)


def parity_failures(report: dict) -> list[str]:
    """The main export's artifacts that failed the parity gate, each as ``"FILE (REASON)"``."""
    from fer_edge.exporters.validate import FAILED

    return [f"{a['file']} ({a['validation'].get('reason') or 'no reason recorded'})" for a in report["artifacts"]
            if a["validation"].get("status") == FAILED]


def _seeds(text: str | None) -> list[int] | None:
    """``--calib-seeds``: distinct integers, comma-separated; anything else is a usage error (OptionError)."""
    from fer_edge.errors import OptionError

    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if not p.lstrip("-").isdigit()]
    if bad or not parts:
        raise OptionError(f"--calib-seeds: expected comma-separated integers, got {text!r}")
    seeds = [int(p) for p in parts]
    if len(set(seeds)) != len(seeds):
        raise OptionError(f"--calib-seeds: a seed is repeated in {text!r}")
    return seeds


#: The options that name a path or a model (``CHECKPOINT``: the argument), with what an empty value should have been.
PATH_OPTIONS = {"checkpoint": ("CHECKPOINT", "a checkpoint path or shipped model name"),
                "calib_data": ("--calib-data", "a path"), "val_data": ("--val-data", "a path"),
                "out": ("--out", "a path"), "json": ("--json", "a file path")}


def empty_problems(args) -> list[str]:
    """The path and model options given an empty value (``--out ""``: a script's unset variable), and an empty
    ``--val-split``: each would be read as the current folder or the default, so each is refused (a usage error, as
    :func:`fer_edge.cli.common.path_value` makes it for the fer-edge commands), naming the option."""
    problems = [f"{option} is empty: give {what} (an unset variable in a script?)"
                for key, (option, what) in PATH_OPTIONS.items()
                if getattr(args, key, None) is not None and not str(getattr(args, key)).strip()]
    if getattr(args, "val_split", None) is not None and not args.val_split.strip():
        problems.append("--val-split is empty: name a split, or leave the option out for the default")
    return problems


def main(argv: list[str] | None = None) -> int:
    from fer_edge.errors import FerEdgeError, OptionError

    ap = argparse.ArgumentParser(prog="python -m fer_edge.benchmarks.export_bench", description=__doc__.split("\n")[0],
                                 epilog="exit status: 0; 1 when an export failed, when the total export time is over "
                                        "the budget, or when an artifact failed the parity gate (not with "
                                        "--no-parity-gate); 2 for a bad option; 130 on Ctrl-C or SIGTERM")
    ap.add_argument("checkpoint", nargs="?", default=None, help="checkpoint (default: the shipped default model)")
    ap.add_argument("--calib-data", required=True, help="FER2013 CSV or image folder (calibration + validation)")
    # None: the export's default (500); given, it is refused for an export that calibrates nothing, as by fer-edge export
    ap.add_argument("--calib-size", type=int, default=None, help="calibration images (default 500)")
    ap.add_argument("--val-data", default=None)
    ap.add_argument("--val-split", default=None)
    ap.add_argument("--val-size", type=int, default=0, help="validation images (0: the whole split)")
    ap.add_argument("--target", default="all", help="comma-separated targets (default: all)")
    ap.add_argument("--out", default=None, help="keep the artifacts here (default: a temporary folder)")
    ap.add_argument("--calib-methods", default=None,
                    help="also compare ONNX INT8 calibration methods, e.g. minmax,entropy,percentile")
    ap.add_argument("--calib-seeds", default=None,
                    help="also export INT8 once per calibration draw, e.g. 0,1,2,3,4, and print the spread")
    ap.add_argument("--json", default=None, help="write the report as JSON here")
    ap.add_argument("--parity-gate", action=argparse.BooleanOptionalAction, default=True,
                    help="exit 1 when an artifact of the main export fails the parity gate, as fer-edge export and "
                         "fer-edge bench do (default); --no-parity-gate lists them in a closing warning and the "
                         "exit status stays 0")
    args = ap.parse_args(argv)
    from fer_edge.utils import sigterm_as_interrupt

    # the run ids --out's manifests hold before this run: an interrupt names only the folders this run wrote (an
    # earlier run's, left as they were, are not this run's exports)
    earlier = _manifest_runs(args.out)
    done: dict = {"report": None, "json": False}  # how far main got: what an interrupt's line says was left
    try:
        # SIGTERM (kill, a scheduler's stop) takes Ctrl-C's path, as in the rest of fer-edge: also while the report
        # prints, after every export finished
        with sigterm_as_interrupt():
            return _main(args, done)
    except KeyboardInterrupt:
        print(f"interrupted: {_interrupted_note(args.out, args.json, earlier, done)}", file=sys.stderr)
        return 130


def _main(args, done: dict) -> int:
    """:func:`main`'s work once the options are parsed; ``done`` records the report (``"report"``) and whether
    ``--json`` was written (``"json"``), for an interrupt's line."""
    from fer_edge.errors import FerEdgeError, OptionError
    from fer_edge.utils import check_output_file, write_text_atomic

    try:
        from fer_edge.cli.common import parse_csv_option
        from fer_edge.exporters.onnx import CALIB_METHODS
        from fer_edge.targets import TARGETS

        from fer_edge.exporters.calibration import MIN_VAL_SIZE
        from fer_edge.utils import check_writable_dir

        # every option wrong on its own, in one usage error (exit 2), before any work: an empty path or model (a
        # script's unset variable: not the current folder or the default), a bad number, name or list
        problems: list[str] = empty_problems(args)
        if args.calib_size is not None and args.calib_size < 1:  # the export's own check, here listed with the rest
            problems.append(f"--calib-size must be at least 1 (got {args.calib_size})")
        if args.val_size and args.val_size < MIN_VAL_SIZE:
            problems.append(f"validation needs at least {MIN_VAL_SIZE} images (got --val-size {args.val_size}; "
                            "0: the whole split)")
        # output paths in the way (a folder as --json, a file as --out) or unwritable: listed with the options'
        # problems; on their own, exit 1 (the machine's state, as fer-edge export's --out), not a usage error
        in_the_way: list[str] = []
        for option, value, check in (("--json", args.json, check_output_file), ("--out", args.out, check_writable_dir)):
            if value:  # an empty one is listed above
                try:
                    check(value, option, FerEdgeError)
                except FerEdgeError as e:
                    in_the_way.append(str(e))

        def checked(fn):
            try:
                return fn()
            except OptionError as e:
                problems.append(str(e))
                return None

        targets = checked(lambda: parse_csv_option(args.target, [*TARGETS, "all"], "target"))
        if targets == []:
            problems.append(f"--target {args.target!r} names no target; accepted: comma-separated "
                            f"{', '.join(TARGETS)}, or all")
        methods = checked(lambda: parse_csv_option(args.calib_methods, list(CALIB_METHODS), "calibration method",
                                                   "--calib-methods")) or None
        seeds = checked(lambda: _seeds(args.calib_seeds))
        if seeds and targets:
            why = seed_targets_problem(targets)
            if why:
                problems.append(why)
        if problems or in_the_way:
            raise (OptionError if problems else FerEdgeError)("; ".join(problems + in_the_way))
        report = run(args.checkpoint, args.calib_data, args.out, args.val_data, args.val_split,
                     args.val_size or None, targets, None, args.calib_size, methods, seeds)
    except FerEdgeError as e:  # an OptionError (a value wrong on its own) is a usage error: exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, OptionError) else 1
    done["report"] = report
    # the JSON first, atomically: an interrupt while the tables print (a long report, a slow terminal) keeps it
    json_error = None
    if args.json:
        try:
            write_text_atomic(args.json, json.dumps(report, indent=2, default=str) + "\n")
            done["json"] = True
        except OSError as e:
            json_error = f"error: --json {args.json}: {e.strerror or e}"
    for w in report["warnings"]:  # as fer-edge export prints them (too few calibration or validation images)
        print(f"warning: {w}", file=sys.stderr)
    print_report(report)
    if json_error:
        print(json_error, file=sys.stderr)
        return 1
    # the closing line, as fer-edge export's: every reason for exit status 1 at once (failed exports, the budget,
    # the parity gate), so a log's last line says why without reading the tables
    problems = []
    if report["failed"]:
        problems.append(f"{len(report['failed'])} export(s) failed: "
                        + "; ".join(f"{f['target']} {f['precision']} ({f['reason']})" for f in report["failed"]))
    if not report["within_budget"]:
        problems.append(f"the total export time {report['export_seconds_total']:.1f} s is over the "
                        f"{report['budget_seconds']:.0f} s budget")
    gate = parity_failures(report)
    if gate:
        what = f"{len(gate)} artifact(s) failed the parity gate: {'; '.join(gate)}"
        if args.parity_gate:
            problems.append(what)
        else:
            print(f"warning: {what} (exit status unaffected: --no-parity-gate)", file=sys.stderr)
    if problems:
        print("error: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


def _read_manifest(path: Path) -> dict | None:
    """The manifest at ``path``, or None where it cannot be read as one (gone, cut short, not a manifest)."""
    from fer_edge.errors import ArtifactError
    from fer_edge.exporters.manifest import load_manifest

    try:
        return load_manifest(path)
    except ArtifactError:
        return None


def _manifest_runs(out: str | None) -> dict[str, str | None]:
    """``{folder: run id}`` of the manifests in ``out``'s folders (none for None)."""
    if out is None:
        return {}
    runs = {}
    for m in Path(out).glob("*/manifest.json"):
        manifest = _read_manifest(m)
        runs[m.parent.name] = None if manifest is None else manifest.get("run_id")
    return runs


def _this_runs_folders(out: str, earlier: dict[str, str | None]) -> list[str]:
    """``out``'s folders where this run exported something: the manifest's run id is not the one it held before
    the run (``earlier``: :func:`_manifest_runs`), and it lists an artifact of that run."""
    folders = []
    for m in Path(out).glob("*/manifest.json"):
        manifest = _read_manifest(m)
        if manifest is None or not manifest.get("run_id") or manifest["run_id"] == earlier.get(m.parent.name):
            continue
        if this_run(manifest):
            folders.append(m.parent.name)
    return sorted(folders)


def _interrupted_note(out: str | None, json_path: str | None, earlier: dict[str, str | None] | None = None,
                      done: dict | None = None) -> str:
    """What an interrupted benchmark left: the report (none while exporting; cut short while printing, whole in
    --json when written), and the exports this run finished (kept in --out, else removed). ``earlier``: the run
    ids of --out's manifests before the run (:func:`_manifest_runs`), whose folders are not this run's;
    ``done``: how far :func:`main` got (``{"report": the report or None, "json": written}``)."""
    done = done or {}
    finished = done.get("report") is not None  # every export finished: the report was being written or printed
    if not finished:
        left = "no report was printed" + (f" and --json {json_path} was not written" if json_path else "")
    elif done.get("json"):
        left = f"the report was cut short while printing; --json {json_path} holds all of it"
    elif json_path:
        left = f"the report was cut short while printing, and --json {json_path} was not written"
    else:
        left = "the report was cut short while printing (--json FILE keeps all of it)"
    exports = "this run's exports" if finished else "the exports"
    if out is None:
        return f"{left}; {exports} were in a temporary folder, removed (pass --out DIR to keep them)"
    folders = _this_runs_folders(out, earlier or {})
    if not folders:
        return f"{left}; no export of this run finished ({out} holds none of them)"
    if finished:
        return (f"{left}; {exports} are kept under {out} ({', '.join(folders)}: each folder's manifest.json lists "
                "its artifacts)")
    return (f"{left}; the exports finished so far are kept under {out} ({', '.join(folders)}: each folder's "
            "manifest.json lists its artifacts, \"complete\": false where an export was cut short)")


if __name__ == "__main__":
    from fer_edge.console import run_script
    from fer_edge.utils import command_environment

    command_environment()  # as the fer-edge command: ONNX Runtime's telemetry off (a user's setting wins)
    sys.exit(run_script(main))  # a closed stdout (`| head`): exit 141 quietly, as fer-edge (1: a failure's)

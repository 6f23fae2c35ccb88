"""``fer-edge bench``, ``fer-edge devices`` and ``fer-edge report merge``: thin commands over
:mod:`fer_edge.benchmarks`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from fer_edge.cli import app
from fer_edge.cli.common import (console, err_console, gate_judged, handle_errors, is_tty, split_value, parse_batches,
                                  model_value, path_value, weight_gate_line)

report_app = typer.Typer(help="Work with bench reports.", no_args_is_help=True, add_completion=False)
app.add_typer(report_app, name="report")


# --- devices ---------------------------------------------------------------------------
def devices_table(env: dict):
    from rich.table import Table

    cpu = env["cpu"]
    title = (f"{env['hostname']}: {cpu['model']}, {cpu['physical_cores']} cores / {cpu['logical_cores']} threads"
             f" ({cpu['usable_cores']} usable), {cpu.get('isa')}, "
             f"{cpu['clock_mhz']:.0f} MHz" if cpu.get("clock_mhz") else
             f"{env['hostname']}: {cpu['model']}, {cpu['physical_cores']} cores")
    # (what the machine reports, markup-escaped: a device's full name may hold [...])
    t = Table(title=escape(title), caption=escape(f"{env['os']}, Python {env['python']}, {env.get('memory_gb')} GiB "
                                                  "memory"), show_lines=False)
    for col in ("Runtime", "Version", "Device", "Full name", "Detail"):
        t.add_column(col, overflow="fold")
    versions = env.get("libraries") or {}
    pkg = {"pytorch": "torch", "torchscript": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino",
           "coreml": "coremltools"}
    for name, info in env["runtimes"].items():
        version = versions.get(pkg.get(name, name)) or "-"
        if not info.get("available"):
            reason = escape(info.get("reason") or "?")
            t.add_row(escape(name), escape(version), "-", f"[yellow]unavailable: {reason}[/]", "")
            continue
        for i, d in enumerate(info.get("devices") or []):
            t.add_row(*map(escape, (name if i == 0 else "", version if i == 0 else "", d["name"],
                                    d.get("full_name") or "", d.get("detail") or "")))
    return t


@app.command("devices")
@handle_errors
def devices_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the environment as JSON on stdout."),
) -> None:
    """What this machine can run: runtimes, their devices, CPU, memory, OS and library versions."""
    from fer_edge.benchmarks.environment import describe_environment

    env = describe_environment()
    if as_json:
        typer.echo(json.dumps(env, indent=2))
        return
    console.print(devices_table(env))
    libs = ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)
    console.print(f"libraries: {libs}", markup=False)


# --- bench -----------------------------------------------------------------------------

def _threshold_overrides(**per_field):
    """PRECISION=VALUE overrides per threshold, applied over the export gate (defaults, or the shipped weight's)."""
    from fer_edge.parity import parse_overrides

    return parse_overrides(per_field) or None


def short_device(device: str | None) -> str:
    return "-" if device is None else device.removesuffix("ExecutionProvider")


def bench_table(report, width: int | None = None):
    """The rows as a rich table; narrower terminals get fewer columns (all of them are in the report files).

    The ``checkpoint fp32`` rows are the PyTorch reference."""
    from rich import box
    from rich.table import Table

    from fer_edge.benchmarks.report import artifact_tags, fmt_pct, fmt_size, model_labels, source_key

    width = width or console.width
    wide, medium = width >= 160, width >= 95
    models = model_labels(report.rows)
    tags = artifact_tags(report.rows)  # two files of one model, target and precision: which file
    several = len(models) > 1  # then each row names its model
    # (names and paths markup-escaped: a checkpoint or artifact file named x[b]y lost its [b])
    t = Table(title=escape(f"fer-edge bench: {', '.join(dict.fromkeys(models.values())) or report.reference['model']} "
                           f"({report.settings['n_images']} images of {report.settings['split']})"),
              box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    cols = [("Artifact", "l"), ("Runtime", "l"), ("Device", "l"), ("B", "r")]
    if wide:
        cols += [("Thr", "r"), ("Load ms", "r"), ("1st ms", "r")]
    cols += [("p50 ms", "r")]
    if wide:
        cols += [("p90 ms", "r")]
    if medium:
        cols += [("p99 ms", "r")]
    cols += [("img/s", "r"), ("Top-1", "r")]
    if wide:
        cols += [("F1", "r")]
    if medium:
        cols += [("Agree", "r")]
    if wide:
        cols += [("Flips", "r"), ("max|diff|", "r"), ("Size", "r")]
    cols += [("Status", "l")]
    for name, j in cols:  # the names fold, so that the numbers and the status stay whole in a narrow table
        names = name in ("Artifact", "Runtime", "Device")
        t.add_column(name, justify="right" if j == "r" else "left", overflow="fold" if names else "ellipsis",
                     no_wrap=not names)
    style = {"ok": "green", "parity-failed": "red", "failed": "red", "skipped": "yellow"}

    def f(v, d=2):
        return "-" if v is None else f"{v:.{d}f}"

    for r in report.rows:
        lat = r["latency_ms"] or {}
        cells = {
            "Artifact": escape((f"{models[source_key(r)]} " if several else "") + f"{r['target']} {r['precision']}"
                               + (f" ({tags[r['artifact']]})" if r.get("artifact") in tags else "")),
            "Runtime": escape(r["runtime"]), "Device": escape(short_device(r["device"])), "B": str(r["batch"]),
            "Thr": str(r["threads"] or "-"), "Load ms": f(r["load_ms"], 1), "1st ms": f(r["first_inference_ms"], 2),
            "p50 ms": f(lat.get("p50"), 3), "p90 ms": f(lat.get("p90"), 3), "p99 ms": f(lat.get("p99"), 3),
            "img/s": f(r["throughput_ips"], 0), "Top-1": fmt_pct(r["accuracy"]), "F1": f(r["macro_f1"], 3),
            "Agree": fmt_pct(r["agreement"]), "Flips": "-" if r["flips"] is None else str(r["flips"]),
            "max|diff|": f(r["max_abs_diff"], 4), "Size": fmt_size(r["size_bytes"]),
            "Status": f"[{style[r['status']]}]{r['status']}[/]",
        }
        t.add_row(*(cells[name] for name, _ in cols))
    return t


def row_reasons(report) -> list[str]:
    """One line per artifact x runtime x device whose rows are not ok: what happened."""
    from fer_edge.benchmarks.report import artifact_tags, model_labels, row_label

    labels, tags = model_labels(report.rows), artifact_tags(report.rows)
    out: list[str] = []
    for r in report.rows:
        if r["status"] != "ok" and r["reason"]:
            line = f"{r['status']}: {row_label(r, labels, tags)}: {r['reason']}"
            if line not in out:
                out.append(line)
    return out


def compute_limit_text(cl: dict | None) -> str:
    if not cl:
        return "compute limit: not estimated (no CPU row measured, or unknown CPU clock / SIMD level)"
    from fer_edge.benchmarks.stats import peak_text

    return (
        f"compute limit: fastest CPU row {cl['row']}: {cl['throughput_ips']:.0f} img/s at p50 x "
        f"{cl['macs_per_image'] / 1e6:.2f} MMAC/img = {cl['achieved_gflops']:.2f} GFLOP/s, {peak_text(cl)}"
        + ("" if cl["achieved_gflops"] > cl["peak_gflops"] else
           f" (at peak: {cl['min_time_per_image_us']:.2f} us/img)")
        + f". Peak assumption: {cl['assumption']}."
    )


def _report_state(out: Path, name: str = "report.json") -> tuple[int, int] | None:
    """What identifies the ``report.json`` (or ``name``) in ``out`` now (a new one is a new file: written
    atomically)."""
    try:
        st = (out / name).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def weight_gate_lines(report, where: str) -> list[str]:
    """One line per reference checkpoint whose shipped weight's own gate judged an artifact of that checkpoint:
    the precisions of its artifact rows that ran (nano's int8 gate is not claimed for its fp32-only rows, nor for
    another checkpoint's int8 rows benched beside them)."""
    judged_rows = [r for r in report.rows if not r.get("reference") and r["status"] in ("ok", "parity-failed")]
    refs = report.references or []
    if not refs:  # a report without per-reference records: its one source, judged by every row
        pairs = [(report.settings.get("thresholds_source"), {r["precision"] for r in judged_rows})]
    else:
        pairs = [(ref.get("thresholds_source"),
                  {r["precision"] for r in judged_rows if len(refs) == 1 or r.get("source_sha256") == ref.get("sha256")})
                 for ref in refs]
    lines = (weight_gate_line(gate_judged(source, judged), where) for source, judged in pairs)
    return [line for line in lines if line]


def _interrupted_note(out: Path, before: tuple[int, int] | None, written: list[str] | None) -> str:
    """What an interrupted bench left in ``out``. ``written``: the names of the files this run's own write put there
    (run_bench's ``on_written``; no PNG when the plot was not drawn), None when it did not finish: a report that
    appeared meanwhile is another run's (a second bench into the same --out), not taken for this one's by its
    file's identity. ``before``: :func:`_report_state` when it started, to tell that case from one left as it was."""
    if written is not None:
        return (f"after the report was written: {out}/ holds this run's {', '.join(written)}; "
                "the summary was not printed")
    now = _report_state(out)
    if now is None:
        return f"no report was written ({out}/ holds none)"
    try:
        when = json.loads((out / "report.json").read_text()).get("created_at") or "?"
    except (OSError, ValueError, AttributeError):
        when = "?"
    if now != before:
        return (f"no report was written by this run; the report.json in {out}/ (created {when}) was written "
                "meanwhile by another one")
    return (f"no new report was written; the earlier report in {out}/ (report.json created {when}) was left as "
            "it was")


def _finite_positive(value: float | None, option: str) -> float | None:
    """``value`` when it is a finite number > 0 (click's float type takes nan and inf)."""
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{option} must be a finite number > 0 (got {value})")
    return value


@app.command("bench")
@handle_errors
def bench_cmd(
    artifacts: Optional[List[Path]] = typer.Argument(
        None, metavar="ARTIFACT", parser=path_value,
        help="Export directories (their manifest.json is verified), manifests, artifact files "
             "(.onnx .xml .ts .mlpackage .pt), or a shipped model name (its checkpoint; a path of that name "
             "in the current folder wins). Default: the shipped model's artifacts."),
    reference: Optional[str] = typer.Option(
        None, "--reference", parser=model_value, metavar="CHECKPOINT",
        help="Reference checkpoint (path or shipped name). Default: the artifacts' source checkpoint."),
    data: Path = typer.Option(..., "--data", parser=path_value, metavar="PATH", help="FER2013 CSV or image-folder data set."),
    split: Optional[str] = typer.Option(
        None, "--split", parser=split_value, metavar="SPLIT", help="Labelled split to measure accuracy on (default: PublicTest, or val/test for folders)."),
    runtimes: Optional[List[str]] = typer.Option(
        None, "--runtimes", help="Comma-separated runtimes (default: every one). Valid: pytorch, torchscript, "
                                 "onnxruntime, openvino, coreml."),
    devices: Optional[List[str]] = typer.Option(
        None, "--devices", help="Comma-separated devices, e.g. cpu,cuda,CPU,GPU,CPU_AND_NE (default: every "
                                "device each runtime has here; 'cpu' selects the CPU of every runtime)."),
    batch: str = typer.Option("1,32", "--batch", help="Comma-separated batch sizes."),
    threads: Optional[int] = typer.Option(None, "--threads", min=0,
                                          help="Threads for every runtime (default or 0: physical cores)."),
    warmup: int = typer.Option(10, "--warmup", min=0, help="Untimed calls per row before timing."),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="Timed calls per row (overrides --seconds)."),
    seconds: float = typer.Option(2.0, "--seconds", callback=lambda v: _finite_positive(v, "--seconds"),
                                  help="Timing budget per row, in seconds (a finite number > 0)."),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Interleaved rounds the timing is split into."),
    n_images: Optional[int] = typer.Option(None, "--n-images", min=1,
                                           help="Images for accuracy and parity (default: the whole split)."),
    out: Path = typer.Option(Path("reports/bench"), "--out", parser=path_value, metavar="PATH", help="Report directory."),
    parity_gate: bool = typer.Option(True, "--parity-gate/--no-parity-gate",
                                     help="Exit non-zero when a row fails the parity thresholds."),
    min_agreement: Optional[List[str]] = typer.Option(
        None, "--min-agreement", metavar="PREC=VALUE",
        help="Parity: minimum top-1 agreement per precision, e.g. int8=0.97 (none disables). "
             "Defaults: the export gate's (fer_edge.parity.DEFAULT_THRESHOLDS)."),
    max_abs_diff: Optional[List[str]] = typer.Option(
        None, "--max-abs-diff", metavar="PREC=VALUE", help="Parity: maximum |logit difference|, e.g. fp32=1e-3."),
    max_kl: Optional[List[str]] = typer.Option(
        None, "--max-kl", metavar="PREC=VALUE", help="Parity: maximum mean KL divergence (nats)."),
    max_accuracy_drop: Optional[List[str]] = typer.Option(
        None, "--max-accuracy-drop", metavar="PREC=VALUE",
        help="Parity: maximum accuracy drop against the reference (fraction), e.g. int8=0.01."),
    seed: int = typer.Option(0, "--seed", help="Seed of the image subset."),
) -> None:
    """Latency, throughput, accuracy and parity of every artifact x runtime x device x batch size.

    Writes report.json, report.csv, report.md and latency_vs_accuracy.png into --out (a note names an
    earlier report they replace; a second bench into the same --out is refused while this one runs).
    Exit status 1 when a row failed (an artifact could not be loaded or run), when a row fails
    parity (unless --no-parity-gate) or when nothing can run; skipped rows (runtime, platform or
    device missing here) do not fail it.
    """
    from fer_edge.benchmarks.bench import check_outcome
    from fer_edge.cli.common import parse_csv_option
    from fer_edge.errors import OptionError

    try:
        from fer_edge.runtimes import RUNTIMES

        valid_runtimes = list(RUNTIMES)
    except ImportError:
        valid_runtimes = ["pytorch", "torchscript", "onnxruntime", "openvino", "coreml"]
    rt_list = parse_csv_option(runtimes, valid_runtimes, "runtime", option="--runtimes") or None
    dev_list = [d.strip() for item in (devices or []) for d in item.split(",") if d.strip()] or None
    empty = [d for d in devices or [] if not d.replace(",", "").strip()]
    if empty:  # `--devices ""` (a script's unset variable) is not "every device", nor one of several values
        raise OptionError(f"--devices was given an empty value ({', '.join(repr(str(d)) for d in empty)}); name "
                          "devices, e.g. cpu,cuda (leave --devices out for every device)")
    batches = parse_batches(batch)

    from fer_edge.utils import sigterm_as_interrupt

    before = _report_state(out)
    shown: list[str] = []
    written: list[str] | None = None  # the files this run's own write put in --out, once it finished

    def on_written(report) -> None:
        nonlocal written
        written = [p.name for p in report.files.values()]

    try:
        with sigterm_as_interrupt():  # (run_bench has its own; this one also covers the summary after it)
            report = _measure(artifacts, data, split, reference, rt_list, dev_list, batches, threads, warmup, iters,
                              seconds, rounds, n_images, seed, parity_gate, out, shown,
                              _threshold_overrides(min_agreement=min_agreement, max_abs_diff=max_abs_diff,
                                                   max_kl=max_kl, max_accuracy_drop=max_accuracy_drop), on_written)
            _summary(report, out, shown, parity_gate)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (run_bench turns it into KeyboardInterrupt), as in export
        typer.echo(f"interrupted: {_interrupted_note(out, before, written)}", err=True)
        raise typer.Exit(130) from None
    check_outcome(report, parity_gate)


def _measure(artifacts, data, split, reference, rt_list, dev_list, batches, threads, warmup, iters, seconds, rounds,
             n_images, seed, parity_gate, out, shown, overrides, on_written=None):
    """:func:`run_bench` under a progress bar; warnings before the measuring are printed at once (and added to
    ``shown``); ``on_written``: run_bench's, called once the report files are written."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fer_edge.benchmarks.bench import run_bench

    # (the description names artifact files: no markup)
    with Progress(TextColumn("[bold]bench[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}", markup=False), console=err_console, transient=True,
                  disable=not is_tty()) as bar:
        task = bar.add_task("starting", total=None)

        def progress(done: int, total: int, msg: str) -> None:
            bar.update(task, completed=done, total=total, description=msg)

        def early_warning(text: str) -> None:  # before the measuring: printed now, not again at the end
            shown.append(text)
            err_console.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)

        return run_bench(
            artifacts or None, data=data, split=split, reference=reference, runtimes=rt_list, devices=dev_list,
            batches=batches, threads=threads, warmup=warmup, iters=iters, seconds=seconds,
            rounds=rounds, n_images=n_images, seed=seed, threshold_overrides=overrides,
            parity_gate=parity_gate, out_dir=out, progress=progress, on_warning=early_warning,
            on_written=on_written,
        )


#: The table's name columns (they fold) and the width below which, shared among them, a row no longer says what
#: it measured (rich folds them to a few letters, then to nothing).
NAME_COLUMNS = ("Artifact", "Runtime", "Device")
MIN_NAMES_WIDTH = 3 * 6


def _narrow_table_note(table, out: Path) -> None:
    """A note on stderr when ``table`` cannot be shown whole at the console's width, as ``fer-edge predict`` says
    of its table: rich cuts numbers and statuses short (an ellipsis), or, in a very narrow table, folds the names
    to a few letters or to nothing (no row says what it measured), without a word."""
    import io

    from rich.console import Console
    from rich.measure import Measurement

    probe = Console(file=io.StringIO(), width=console.width, color_system=None)  # the table as it is printed
    probe.print(table)
    cut = "\u2026" in probe.file.getvalue()  # rich's ellipsis
    wide = probe.options.update(width=10_000)

    def widest(renderables) -> int:
        return max(Measurement.get(probe, wide, r).maximum for r in renderables)

    natural = Measurement.get(probe, wide, table).maximum
    names = sum(widest([c.header, *c.cells]) for c in table.columns if c.header in NAME_COLUMNS)
    if cut or console.width - (natural - names) < MIN_NAMES_WIDTH:  # what the numbers leave to the names
        why = "some cells are cut short" if cut else "the names are folded to a few letters, or hidden"
        err_console.print(f"note: the table does not fit in {console.width} columns (COLUMNS or the terminal): {why}; "
                          f"widen it, or read {out}/report.md", markup=False, highlight=False, soft_wrap=True)


def _summary(report, out: Path, shown: list[str], parity_gate: bool) -> None:
    """The table, the rows' reasons, notes, warnings not yet shown and the gate lines of a finished bench."""
    from fer_edge.benchmarks.bench import gate_failures

    table = bench_table(report)
    console.print(table)
    _narrow_table_note(table, out)
    for line in row_reasons(report):
        console.print(escape(line), highlight=False)
    counts = report.counts()
    console.print(", ".join(f"{n} {s}" for s, n in counts.items()) + f" rows; reports in {out}/: "
                  + ", ".join(p.name for p in report.files.values()), markup=False)  # (a path: no markup)
    console.print(compute_limit_text(report.compute_limit), highlight=False)
    for note in report.notes:  # on stderr, as every command's notes
        err_console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    for warning in report.warnings:
        if warning not in shown:
            err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    for gate_line in dict.fromkeys(weight_gate_lines(report, f"{out}/report.json")):
        console.print(gate_line, highlight=False, markup=False)  # (it names the report: a path)
    failures = gate_failures(report)
    if failures and not parity_gate:
        err_console.print(f"[yellow]warning:[/] {len(failures)} row(s) failed parity (gate off)", soft_wrap=True)


# --- report merge ------------------------------------------------------------------------
@report_app.command("merge")
@handle_errors
def merge_cmd(
    reports: List[Path] = typer.Argument(..., metavar="REPORT", parser=path_value,
                                         help="report.json files (or report directories) to compare."),
    out: Path = typer.Option(..., "--out", parser=path_value, metavar="PATH", help="Directory for merged.md, merged.csv, merged.json and the plot."),
) -> None:
    """Merge bench reports from several machines into one comparison (md + csv + json + plot).

    A report given twice is merged once (with a note); reports that measured different data (split, images,
    data fingerprint) get a warning: their accuracies are not comparable; so do reports taken with different
    settings (threads, batches, timing budget, rounds, warm-up) or fer-edge versions."""
    from fer_edge.utils import sigterm_as_interrupt

    before = _report_state(out, "merged.json")
    written: list[str] = []  # the files this merge's own write put in --out, once it finished
    try:
        with sigterm_as_interrupt():
            _merge(reports, out, lambda merged: written.extend(p.name for p in merged.files.values()))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM; merge_reports holds them over its writes: all four files or none
        typer.echo(f"interrupted: {_merge_interrupted_note(out, before, written or None)}", err=True)
        raise typer.Exit(130) from None


def _merge_interrupted_note(out: Path, before: tuple[int, int] | None, written: list[str] | None) -> str:
    """What an interrupted merge left in ``out``. ``written``: the names of the files its own write put there
    (merge_reports' ``on_written``), None when it did not finish; ``before``: :func:`_report_state` of merged.json
    when it started (a merged.json changed since without this merge's write is another run's)."""
    if written is not None:
        return (f"after the merged files were written: {out}/ holds this run's {', '.join(written)}; the summary "
                "was not printed")
    if _report_state(out, "merged.json") not in (None, before):
        return (f"no merged files were written by this run; the merged.json in {out}/ was written meanwhile by "
                "another one")
    return f"no merged files were written; {out}/ was left as it was"


def _merge(reports: List[Path], out: Path, on_written=None) -> None:
    from rich.table import Table

    from fer_edge.benchmarks.report import merge_reports

    merged = merge_reports(list(reports), out, on_written=on_written)
    n, rows = len(merged.machines), len(merged.rows)
    t = Table(title=f"{n} report{'s' * (n != 1)}, {rows} row{'s' * (rows != 1)}")
    t.add_column("#")
    t.add_column("Machine")
    t.add_column("Report")
    t.add_column("Rows", justify="right")
    for i, m in enumerate(merged.machines, 1):
        t.add_row(f"M{i}", escape(m["machine"]), escape(m["report"]),
                  str(sum(r["machine"] == m["machine"] for r in merged.rows)))
    console.print(t)
    console.print(f"wrote {', '.join(str(p) for p in merged.files.values())}", markup=False)
    for note in merged.notes:
        err_console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    for warning in merged.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)

"""Bench reports: the :class:`BenchReport` object, its four files, and merging reports of several machines.

Files in a report directory (each written atomically):

``report.json``               environment fingerprint, settings, reference, one object per row
                              (schema: :data:`fer_edge.benchmarks.schema.REPORT_SCHEMA`)
``report.csv``                one line per row, the latency distribution flattened
``report.md``                 a Markdown table ready for a README
``latency_vs_accuracy.png``   one point per measured row, the Pareto front (of the rows that passed the
                              parity gate) marked and labelled; parity-failed rows hollow
"""
from __future__ import annotations

import csv
import errno
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from fer_edge.benchmarks.schema import LATENCY_KEYS, REPORT_SCHEMA, SCHEMA_ID, validate
from fer_edge.errors import FerEdgeError
from fer_edge.plotting import wrap_title
from fer_edge.utils import TEXT_FILE, human_size, json_text, temp_beside

REPORT_FILES = ("report.json", "report.csv", "report.md", "latency_vs_accuracy.png")
# not the bench report's plot name: a merge into a bench report's folder (or a bench into a merge's) replaced the
# other's plot
MERGED_FILES = ("merged.json", "merged.csv", "merged.md", "merged_latency_vs_accuracy.png")

#: CSV columns (before the flattened latency ones come the identifying fields: the model and the
#: SHA-256 of the checkpoint the artifact came from first, so several models' rows stay apart).
CSV_COLUMNS = (
    "model", "source_sha256", "target", "precision", "runtime", "device", "batch", "status", "reason", "threads",
    "load_ms", "first_inference_ms", *(f"latency_{k}_ms" for k in LATENCY_KEYS), "throughput_ips",
    "peak_rss_mb", "accuracy", "macro_f1", "agreement", "max_abs_diff", "kl", "flips",
    "artifact", "size_bytes", "p50_spread_pct", "iters", "export_validation",
)


@dataclass
class BenchReport:
    """What :func:`fer_edge.benchmarks.bench.run_bench` returns; ``to_dict()`` is ``report.json``."""

    environment: dict
    settings: dict
    reference: dict
    rows: list[dict]
    compute_limit: dict | None = None
    notes: list[str] = field(default_factory=list)
    created_at: str = ""
    #: every reference checkpoint (one per source checkpoint of the artifacts); ``reference`` is the first
    references: list[dict] = field(default_factory=list)
    #: what the user must know about the inputs (e.g. artifacts that no manifest verified)
    warnings: list[str] = field(default_factory=list)
    fer_edge_version: str = ""
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def parity_failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "parity-failed"]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA_ID,
            "created_at": self.created_at,
            "fer_edge_version": self.fer_edge_version,
            "environment": self.environment,
            "settings": self.settings,
            "reference": self.reference,
            "references": list(self.references) or [self.reference],
            "compute_limit": self.compute_limit,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "rows": self.rows,
        }

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the four report files into ``out_dir`` together (:func:`write_report`); returns their paths. A plot
        that cannot be drawn is added to :attr:`warnings` (report.json is the measurement: it does not say so), and
        an earlier report the files replaced to :attr:`notes` (:func:`replaced_note`) once they are written."""
        self.out_dir = Path(out_dir)
        replaced = replaced_note(self.out_dir, REPORT_FILES)
        self.files = write_report(self.to_dict(), self.out_dir, warn=self.warnings.append)
        if replaced:  # said to whoever runs it, not in the files: they are this run's measurement
            self.notes.append(replaced)
        return self.files


# --- formatting helpers ----------------------------------------------------------
def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{digits}f}"
    return str(v)


fmt_size = human_size


def fmt_pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def p50(row: dict) -> float | None:
    lat = row.get("latency_ms")
    return None if not lat else lat.get("p50")


def source_key(row: dict) -> str:
    """The checkpoint a row's artifact came from: its sha256 (else its model name): rows of two models differ."""
    return str(row.get("source_sha256") or row.get("model") or "")


def model_labels(rows: Iterable[dict]) -> dict[str, str]:
    """``{source_key: label}``: the model name, with ``@sha256[:8]`` where two checkpoints share a name."""
    names: dict[str, str] = {}
    for r in rows:
        names.setdefault(source_key(r), str(r.get("model") or "?"))
    count: dict[str, int] = {}
    for name in names.values():
        count[name] = count.get(name, 0) + 1
    return {k: (f"{n} @{k[:8]}" if count[n] > 1 and k and k != n else n) for k, n in names.items()}


def artifact_tags(rows: Iterable[dict]) -> dict[str, str]:
    """``{artifact path: tag}`` for the artifacts that would otherwise read alike: two files of one checkpoint,
    target and precision (say the int8 ONNX of two export folders, calibrated differently). The tag is the
    shortest end of the path that tells the files apart (``a/small_int8.onnx``)."""
    groups: dict[tuple, set[str]] = {}
    for r in rows:
        if r.get("artifact"):
            groups.setdefault((source_key(r), r.get("target"), r.get("precision")), set()).add(str(r["artifact"]))
    tags: dict[str, str] = {}
    for paths in groups.values():
        if len(paths) < 2:
            continue
        parts = {p: Path(p).parts for p in paths}
        for k in range(1, max(len(v) for v in parts.values()) + 1):
            ends = {p: Path(*v[-k:]).as_posix() for p, v in parts.items()}
            if len(set(ends.values())) == len(ends):
                break
        tags.update(ends)
    return tags


def row_label(row: dict, labels: dict[str, str] | None = None, tags: dict[str, str] | None = None) -> str:
    """``fer_nano: onnx int8 / onnxruntime / CPUExecutionProvider``: how plots and messages name a row.

    The model comes first (from ``labels``, see :func:`model_labels`, else the row's ``model``); an artifact in
    ``tags`` (:func:`artifact_tags`) has its tag after the precision.
    """
    model = (labels or {}).get(source_key(row)) or row.get("model")
    head = f"{model}: " if model else ""
    tag = (tags or {}).get(str(row.get("artifact")))
    what = f"{row['target']} {row['precision']}" + (f" ({tag})" if tag else "")
    return f"{head}{what} / {row['runtime']} / {row.get('device') or '-'}"


def status_text(row: dict) -> str:
    if row["status"] == "ok":
        return "ok"
    return f"{row['status']}: {row.get('reason') or ''}".rstrip(": ")


def flatten_row(row: dict) -> dict:
    out = {k: row.get(k) for k in CSV_COLUMNS if not k.startswith("latency_")}
    lat = row.get("latency_ms") or {}
    for k in LATENCY_KEYS:
        out[f"latency_{k}_ms"] = lat.get(k)
    return {k: out.get(k) for k in CSV_COLUMNS}


def rows_to_csv(rows: Iterable[dict], extra_first: tuple[str, ...] = ()) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=[*extra_first, *CSV_COLUMNS], lineterminator="\n")
    w.writeheader()
    for r in rows:
        flat = flatten_row(r)
        w.writerow({**{k: r.get(k) for k in extra_first}, **{k: ("" if v is None else v) for k, v in flat.items()}})
    return buf.getvalue()


_MD_HEADER = ("Model", "Target", "Precision", "Runtime", "Device", "Batch", "p50 ms", "p90 ms", "p99 ms", "img/s",
              "Top-1", "Macro-F1", "Agreement", "Flips", "Size", "Status")


def _md_cells(r: dict, labels: dict[str, str], tags: dict[str, str] | None = None) -> list[str]:
    lat = r.get("latency_ms") or {}
    tag = (tags or {}).get(str(r.get("artifact")))
    return [
        labels.get(source_key(r)) or str(r.get("model") or "-"), r["target"] + (f" ({tag})" if tag else ""),
        r["precision"], r["runtime"],
        r.get("device") or "-", str(r["batch"]),
        _fmt(lat.get("p50"), 3), _fmt(lat.get("p90"), 3), _fmt(lat.get("p99"), 3),
        _fmt(r.get("throughput_ips"), 0), fmt_pct(r.get("accuracy")), _fmt(r.get("macro_f1"), 3),
        fmt_pct(r.get("agreement")), _fmt(r.get("flips")), fmt_size(r.get("size_bytes")),
        status_text(r).replace("|", "\\|"),
    ]


def md_table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def environment_line(env: dict) -> str:
    from fer_edge.benchmarks.environment import isa_text

    cpu = env.get("cpu") or {}
    libs = env.get("libraries") or {}
    versions = ", ".join(f"{k} {v}" for k, v in libs.items() if v and k in ("torch", "onnxruntime", "openvino",
                                                                              "coremltools"))
    mem = env.get("memory_gb")
    return (f"{env.get('hostname', '?')}: {cpu.get('model', '?')}, {cpu.get('physical_cores', '?')} cores "
            f"({cpu.get('logical_cores', '?')} threads), {isa_text(env)}, {mem if mem is not None else '?'} GiB, "
            f"{env.get('os', '?')}; {versions}")


def _reference_line(ref: dict) -> str:
    return (f"`{ref.get('model')}` checkpoint `{Path(ref.get('path', '')).name}` "
            f"(sha256 {str(ref.get('sha256', ''))[:12]}), "
            + (f"{ref['macs_per_image'] / 1e6:.2f} M MACs/image" if ref.get("macs_per_image") else "MACs unknown"))


def report_markdown(report: dict) -> str:
    s = report["settings"]
    refs = report.get("references") or [report["reference"]]
    labels = model_labels(report["rows"])
    tags = artifact_tags(report["rows"])
    ref_lines = ([f"- Reference: {_reference_line(refs[0])}"] if len(refs) == 1 else
                 [f"- References (each artifact against the checkpoint it came from): "
                  + "; ".join(_reference_line(r) for r in refs)])
    lines = [
        "## fer-edge bench",
        "",
        f"- Machine: {environment_line(report['environment'])}",
        *ref_lines,
        f"- Data: {s['n_images']} images of split `{s['split']}`; batches {', '.join(map(str, s['batches']))}; "
        f"threads {s['threads']}; warm-up {s['warmup']} calls; "
        + (f"{s['iters']} timed iterations" if s.get("iters") else f"{s.get('seconds')} s")
        + f" per row over {s['rounds']} interleaved rounds",
        "",
        md_table(_MD_HEADER, (_md_cells(r, labels, tags) for r in report["rows"])),
        "",
        "Latency is per call of the given batch size; img/s = batch / mean latency. Top-1 and Macro-F1 are on "
        "the labelled split, agreement and flips against the PyTorch FP32 reference on the same inputs.",
    ]
    cl = report.get("compute_limit")
    if cl:
        from fer_edge.benchmarks.stats import peak_text

        lines += ["", f"Compute limit: {cl['row']}: {cl['achieved_gflops']:.2f} GFLOP/s achieved, "
                      f"{peak_text(cl)}. {cl['assumption']}."]
    for warning in report.get("warnings") or []:
        lines += ["", f"Warning: {warning}"]
    for note in report.get("notes") or []:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


# --- the plot ----------------------------------------------------------------------
#: Characters per title line: a title naming several models ran past the 9-inch figure's edges and was cut, so titles
#: are wrapped to about the figure's width at their font size (10 pt).
TITLE_WIDTH = 95


def plot_latency_vs_accuracy(rows: list[dict], path: Path, title: str, color_key: str = "runtime",
                             machine_names: dict[str, str] | None = None) -> Path:
    """Scatter p50 latency (log x) against top-1; one marker per batch size; Pareto front per batch size.

    Points on a front are circled and labelled (``machine_names`` shortens merged reports' machines).
    Only rows :func:`~fer_edge.benchmarks.stats.pareto_eligible` accepts (parity gate passed, or
    no verdict: the reference) can be on a front; rows that failed the gate are drawn hollow,
    and the legend says they are excluded from it. Written as PNG at ``path`` atomically; a plot that cannot be
    drawn raises (:class:`~fer_edge.errors.PlotError` when matplotlib cannot be imported).
    """
    from fer_edge.plotting import save_png

    return save_png(latency_accuracy_figure(rows, title, color_key, machine_names), path)


def latency_accuracy_figure(rows: list[dict], title: str, color_key: str = "runtime",
                            machine_names: dict[str, str] | None = None):
    """The Figure of :func:`plot_latency_vs_accuracy`, on its own Agg canvas (:mod:`fer_edge.plotting`: no pyplot,
    the caller's matplotlib backend left alone)."""
    from fer_edge.benchmarks.stats import pareto_eligible, pareto_front

    pts = [r for r in rows if p50(r) is not None and r.get("accuracy") is not None]
    models = model_labels(rows)
    several = len(models) > 1  # rows of several models: each point names its model

    def color_of(r: dict) -> str:
        c = str(r.get(color_key))
        if color_key == "runtime" and r.get("precision"):  # an int8 point is told from its fp32 one off the front
            c = f"{c} {r['precision']}"
        return f"{models[source_key(r)]} / {c}" if several and color_key != "machine" else c

    from fer_edge.plotting import colormap, subplots

    fig, ax = subplots(figsize=(9, 6), dpi=110)
    from matplotlib.lines import Line2D  # (after subplots, which first imports matplotlib with MPLBACKEND aside)

    markers = ["o", "s", "^", "D", "v", "P", "X"]
    batches = sorted({r["batch"] for r in pts})
    colors = legend_order({color_of(r) for r in pts}, machine_names)
    cmap = colormap("tab10" if len(colors) <= 10 else "tab20")
    ncol = 10 if len(colors) <= 10 else 20
    for r in pts:
        color = cmap(colors.index(color_of(r)) % ncol)
        marker = markers[batches.index(r["batch"]) % len(markers)]
        if pareto_eligible(r):
            ax.scatter(p50(r), r["accuracy"] * 100, s=46, alpha=0.85, marker=marker, color=color,
                       edgecolors="none")
        else:  # failed the parity gate: hollow, never on the front
            ax.scatter(p50(r), r["accuracy"] * 100, s=46, alpha=0.85, marker=marker, facecolors="none",
                       edgecolors=color, linewidths=1.5)
    if pts:  # the y range is final before labels are placed, so a label can be kept inside it
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, min(hi, 100.5))
    lo, hi = ax.get_ylim()
    n_label = 0
    for b in batches:
        group = [r for r in pts if r["batch"] == b and pareto_eligible(r)]
        front = [group[i] for i in pareto_front([p50(r) for r in group], [r["accuracy"] for r in group])]
        ax.plot([p50(r) for r in front], [r["accuracy"] * 100 for r in front], "--", color="gray", lw=1,
                drawstyle="steps-post", zorder=0)
        for r in front:
            ax.scatter(p50(r), r["accuracy"] * 100, s=160, facecolors="none", edgecolors="black", lw=1.2)
            device = (r.get("device") or "-").removesuffix("ExecutionProvider")
            label = f"{r['target']} {r['precision']} {r['runtime']}/{device} b{b}"
            if several:
                label = f"{models[source_key(r)]} {label}"
            if r.get("machine"):
                label += f" {(machine_names or {}).get(r['machine'], r['machine'])}"
            dy = (8, -14, 20, -26)[n_label % 4]  # stagger labels of nearby points
            if r["accuracy"] * 100 > lo + 0.8 * (hi - lo):  # near the top: below the point, never over the title
                dy = -abs(dy) - 4
            n_label += 1
            ax.annotate(label, (p50(r), r["accuracy"] * 100), textcoords="offset points", xytext=(6, dy),
                        fontsize=7, arrowprops={"arrowstyle": "-", "color": "gray", "lw": 0.5})
    names = machine_names or {}
    handles = [Line2D([], [], ls="", marker="o", color=cmap(i % ncol),
                      label=f"{names[c]}: {c}" if c in names else c) for i, c in enumerate(colors)]
    # black: no series colour (tab10's gray is one) is mistaken for a batch size
    handles += [Line2D([], [], ls="", marker=markers[i % len(markers)], color="black", label=f"batch {b}")
                for i, b in enumerate(batches)]
    handles += [Line2D([], [], ls="--", marker="o", mfc="none", mec="black", color="gray",
                       label="Pareto front (per batch; parity-passed rows only)")]
    if any(not pareto_eligible(r) for r in pts):
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="gray", mew=1.5,
                              label="parity-failed (hollow): excluded from the Pareto front"))
    if pts:  # no points, no legend: its one entry would be a Pareto front that is not there
        ax.legend(handles=handles, fontsize=7, loc="best")
    finish_latency_axes(fig, ax, title, bool(pts),  # a log axis only when there are points
                        f"p50 latency per call (ms{', log scale' if pts else ''})", "top-1 accuracy (%)")
    return fig


def legend_order(keys, machine_names: dict[str, str] | None = None) -> list[str]:
    """The plot's colour keys in legend order: merged reports' machines as numbered (M1, M2, ...: the order the
    reports were given), anything else alphabetically."""
    order = {m: i for i, m in enumerate(machine_names or {})}
    return sorted(keys, key=lambda k: (order.get(k, len(order)), k))


def finish_latency_plot(fig, ax, path: Path, title: str, has_points: bool, xlabel: str, ylabel: str) -> Path:
    """:func:`finish_latency_axes`, then the figure saved as PNG at ``path`` atomically."""
    from fer_edge.plotting import save_png

    finish_latency_axes(fig, ax, title, has_points, xlabel, ylabel)
    return save_png(fig, path)


def finish_latency_axes(fig, ax, title: str, has_points: bool, xlabel: str, ylabel: str) -> None:
    """Log latency axis labelled in plain milliseconds (or a "no measured rows" note), labels, the title wrapped
    to the figure's width (:data:`TITLE_WIDTH`), grid, layout. Call once everything is plotted: the ticks
    labelled depend on the axis' range."""
    if has_points:
        ax.set_xscale("log")
        plain_log_ticks(ax)
    else:
        ax.text(0.5, 0.5, "no measured rows", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(wrap_title(title, TITLE_WIDTH), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()


def _nice_ticks(lo: float, hi: float) -> list[float]:
    """The values 1..9 x 10^n in ``[lo, hi]``: where a log axis has its major and minor ticks."""
    out = []
    for n in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        out += [k * 10.0 ** n for k in range(1, 10) if lo <= k * 10.0 ** n <= hi]
    return out


def plain_ms(x: float) -> str:
    """A tick value as a plain number: ``0.2``, ``1``, ``30``, ``2000`` (not 2x10^-1 or 10^0)."""
    return f"{x:.6g}"


def plain_log_ticks(ax) -> None:
    """Label the log x axis of ``ax`` with plain numbers (:func:`plain_ms`), minor ticks too while the range is
    short: every one (2..9) within a decade, 2 and 5 within two; above that the decades alone. matplotlib's default
    wrote 4x10^-1, 6x10^-1 in a short range and only 10^-1, 10^0, 10^1 in a longer one.

    A range so short that it holds fewer than two of the ticks (points within a few percent of each other) is
    widened to the ticks either side of it, so the axis always has numbers on it."""
    from matplotlib.ticker import FuncFormatter

    lo, hi = ax.get_xlim()
    if lo > 0 and hi > lo and len(_nice_ticks(lo, hi)) < 2:
        below = max(t for t in _nice_ticks(lo / 10, lo))
        above = min(t for t in _nice_ticks(hi, hi * 10))
        ax.set_xlim(below, above)
    axis = ax.xaxis

    def minor(x: float, pos=None) -> str:
        vlo, vhi = sorted(axis.get_view_interval())
        if x <= 0 or vlo <= 0:
            return ""
        decades = math.log10(vhi / vlo)
        digit = round(x / 10.0 ** math.floor(math.log10(x) + 1e-9))  # 0.3 -> 3
        keep = range(2, 10) if decades <= 1.05 else (2, 5) if decades <= 2.05 else ()
        return plain_ms(x) if digit in keep else ""

    axis.set_major_formatter(FuncFormatter(lambda x, pos=None: plain_ms(x) if x > 0 else ""))
    axis.set_minor_formatter(FuncFormatter(minor))


# --- writing and reading --------------------------------------------------------------
def write_report(report: dict, out_dir: str | Path, warn: Callable[[str], None] | None = None) -> dict[str, Path]:
    """The four files of ``report`` into ``out_dir``, written together (:func:`write_together`); returns the paths
    written. A plot that cannot be drawn is a warning (``warn``, else stderr): the PNG is then left out, and no
    earlier run's PNG stays beside the new files."""
    errors = validate(report, REPORT_SCHEMA)
    if errors:  # a bug in fer-edge, not in the user's input
        raise FerEdgeError("bench report does not match its schema: " + "; ".join(errors[:5]))
    out = check_out_dir(out_dir)
    models = ", ".join(dict.fromkeys(model_labels(report["rows"]).values())) or report["reference"].get("model")
    title = (f"fer-edge bench: {models} on {report['environment'].get('hostname')} "
             f"({(report['environment'].get('cpu') or {}).get('model')})")
    texts = {"report.json": json_text(report), "report.csv": rows_to_csv(report["rows"]),
             "report.md": report_markdown(report)}
    return write_together(out, texts, "latency_vs_accuracy.png",
                          lambda path: plot_latency_vs_accuracy(report["rows"], path, title), warn)


def write_together(out: Path, texts: dict[str, str], png: str, draw: Callable[[Path], Path],
                   warn: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Write a report's files into ``out`` as one group: each text file (``texts``: name -> content) and the plot
    (``draw(path)`` writes the PNG named ``png`` at ``path``) first under a temporary name beside it, then all
    renamed into place one after the other, so that a failure (or an interrupt: callers hold them over this, see
    :func:`fer_edge.utils.interrupts_deferred`) before the renames leaves every earlier file as it was, not the
    first files new and the rest a run older. A plot that cannot be drawn is a warning (``warn``, else stderr) and
    any earlier PNG is removed (:func:`fer_edge.plotting.draw_or_warn`): the results are what was asked for.
    Returns ``{name: path}`` of the files written, in the order given, the PNG last (when drawn)."""
    from fer_edge.plotting import draw_or_warn

    out.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}  # name -> its temporary path
    plot_tmp = temp_beside(out / png)
    try:
        for name, text in texts.items():
            staged[name] = temp_beside(out / name)
            try:
                staged[name].write_text(text, **TEXT_FILE)
            except OSError as e:  # a full disk names the temporary file, or none: name the report's file
                raise OSError(e.errno, e.strerror or str(e), str(out / name)) from None
        if draw_or_warn(lambda: draw(plot_tmp), out / png, warn) is not None:
            staged[png] = plot_tmp
        for name in staged:  # checked again just before: a folder made there since the start would stop a rename
            if (out / name).is_dir() and not (out / name).is_symlink():
                raise IsADirectoryError(errno.EISDIR, "is a folder: a file is not written over it", str(out / name))
        for name, tmp in staged.items():
            os.replace(tmp, out / name)
    finally:  # what was not renamed (an error, an interrupt): no debris left
        for tmp in {*staged.values(), plot_tmp}:
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink()
    return {name: out / name for name in staged}


def replaced_note(out: Path, names: Iterable[str], what: str = "report") -> str | None:
    """One line naming the earlier files among ``names`` (``what``: a report's or a merge's) in ``out`` that writing
    them there replaces, with what their JSON file says of itself (when it was created, how many rows, of how many
    reports); None when there are none. Read leniently: a damaged JSON file is said to be unreadable."""
    import json

    names = list(names)
    found = [n for n in names if (out / n).is_file()]
    if not found:
        return None
    head = next((n for n in names if n.endswith(".json")), names[0])
    said = ""
    if head in found:
        try:
            data = json.loads((out / head).read_text(encoding="utf-8"))
            rows, machines = data.get("rows"), data.get("machines")
            parts = [f"created {data['created_at']}" if data.get("created_at") else "",
                     f"of {len(machines)} report{'s' * (len(machines) != 1)}" if isinstance(machines, list) else "",
                     f"{len(rows)} row{'s' * (len(rows) != 1)}" if isinstance(rows, list) else ""]
            said = ", ".join(x for x in parts if x)
        except (OSError, ValueError, UnicodeDecodeError, AttributeError, TypeError):
            said = "unreadable"
        said = f" ({head} {said})" if said else ""
    return f"replaced the earlier {what} in {out}/{said}: {', '.join(found)}"


def check_out_dir(out_dir: str | Path, names: Iterable[str] = REPORT_FILES) -> Path:
    """``out_dir`` as a Path, or a FerEdgeError when it cannot be a report directory (checked before any work:
    see :func:`fer_edge.utils.check_writable_dir`), or when one of the report's file ``names`` there is taken by a
    folder (or anything else that is not a file): a bench found that out after measuring everything, with its
    first files already replaced."""
    from fer_edge.utils import check_writable_dir

    out = check_writable_dir(out_dir, "--out", FerEdgeError)
    for name in names:
        p = out / name
        if p.is_symlink() or not p.exists():  # a link is replaced by the file, whatever it points to
            continue
        if not p.is_file():
            what = "a folder" if p.is_dir() else "not a regular file"
            raise FerEdgeError(f"--out {out}: {p} is {what}, and the report writes its {name} there: move it "
                               "away or choose another --out")
    return out


def load_report(path: str | Path) -> dict:
    """Read and check a ``report.json`` (or a report directory holding one)."""
    from fer_edge.utils import read_json_file

    p, report = read_json_file(path, "report.json", "JSON bench report", FerEdgeError, strict=True)
    errors = validate(report, REPORT_SCHEMA)
    if errors:
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise FerEdgeError(f"{p}: not a fer-edge bench report: {'; '.join(errors[:3])}{more}")
    return report


# --- merging ---------------------------------------------------------------------------
@dataclass
class MergedReport:
    machines: list[dict]
    rows: list[dict]
    files: dict[str, Path] = field(default_factory=dict)
    #: what a reader of the comparison must know (the reports measured different data)
    warnings: list[str] = field(default_factory=list)
    #: what the merge did (a report given twice was merged once)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"schema": "fer-edge-bench-merge/1", "machines": self.machines, "rows": self.rows,
                "warnings": list(self.warnings), "notes": list(self.notes)}


def _row_key(r: dict) -> tuple:
    """What makes two rows (of two machines) the same measurement: the model (its source checkpoint), target,
    precision, runtime, device and batch size."""
    return (source_key(r), r["target"], r["precision"], r["runtime"], r.get("device") or "", r["batch"])


def report_data(report: dict) -> dict:
    """What a report's accuracy figures were measured on, from its settings: ``data`` (the path given),
    ``split``, ``n_images``, ``split_size``, ``data_sha256`` (the split's fingerprint; None in reports that
    did not record it) and ``seed`` (which subset, when ``n_images`` < ``split_size``)."""
    s = report.get("settings") or {}
    return {k: s.get(k) for k in ("data", "split", "n_images", "split_size", "data_sha256", "seed")}


def data_text(d: dict) -> str:
    """``56 images of `val` of `fer2013.csv.gz` (data sha256 1a2b3c4d5e6f)``; a subset says its seed."""
    subset = _is_subset(d)
    sha = d.get("data_sha256")
    extra = ([f"seed-{d.get('seed')} subset of {d['split_size']}"] if subset else []) + [
        f"data sha256 {str(sha)[:12]}" if sha else "no data fingerprint recorded"]
    return (f"{d.get('n_images', '?')} images of `{d.get('split') or '?'}`"
            + (f" of `{Path(str(d['data'])).name}`" if d.get("data") else "") + f" ({'; '.join(extra)})")


def _data_identity(d: dict) -> tuple:
    """The split, the number of images and which subset of it (the seed, when a subset)."""
    return (d.get("split"), d.get("n_images"), d.get("seed") if _is_subset(d) else None)


def _is_subset(d: dict) -> bool:
    """Whether a report measured part of its split (then its seed says which part)."""
    return d.get("split_size") is not None and d.get("n_images") is not None and d["n_images"] < d["split_size"]


def _same_data(a: dict, b: dict) -> bool:
    """Whether two reports' accuracies are comparable: the same split, images and subset, of the same data (its
    fingerprint where both recorded one, else its file name)."""
    if _data_identity(a) != _data_identity(b):
        return False
    if a.get("data_sha256") and b.get("data_sha256"):
        return a["data_sha256"] == b["data_sha256"]
    return Path(str(a.get("data") or "")).name == Path(str(b.get("data") or "")).name


def data_warning(machines: list[dict]) -> str | None:
    """One warning line when the merged reports measured different data (their accuracies are then not
    comparable), naming each report's data; None when they all measured the same."""
    if all(_same_data(machines[0]["data"], m["data"]) for m in machines[1:]):
        return None
    return ("the reports measured different data ("
            + "; ".join(f"M{i}: {data_text(m['data'])}" for i, m in enumerate(machines, 1))
            + "): their accuracy figures (Top-1, Macro-F1, agreement, flips) are not comparable; the p50 table "
              "gives each report's Top-1")


#: The settings that change what a report's figures mean: reports that differ in them are compared with a warning.
MERGE_SETTINGS = ("threads", "batches", "warmup", "iters", "seconds", "rounds")


def report_settings(report: dict) -> dict:
    """The timing settings (:data:`MERGE_SETTINGS`) a report was taken with, its ``fer_edge_version``, and
    ``threads_default``: whether its threads were the bench's default on that machine (its physical cores the
    process may use, as ``fer_edge.benchmarks.environment.default_threads`` gives them)."""
    from fer_edge.benchmarks.environment import default_threads

    s = report.get("settings") or {}
    default = default_threads((report.get("environment") or {}).get("cpu") or {})  # 0: the report does not say
    return {**{k: s.get(k) for k in MERGE_SETTINGS}, "fer_edge_version": report.get("fer_edge_version"),
            "threads_default": bool(default) and s.get("threads") == default}


def settings_text(s: dict) -> str:
    """``fer-edge 0.3.0; threads 1, batches 1,32, 2 s per row in 5 rounds, warmup 10``."""
    batches = ",".join(str(b) for b in s.get("batches") or []) or "?"
    timing = (f"{s['iters']} iters per row" if s.get("iters") is not None else
              f"{s['seconds']:g} s per row" if isinstance(s.get("seconds"), (int, float)) else "? s per row")
    return (f"fer-edge {s.get('fer_edge_version') or '?'}; threads {s.get('threads', '?')}, batches {batches}, "
            f"{timing} in {s.get('rounds', '?')} rounds, warmup {s.get('warmup', '?')}")


def settings_warning(machines: list[dict]) -> str | None:
    """One warning line when the merged reports were taken with different timing settings (threads, batches,
    timing budget, rounds, warm-up) or fer-edge versions, naming what differs and each report's value; None when
    they all agree (or there is one report)."""
    keys = [*MERGE_SETTINGS, "fer_edge_version"]
    if all(m["settings"].get("threads_default") for m in machines):
        keys.remove("threads")  # each machine on all its cores (the default): machines differ in cores, as compared
    differ = [k for k in keys if any(m["settings"].get(k) != machines[0]["settings"].get(k) for m in machines[1:])]
    if not differ:
        return None

    def value(v):
        return ",".join(str(x) for x in v) if isinstance(v, list) else str(v)

    names = {"fer_edge_version": "fer-edge version"}
    return ("the reports were taken with different settings ("
            + "; ".join(f"{names.get(k, k)}: " + ", ".join(f"M{i} {value(m['settings'].get(k))}"
                                                          for i, m in enumerate(machines, 1)) for k in differ)
            + "): their latencies and throughputs are not measured alike")


def merge_reports(paths: list[str | Path], out_dir: str | Path,
                  on_written: Callable[[MergedReport], None] | None = None) -> MergedReport:
    """One comparison (md + csv + json + plot) of reports taken on several machines.

    Rows are keyed by machine (``hostname (CPU)`` from each report's environment); further
    reports of the same machine are labelled ``hostname (CPU) #2``, ``#3``... in the order given
    (merged.md gives each report's path and creation time). A report given twice (the same file,
    or a file of identical content) is merged once, with a note. Rows of different models (source
    checkpoints) are different rows; a report without ``source_sha256`` per row counts its rows
    as its reference's. Each report's data (split, images, fingerprint) is kept per machine, and
    reports of different data get a warning: their accuracies are not comparable.

    The four files (:data:`MERGED_FILES`) are written together (:func:`write_together`), Ctrl-C and SIGTERM held
    over the writes: they are all this merge's or all as they were. A plot that cannot be drawn is a warning in
    the result's ``warnings`` (and no earlier plot is left beside the new files). ``on_written`` is called with the
    result once its files are written (before an interrupt held over the writes is raised).
    """
    from fer_edge.benchmarks.environment import kernel_warnings, machine_label
    from fer_edge.utils import interrupts_deferred, json_digest

    if not paths:
        raise FerEdgeError("report merge needs at least one report.json")
    out = check_out_dir(out_dir, MERGED_FILES)
    machines: list[dict] = []
    rows: list[dict] = []
    notes: list[str] = []
    seen: dict[str, int] = {}
    given: dict[tuple[str, str], tuple[int, str]] = {}  # (resolved file | content sha256) -> (M number, path)
    for path in paths:
        rep = load_report(path)
        p = Path(path) / "report.json" if Path(path).is_dir() else Path(path)
        # the same content by its parsed JSON, not its bytes: a copy re-indented, with CRLF or a trailing newline
        # is still the same measurement
        ids = (("file", str(p.resolve())), ("content", json_digest(rep)))
        dup = next((k for k in ids if k in given), None)
        if dup is not None:
            n, first = given[dup]
            same = "the same file as" if dup[0] == "file" else "identical to"
            notes.append(f"{path} is {same} {first} (M{n}): merged once")
            continue
        for k in ids:
            given[k] = (len(machines) + 1, str(path))
        label = machine_label(rep["environment"], [m["environment"] for m in machines])
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} #{seen[label]}"
        machines.append({"machine": label, "report": str(path), "created_at": rep["created_at"],
                         "fingerprint": rep["environment"].get("fingerprint"),
                         "environment": rep["environment"], "data": report_data(rep), "reference": rep["reference"],
                         "references": rep.get("references") or [rep["reference"]],
                         "settings": report_settings(rep)})
        ref = rep["reference"]
        for r in rep["rows"]:
            # the reference's model and sha256 only for a report older than these keys: a row whose source is not
            # known (None: an artifact with no manifest, a file that cannot be read) is not the reference's
            rows.append({"machine": label, **r, "model": r["model"] if "model" in r else ref.get("model"),
                         "source_sha256": r["source_sha256"] if "source_sha256" in r else ref.get("sha256")})
    order = {m["machine"]: i for i, m in enumerate(machines)}
    rows.sort(key=lambda r: (_row_key(r), order[r["machine"]]))
    warning = data_warning(machines)
    other = settings_warning(machines)
    other = [w for w in (other, *kernel_warnings(machines, rows)) if w]  # and rows that ran other kernels per machine
    warnings = [w for w in (warning, *other) if w]

    merged = MergedReport(machines, rows, warnings=warnings, notes=notes)
    texts = {"merged.json": json_text(merged.to_dict()), "merged.csv": rows_to_csv(rows, extra_first=("machine",)),
             "merged.md": merged_markdown(machines, rows, notes, warning, other)}
    title = f"fer-edge bench: {len(machines)} reports"
    if warning:  # said on the image too: a Pareto front across machines then mixes accuracies of different images
        title += " of different data: their accuracies are not comparable"
    names = {m["machine"]: f"M{i}" for i, m in enumerate(machines, 1)}
    with interrupts_deferred():  # the four files are written together: an interrupt waits for the last one
        replaced = replaced_note(out, MERGED_FILES, "merged report")
        merged.files = write_together(out, texts, "merged_latency_vs_accuracy.png",
                                      lambda path: plot_latency_vs_accuracy(rows, path, title, color_key="machine",
                                                                            machine_names=names),
                                      merged.warnings.append)  # (after merged.json: it says what was merged)
        if replaced:  # said to whoever runs it, not in the files
            merged.notes.append(replaced)
        if on_written is not None:
            on_written(merged)
    return merged


def _p50_lines(rows: list[dict], names: list[str]) -> tuple[list[tuple], dict[tuple, dict]]:
    """The merged p50 table's lines: ``(keys, by)``, ``by[(key, machine)]`` the row a machine has on a line.

    Rows of one :func:`_row_key` share a line across machines. A machine with several rows of a key (two files
    of one checkpoint, target and precision) gets a line per row; another machine's row of that key joins the
    line of the file with its artifact's sha256 (the same file benched on both), else the first line it has no
    row on yet.
    """
    keys: list[tuple] = []
    by: dict[tuple, dict] = {}
    grouped: dict[tuple, dict[str, list[dict]]] = {}
    for r in rows:
        grouped.setdefault(_row_key(r), {}).setdefault(r["machine"], []).append(r)
    for base, per_machine in grouped.items():
        lines: list[dict[str, dict]] = []
        for machine in names:
            left = []
            for r in per_machine.get(machine, []):  # first the rows whose file is on a line already
                line = next((ln for ln in lines if machine not in ln and r.get("sha256")
                             and any(o.get("sha256") == r["sha256"] for o in ln.values())), None)
                if line is None:
                    left.append(r)
                else:
                    line[machine] = r
            for r in left:
                line = next((ln for ln in lines if machine not in ln), None)
                if line is None:
                    line = {}
                    lines.append(line)
                line[machine] = r
        for i, line in enumerate(lines, 1):
            keys.append((*base, i))
            by.update({((*base, i), m): r for m, r in line.items()})
    return keys, by


def merged_markdown(machines: list[dict], rows: list[dict], notes: list[str] | None = None,
                    warning: str | None = None, other_warnings: list[str] | None = None) -> str:
    """The p50 table (one line per measurement, one column per machine), then every row.

    A machine with two rows of one key (the same model, target, precision, runtime, device and
    batch: e.g. two copies of an artifact) gets a line per row, never one dropped. Each machine's
    line names the data its report measured; ``warning`` (:func:`data_warning`, when the reports measured
    different data) is printed. The p50 table has a Top-1 column per machine instead of one when the data differ
    or when a line's Top-1 differs between machines (the same data, other arithmetic: INT8 kernels). Each line
    also gives the report's fer-edge version and timing settings (:func:`settings_text`); ``other_warnings``
    (:func:`settings_warning`) are printed after ``warning``.
    """
    names = [m["machine"] for m in machines]
    labels = model_labels(rows)
    # two files of one key on one machine are told apart by their paths' ends (paths differ between machines)
    tags = {n: artifact_tags([r for r in rows if r["machine"] == n]) for n in names}
    lines = ["## fer-edge bench: comparison", ""]
    for i, m in enumerate(machines, 1):
        details = environment_line(m["environment"]).split(": ", 1)[-1]
        data = f"; data: {data_text(m['data'])}" if m.get("data") else ""
        settings = f"; {settings_text(m['settings'])}" if m.get("settings") else ""
        lines.append(f"- M{i} = {m['machine']}: {details} (report {m['report']}, {m['created_at']}{data}"
                     f"{settings})")
    for w in [warning, *(other_warnings or [])]:
        if w:
            lines += ["", f"Warning: {w}"]
    keys, by = _p50_lines(rows, names)
    # a Top-1 column per machine when the data differ, and also when one line's accuracies do on the same data (an
    # INT8 model on CPUs with and without VNNI): one column would show the first machine's figure for all of them
    per_machine_top1 = warning is not None or any(
        len({r.get("accuracy") for n in names if (r := by.get((k, n))) and r.get("accuracy") is not None}) > 1
        for k in keys)

    def cell(r: dict | None) -> str:
        if r is None:
            return "-"
        if r["status"] in ("ok", "parity-failed") and p50(r) is not None:
            s = f"{p50(r):.3f}"
            return s + (" (parity-failed)" if r["status"] == "parity-failed" else "")
        return r["status"]

    top1 = [f"M{i} Top-1" for i in range(1, len(names) + 1)] if per_machine_top1 else ["Top-1"]
    header = ["Model", "Target", "Precision", "Runtime", "Device", "Batch",
              *(f"M{i} p50 ms" for i in range(1, len(names) + 1)), *top1]
    body = []
    for k in keys:
        cells = [by.get((k, n)) for n in names]
        if per_machine_top1:
            accs = [fmt_pct(c.get("accuracy")) if c else "-" for c in cells]
        else:
            accs = [fmt_pct(next((c.get("accuracy") for c in cells if c and c.get("accuracy") is not None), None))]
        tag = next((tags[c["machine"]][str(c.get("artifact"))] for c in cells
                    if c and str(c.get("artifact")) in tags[c["machine"]]), None)
        body.append([labels.get(k[0], "-"), k[1] + (f" ({tag})" if tag else ""), k[2], k[3], k[4] or "-", str(k[5]),
                     *(cell(c) for c in cells), *accs])
    lines += ["", "p50 latency per call (ms) by machine:", "", md_table(header, body), "", "All rows:", ""]
    full_header = ["Machine", *_MD_HEADER]
    lines.append(md_table(full_header, ([f"M{names.index(r['machine']) + 1}", *_md_cells(r, labels, tags[r["machine"]])]
                                        for r in rows)))
    for note in notes or []:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from fer_edge.benchmarks import not_a_script

    raise SystemExit(not_a_script("report"))

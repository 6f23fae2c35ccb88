"""Leaderboard: every registered architecture trained with one shared recipe, exported, benchmarked.

    python -m fer_edge.benchmarks.leaderboard --data ../shared/data/fer2013/fer2013.csv.gz \
        [--out reports/leaderboard] [--models simple_cnn,fer_nano] [--extra small=small --extra nano=nano]

Per model, through the library behind the commands (nothing is reimplemented here):

1. ``fer-edge train`` with the shared recipe (``--epochs``, ``--max-steps-per-epoch``, ...) into
   ``OUT/runs/<model>/``. Skipped when that run is finished and its stored train config is the
   requested recipe; an interrupted run of the same recipe is resumed from ``last.pt``; a run of
   another recipe or other data (the images' fingerprint: the same file moved elsewhere is the same data),
   or a run folder without a readable checkpoint, is moved aside to ``OUT/runs/<model>.replaced-<time>/``
   and trained afresh.
2. ``fer-edge export`` ONNX fp32 and int8 (calibrated on ``--data``'s training split) into
   ``OUT/exports/<model>/`` (reused while its manifest matches the checkpoint and calibration).
   The export's own parity check is left to the bench, which measures it on the whole split.
3. ``fer-edge bench`` of that export dir: PyTorch FP32 (the checkpoint) and ONNX Runtime, CPU,
   batch 1, 1 thread, the labelled validation split (PublicTest), parity recorded, not gated.
   Its report files go to ``OUT/bench/<model>/``. A rerun reuses that report when it measured exactly
   this: the same checkpoint and exported files (SHA-256), the same bench settings and data, the runtime
   settings fer-edge would choose now (ONNX Runtime's session entries), on the same machine (the environment
   fingerprint: host, CPU, cores, OS, library versions, and the CPU's flags);
   A report that did not measure all three rows (one failed, is missing, or holds a figure that is not a finite
   number) is never reused. ``--rebench`` measures every model again. Reused rows are named under the table,
   with their date.

``--extra NAME=CHECKPOINT`` (a path or a shipped name such as ``small``) adds an already
trained checkpoint: exported and benched the same way, never retrained, and labelled with its
own recipe ("shipped, full recipe" for the shipped weights). A model that fails at any step
gets a row with the error and the others still run; the exit status is 1 when any failed.

Writes ``OUT/leaderboard.json``, ``OUT/leaderboard.md`` (sorted by FP32 accuracy) and
``OUT/leaderboard.png`` (ONNX Runtime INT8 accuracy against its batch-1 latency, Pareto front
of the shared-recipe rows).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from fer_edge.constants import TRAIN_DEVICES
from fer_edge.errors import ExportError, FerEdgeError, OptionError
from fer_edge.utils import finite_or_null

SCHEMA_ID = "fer-edge-leaderboard/1"
DEFAULT_OUT = Path("reports/leaderboard")
DEFAULT_BENCH_SECONDS = 1.0
#: What the bench runs: the checkpoint in PyTorch (the FP32 reference) and the ONNX artifacts.
BENCH_RUNTIMES = ("pytorch", "onnxruntime")
#: TrainConfig fields that do not change what is learnt: a run differing only in them is the same recipe (the
#: trainer's ``RESUME_FREE`` but ``data``, which training_plan compares by its fingerprint: the same images at
#: another path are the same data).
NOT_RECIPE_FIELDS = ("out", "device", "amp", "channels_last", "num_threads", "wandb", "teacher_runtime",
                     "distill_cache")
FILES = ("leaderboard.json", "leaderboard.md", "leaderboard.png")
SHARED = "shared"
SHIPPED_LABEL = "shipped, full recipe"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --- the recipe ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """The one training recipe every architecture gets (a short CPU recipe by default)."""

    epochs: int = 3
    max_steps_per_epoch: int = 60
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    augment: str = "standard"
    ema: float = 0.0
    seed: int = 0
    threads: int = 2
    device: str = "auto"

    def train_config(self, data: str | Path, model: str, out: str | Path):
        from fer_edge.training import TrainConfig

        return TrainConfig(
            data=str(Path(data).resolve()), model=model, out=str(out), epochs=self.epochs,
            max_steps_per_epoch=self.max_steps_per_epoch, batch_size=self.batch_size, lr=self.lr,
            weight_decay=self.weight_decay, label_smoothing=self.label_smoothing, augment=self.augment,
            ema=self.ema, seed=self.seed, num_threads=self.threads, device=self.device,
        )


def recipe_text(cfg: dict) -> str:
    """A train config (dict) in one line: ``3 epochs x 60 steps of 128, adamw lr 0.003 (onecycle), ...``."""
    from fer_edge.training import TrainConfig

    c = TrainConfig.from_dict({"data": "", **cfg})
    ep = f"{c.epochs} epoch{'s' if c.epochs != 1 else ''}"
    length = (f"{ep} x {c.max_steps_per_epoch} steps of {c.batch_size}" if c.max_steps_per_epoch
              else f"{ep} over the whole training split, batch {c.batch_size}")
    parts = [length, f"{c.optimizer} lr {c.lr:g} ({c.scheduler})", f"weight decay {c.weight_decay:g}",
             f"label smoothing {c.label_smoothing:g}", f"augment {c.augment}"]
    if c.ema:
        parts.append(f"EMA {c.ema:g}")
    if c.mixup or c.cutmix:
        parts.append(f"mixup {c.mixup:g} / cutmix {c.cutmix:g}"
                     + (f" on {c.mix_prob:.0%} of batches" if c.mix_prob < 1 else ""))
    if c.init:
        parts.append(f"fine-tuned from {Path(c.init).name}")
    if c.distill:
        teachers = " + ".join(Path(t).name for t in c.distill)
        parts.append(f"distilled from {teachers}{' with flip TTA' if c.distill_tta else ''}")
    parts.append(f"seed {c.seed}")
    return ", ".join(parts)


def _recipe_dict(cfg: dict) -> dict:
    """The fields of a train config that define what is learnt (``data`` as an absolute path)."""
    from fer_edge.training import TrainConfig

    d = TrainConfig.from_dict({"data": "", **cfg}).to_dict()  # fields added later take their defaults
    for k in NOT_RECIPE_FIELDS:
        d.pop(k, None)
    if d.get("data"):
        d["data"] = str(Path(d["data"]).resolve())
    return d


def recipe_differences(stored: dict, wanted: dict, ignore: Sequence[str] = ()) -> list[str]:
    """``field: stored -> wanted`` for every recipe field a stored train config differs in (but ``ignore``'s)."""
    a, b = _recipe_dict(stored), _recipe_dict(wanted)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in b if k not in ignore and a.get(k) != b.get(k)]


def shipped_recipe_summary() -> str:
    """How the shipped weights were trained, from their metadata (``40 epochs over the whole split``)."""
    from fer_edge.weights import PRETRAINED

    epochs = set()
    for meta in PRETRAINED.values():
        m = re.search(r"--epochs\s+(\d+)", meta.recipe or "")
        if m:
            epochs.add(int(m.group(1)))
    if not epochs:
        return "the shipped weights' recipes"
    ema = any("--ema" in (m.recipe or "") for m in PRETRAINED.values())
    ep = "/".join(str(e) for e in sorted(epochs))
    return f"the shipped weights' recipes ({ep} epochs over the whole training split{', EMA' if ema else ''})"


def recipe_header(recipe: Recipe, data: str | Path) -> str:
    """The leaderboard's header line: the shared recipe, and how it compares with the shipped weights'."""
    from fer_edge.weights import PRETRAINED

    cfg = recipe.train_config(data, "-", "-").to_dict()
    text = recipe_text(cfg)
    shipped_epochs = [int(m.group(1)) for meta in PRETRAINED.values()
                      if (m := re.search(r"--epochs\s+(\d+)", meta.recipe or ""))]
    shorter = recipe.max_steps_per_epoch > 0 or (shipped_epochs and recipe.epochs < min(shipped_epochs))
    if shorter:
        return (f"Shared recipe: {text} -- shorter than {shipped_recipe_summary()}: this ranks the "
                "architectures under one short budget; it is not each one's best accuracy.")
    return f"Shared recipe: {text} (compare: {shipped_recipe_summary()})."


# --- the Pareto front ---------------------------------------------------------------------------
def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[int]:
    """Indices of the (latency, accuracy) points on the Pareto front, by increasing latency.

    Lower latency and higher accuracy are better. A point is on the front when no other
    point is at least as fast and at least as accurate and strictly better in one: equal
    points are all on it. Points with a missing or non-finite coordinate are left out.
    """
    from fer_edge.benchmarks.stats import pareto_front as _front

    idx = [i for i, p in enumerate(points)
           if p is not None and all(v is not None and math.isfinite(float(v)) for v in p)]
    lat = [float(points[i][0]) for i in idx]
    acc = [float(points[i][1]) for i in idx]
    front = [idx[j] for j in _front(lat, acc)]  # keeps the first of equal points
    on = {(float(points[i][0]), float(points[i][1])) for i in front}
    return sorted((i for i in idx if (float(points[i][0]), float(points[i][1])) in on),
                  key=lambda i: (float(points[i][0]), -float(points[i][1]), i))


# --- entries and rows ----------------------------------------------------------------------------
@dataclass
class Entry:
    """One leaderboard line to produce: a registered model to train, or an extra checkpoint."""

    name: str
    architecture: str | None  # None for an extra until its checkpoint is read
    extra: str | None = None  # the --extra CHECKPOINT spec
    checkpoint: Path | None = None

    @property
    def is_extra(self) -> bool:
        return self.extra is not None


def parse_extra(specs: Sequence[str], models: Sequence[str]) -> list[Entry]:
    """``NAME=CHECKPOINT`` (or a bare shipped name / path) -> entries; names unique and not a trained model's,
    each checkpoint loaded and its model built. Every bad item is reported in one error, before any training."""
    out, problems = extra_problems(specs, models)
    if problems:
        raise FerEdgeError("; ".join(problems) if len(problems) == 1 else
                           "bad --extra items:\n  " + "\n  ".join(problems))
    return out


def extra_problems(specs: Sequence[str], models: Sequence[str]) -> tuple[list[Entry], list[str]]:
    """:func:`parse_extra`'s work: ``(entries, problems)``, every bad ``--extra`` item a problem."""
    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.weights import PRETRAINED, resolve_checkpoint

    out: list[Entry] = []
    problems: list[str] = []
    seen: set[str] = set()
    for spec in specs:
        name, sep, ckpt = spec.partition("=")
        if not sep:
            ckpt = spec
            name = spec if spec in PRETRAINED else Path(spec).stem
        name, ckpt = name.strip(), ckpt.strip()
        if not name or not ckpt:
            problems.append(f"--extra takes NAME=CHECKPOINT (a path or a shipped name), got {spec!r}")
            continue
        if not _NAME_RE.match(name):
            problems.append(f"--extra {spec!r}: NAME may hold letters, digits, '_', '-' and '.' only")
        elif name in models:
            problems.append(f"--extra {spec!r}: {name!r} is also a model trained with the shared recipe; "
                            f"name the extra row differently, e.g. {name}-ckpt={ckpt}")
        elif name in seen:
            problems.append(f"--extra: the name {name!r} is given twice")
        seen.add(name)
        try:
            checkpoint = resolve_checkpoint(ckpt)  # fails early if absent
            load_checkpoint(checkpoint).build_model()  # and if it is no checkpoint, or its weights do not fit
        except FerEdgeError as e:
            problems.append(f"--extra {spec!r}: {e}")
            continue
        out.append(Entry(name, None, extra=ckpt, checkpoint=checkpoint))
    return out, problems


def new_row(entry: Entry) -> dict:
    return {
        "name": entry.name, "architecture": entry.architecture, "source": None, "origin": None,
        "recipe": SHARED if not entry.is_extra else None, "recipe_detail": None, "extra": entry.is_extra,
        "training": None, "train_seconds": None, "checkpoint": None, "checkpoint_sha256": None,
        "train_val_accuracy": None,
        "params": None, "macs": None,
        "fp32_accuracy": None, "fp32_macro_f1": None,
        "int8_accuracy": None, "int8_macro_f1": None, "int8_agreement": None, "int8_parity_failures": [],
        "onnx_fp32_accuracy": None, "onnx_fp32_agreement": None,
        "pytorch_fp32_p50_ms": None, "ort_int8_p50_ms": None, "ort_fp32_p50_ms": None,
        "pytorch_fp32_p90_ms": None, "ort_int8_p90_ms": None,
        "export_dir": None, "bench_dir": None, "bench_measured_at": None, "bench_reused": False, "pareto": False,
        "status": "pending", "stage": None, "error": None,
    }


def _err(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    text = msg if isinstance(e, FerEdgeError) and msg else (f"{type(e).__name__}: {msg}" if msg else type(e).__name__)
    return text if len(text) <= 600 else text[:597] + "..."


def _origin(source: str | None) -> str:
    """``FER2013 notebook: custom CNN (...)`` -> ``FER2013 notebook``; ``fer-edge (mini-...)`` -> ``fer-edge``."""
    if not source:
        return "-"
    return source.split(":")[0].split(" (")[0].strip()


# --- steps ---------------------------------------------------------------------------------
def training_plan(run_dir: Path, cfg, data: dict[str, dict] | None = None) -> tuple[str, str]:
    """``(action, why)`` for a run directory: ``skip``, ``resume``, ``replace`` (then train) or ``train``.

    ``data`` holds this run's split fingerprints (``{"train": ..., "val": ...}``, as
    :func:`fer_edge.training.trainer.data_fingerprint` gives them): a run whose checkpoint recorded other images
    is replaced even when the recipe is the same, and a run of the same images at another path (a moved or copied
    data file) is kept. Without ``data`` the data is compared by path.

    A run folder that holds files but no readable checkpoint (a corrupt or truncated ``best.pt`` or ``last.pt``,
    or only ``history.csv``/``metrics.json``) is replaced: the trainer would refuse to write over it.
    """
    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.training.trainer import LOCK_FILE, run_finished, same_data

    best, last = run_dir / "best.pt", run_dir / "last.pt"
    present = [p for p in (best, last) if p.exists()]
    if not present:  # (the lock file a killed run left is nothing of a run: a new one takes it)
        held = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE) if run_dir.is_dir() else []
        if held:
            return "replace", f"{run_dir} holds no checkpoint ({', '.join(held[:5])}{', ...' if len(held) > 5 else ''})"
        return "train", "no previous run"
    loaded = {}
    for p in present:
        try:
            loaded[p.name] = load_checkpoint(p)
        except FerEdgeError as e:
            return "replace", f"{p.name} is not a readable checkpoint ({_err(e)[:200]})"
    stored_from = best if best.name in loaded else last
    ck = loaded[stored_from.name]
    diffs = recipe_differences(ck.train_config, cfg.to_dict(), ignore=("data",) if data else ())
    if diffs:
        return "replace", f"{stored_from.name} was trained with another recipe ({'; '.join(diffs[:4])})"
    changed = [f"{what} split {(fp or {}).get('split', '?')!r}" for key, what, fp in
               (("train", "training", (data or {}).get("train")), ("val", "validation", (data or {}).get("val")))
               if fp is not None and not same_data(ck.data.get(key) or {}, fp)]
    if changed:
        return "replace", (f"{stored_from.name} was trained on other data: the {' and the '.join(changed)} of "
                           f"{cfg.data} changed since (images, labels or count)")
    moved = ""
    then = (ck.train_config or {}).get("data")
    if then and not _same_file(then, cfg.data):
        moved = f"; its data {then} is at {cfg.data} now, the same images (fingerprint)"
    if best.is_file() and (run_finished(run_dir) or not last.is_file()):
        return "skip", "best.pt of a finished run with this recipe" + moved
    return "resume", "an unfinished run with this recipe" + moved


def _same_file(a: str | Path, b: str | Path) -> bool:
    try:
        return str(a) == str(b) or Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return str(a) == str(b)


def train_entry(entry: Entry, row: dict, data: Path, out: Path, recipe: Recipe, log: Callable[[str], None],
                default_threads: int, fingerprints: dict[str, dict] | None = None) -> Path:
    """Train (or reuse) ``OUT/runs/<model>/best.pt`` with the shared recipe; returns its path."""
    import torch

    from fer_edge.training.trainer import Trainer
    from fer_edge.utils import sigterm_as_interrupt

    run_dir = out / "runs" / entry.name
    cfg = recipe.train_config(data, entry.name, run_dir)
    action, why = training_plan(run_dir, cfg, fingerprints)
    if action == "skip":
        log(f"{entry.name}: not retrained ({why})")
        row["training"] = "reused"
        return run_dir / "best.pt"
    if action == "replace":
        aside = _move_aside(run_dir)
        log(f"{entry.name}: {why}; moved it to {aside} and training afresh")
    if not recipe.threads:
        torch.set_num_threads(default_threads)  # the bench left torch at 1 thread
    log(f"{entry.name}: {'resuming' if action == 'resume' else 'training'} ({recipe_text(cfg.to_dict())})")
    t0 = time.perf_counter()
    # resume_hint=None: no "interrupted; ..." line from the trainer, the leaderboard says once what is kept and
    # how to go on
    with sigterm_as_interrupt():  # as fer_edge.training.train does
        Trainer(cfg, progress=False, resume_hint=None).run(resume=action == "resume")
    row["training"] = "resumed" if action == "resume" else "trained"
    row["train_seconds"] = round(time.perf_counter() - t0, 1)
    best = run_dir / "best.pt"
    if not best.is_file():
        raise FerEdgeError(f"training finished without writing {best}")
    return best


def _export_is_current(export_dir: Path, ckpt_sha: str, data: Path, calib_size: int,
                       calib_sha256: str | None = None) -> bool:
    """True when the export dir holds verified ONNX fp32 + int8 of this checkpoint with this calibration: the same
    seed and count, and the same images: given ``calib_sha256`` (the training split's fingerprint), by it (a data
    file moved or copied elsewhere is the same data), else by the file's path."""
    from fer_edge.benchmarks.artifacts import read_manifest
    from fer_edge.exporters import MANIFEST_NAME
    from fer_edge.exporters.calibration import DEFAULT_SEED

    mpath = export_dir / MANIFEST_NAME
    if not mpath.is_file():
        return False
    try:
        manifest = json.loads(mpath.read_text())
        cal = manifest.get("calibration") or {}
        if (manifest.get("source") or {}).get("sha256") != ckpt_sha:
            return False
        if (calib_sha256 is None and cal.get("file") != str(data.resolve())) or cal.get("seed") != DEFAULT_SEED:
            return False
        if cal.get("count") != min(calib_size, int(cal.get("split_size") or 0)):
            return False
        if calib_sha256 is not None and cal.get("data_sha256") != calib_sha256:
            return False
        have = {(a.target, a.precision) for a in read_manifest(mpath)}  # verifies every file's SHA-256
    except (OSError, ValueError, TypeError, AttributeError, FerEdgeError):
        return False
    return {("onnx", "fp32"), ("onnx", "int8")} <= have


def export_entry(ckpt: Path, ckpt_sha: str, export_dir: Path, data: Path, calib_size: int,
                 log: Callable[[str], None], name: str, calib_sha256: str | None = None) -> dict | None:
    """ONNX fp32 + int8 of ``ckpt`` into ``export_dir`` (reused when current); returns the tool versions."""
    from fer_edge.exporters import export

    if _export_is_current(export_dir, ckpt_sha, data, calib_size, calib_sha256):
        log(f"{name}: ONNX fp32 + int8 already exported in {export_dir}")
        return json.loads((export_dir / "manifest.json").read_text()).get("tool_versions")
    problem = _manifest_problem(export_dir)
    if problem is not None:  # fer-edge export never trusts such a manifest; this folder is the leaderboard's own
        aside = _move_aside(export_dir)
        log(f"{name}: {problem}; moved {export_dir} to {aside} and exporting afresh")
    log(f"{name}: exporting ONNX fp32 + int8 (calibration: {calib_size} images of the training split)")
    result = export(ckpt, ["onnx"], ["fp32", "int8"], export_dir, calib_data=data, calib_size=calib_size,
                    validate=False, data_progress=False, raise_on_failure=False,
                    on_warning=lambda w: log(f"{name}: export warning: {w}"),
                    replace_other=True)  # the leaderboard's own folder: a retrained entry's old export goes
    if result.failed:
        raise ExportError("; ".join(f"{f['target']} {f['precision']}: {f['reason']}" for f in result.failed))
    return result.manifest.get("tool_versions")


def _move_aside(folder: Path) -> Path:
    """Rename the leaderboard's own ``folder`` (a run or an export it cannot reuse) to ``<name>.replaced-<time>``,
    kept for the user to look at; returns the new path."""
    aside = folder.with_name(f"{folder.name}.replaced-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    folder.rename(aside)
    return aside


def _manifest_problem(export_dir: Path) -> str | None:
    """Why the ``manifest.json`` in ``export_dir`` cannot be read as fer-edge's (None: none there, or readable)."""
    from fer_edge.errors import ArtifactError
    from fer_edge.exporters import MANIFEST_NAME
    from fer_edge.exporters.manifest import load_manifest

    if not (export_dir / MANIFEST_NAME).is_file():
        return None
    try:
        load_manifest(export_dir / MANIFEST_NAME)
    except ArtifactError as e:
        return str(e)
    return None


def _find(rows: list[dict], *, reference: bool, target: str, precision: str, runtime: str) -> dict | None:
    for r in rows:
        if (r["reference"] == reference and r["target"] == target and r["precision"] == precision
                and r["runtime"] == runtime and r["batch"] == 1):
            return r
    return None


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _num(v):
    """``v`` when a finite number, else None (a NaN or infinity is no measurement)."""
    return v if _finite(v) else None


#: The bench rows a leaderboard line needs: (label, reference, target, precision, runtime).
BENCH_ROWS = (("PyTorch FP32", True, "checkpoint", "fp32", "pytorch"),
              ("ONNX Runtime INT8", False, "onnx", "int8", "onnxruntime"),
              ("ONNX Runtime FP32", False, "onnx", "fp32", "onnxruntime"))


def _not_measured(r: dict | None) -> str | None:
    """None when ``r`` is a measured bench row (ok or parity-failed, a finite p50 latency, and every accuracy,
    agreement and latency figure it holds a finite number), else why not."""
    if r is None:
        return "no row"
    if r.get("status") not in ("ok", "parity-failed"):
        return f"{r.get('status')}: {r.get('reason') or '?'}"
    lat = r.get("latency_ms")
    if not isinstance(lat, dict) or lat.get("p50") is None:
        return "no latency"
    values = {**{f"latency p{k[1:]}": v for k, v in lat.items() if k in ("p50", "p90")},
              **{k.replace("_", " "): r.get(k) for k in ("accuracy", "macro_f1", "agreement")}}
    bad = [f"{k} {v!r}" for k, v in values.items() if v is not None and not _finite(v)]
    return f"not a finite number: {', '.join(bad)}" if bad else None


def _measured(r: dict | None) -> bool:
    return _not_measured(r) is None


def bench_rows(rows: list[dict]) -> dict[str, dict | None]:
    """The leaderboard's three bench rows of a report, by label (None where the report has none)."""
    return {label: _find(rows, reference=ref, target=t, precision=p, runtime=rt) for label, ref, t, p, rt in BENCH_ROWS}


def take_bench(row: dict, report) -> list[str]:
    """Fill the row from a bench report; returns what is missing (rows that failed, were skipped or hold a
    non-finite figure). Non-finite figures are never copied into the row."""
    found = bench_rows(report.rows)
    ref, int8, fp32 = found["PyTorch FP32"], found["ONNX Runtime INT8"], found["ONNX Runtime FP32"]
    missing = [f"{label}: {why}" for label, r in found.items() if (why := _not_measured(r)) is not None]
    if ref is not None:
        row.update(fp32_accuracy=_num(ref.get("accuracy")), fp32_macro_f1=_num(ref.get("macro_f1")))
        if _measured(ref):
            row.update(pytorch_fp32_p50_ms=_num(ref["latency_ms"]["p50"]),
                       pytorch_fp32_p90_ms=_num(ref["latency_ms"].get("p90")))
    if row["fp32_accuracy"] is None:
        row["fp32_accuracy"] = _num(report.reference.get("accuracy"))
    if int8 is not None:
        row.update(int8_accuracy=_num(int8.get("accuracy")), int8_macro_f1=_num(int8.get("macro_f1")),
                   int8_agreement=_num(int8.get("agreement")),
                   int8_parity_failures=list(int8.get("parity_failures") or []))
        if _measured(int8):
            row.update(ort_int8_p50_ms=_num(int8["latency_ms"]["p50"]),
                       ort_int8_p90_ms=_num(int8["latency_ms"].get("p90")))
    if fp32 is not None:
        row.update(onnx_fp32_accuracy=_num(fp32.get("accuracy")), onnx_fp32_agreement=_num(fp32.get("agreement")))
        if _measured(fp32):
            row["ort_fp32_p50_ms"] = _num(fp32["latency_ms"]["p50"])
    return missing


def bench_request(split: str, data_sha256: str | None, n_images: int, bench: "BenchSettings") -> dict:
    """The settings a leaderboard bench records in its report (``settings``), as run_leaderboard asks for them."""
    from fer_edge.benchmarks.bench import DEFAULT_ROUNDS, effective_rounds

    return {"split": split, "data_sha256": data_sha256, "n_images": int(n_images), "batches": [bench.batch],
            "threads": bench.threads, "warmup": bench.warmup, "iters": bench.iters,
            "seconds": None if bench.iters is not None else float(bench.seconds),
            "rounds": effective_rounds(DEFAULT_ROUNDS, bench.iters),
            "seed": 0, "parity_gate": False, "runtimes": list(BENCH_RUNTIMES), "devices": ["cpu"]}


def _runtime_settings_changed(row: dict) -> bool:
    """True when ``row`` records runtime settings other than those its runtime would choose here now."""
    from fer_edge.runtimes import get_runtime

    info = row.get("runtime_info")
    if not info:  # not measured (skipped or failed): nothing was run under any settings
        return False
    try:
        now = get_runtime(row["runtime"]).settings_now()
    except FerEdgeError:
        return True
    return any(info.get(k) != v for k, v in now.items())


def reusable_bench(bench_dir: Path, ckpt_sha: str, export_dir: Path, request: dict, environment: dict):
    """``(report, "")`` when ``bench_dir`` holds a report that measured exactly this, else ``(None, why not)``.

    Exactly this: the reference checkpoint and every benchmarked file have the SHA-256s they have now, the
    report's settings equal ``request``, every row's runtime ran with the settings it would choose now
    (:meth:`Runtime.settings_now`, e.g. ONNX Runtime's session config), and it ran on this machine (the
    environment fingerprint and the CPU's flags; timings from another machine or other library versions are
    not comparable).
    """
    from fer_edge.benchmarks.artifacts import read_manifest
    from fer_edge.benchmarks.report import BenchReport, load_report
    from fer_edge.exporters import MANIFEST_NAME

    path = bench_dir / "report.json"
    if not path.is_file():
        return None, "no earlier report"
    try:
        rep = load_report(path)
        current = {a.path.name: a.sha256 for a in read_manifest(export_dir / MANIFEST_NAME)}
    except (FerEdgeError, OSError, ValueError) as e:
        return None, f"earlier report or export unreadable ({_err(e)[:120]})"
    if rep["reference"].get("sha256") != ckpt_sha:
        return None, "the checkpoint changed"
    unmeasured = [(label, why) for label, r in bench_rows(rep["rows"]).items() if (why := _not_measured(r))]
    if unmeasured:  # a failed or partial bench is measured again, never reused
        return None, "the earlier bench did not measure " + "; ".join(
            label if why == "no row" else f"{label} ({why})" for label, why in unmeasured)
    rows = [r for r in rep["rows"] if not r.get("reference")]
    if not rows or any(current.get(Path(r.get("artifact") or "").name) != r.get("sha256") for r in rows):
        return None, "the exported files changed"
    differ = [k for k, v in request.items() if rep["settings"].get(k) != v]
    if differ:
        return None, "other bench settings (" + ", ".join(differ) + ")"
    changed = sorted({r["runtime"] for r in rows if _runtime_settings_changed(r)})
    if changed:
        return None, f"{', '.join(changed)} would run with other settings now"
    then, now = rep["environment"], environment
    if then.get("fingerprint") != now.get("fingerprint") or (then.get("cpu") or {}).get("flags") != (
            now.get("cpu") or {}).get("flags"):
        return None, "measured on another machine or with other library versions"
    report = BenchReport(environment=then, settings=rep["settings"], reference=rep["reference"], rows=rep["rows"],
                         compute_limit=rep.get("compute_limit"), notes=list(rep.get("notes") or []),
                         created_at=rep.get("created_at", ""), fer_edge_version=rep.get("fer_edge_version", ""),
                         out_dir=bench_dir)
    return report, ""


# --- the run ---------------------------------------------------------------------------------------
def leaderboard_splits(data: Path) -> tuple[str, str]:
    """``(validation split, training split)`` of ``data``: the leaderboard has no option to name them, so data
    without the default ones is refused with what it must hold (not with other commands' options)."""
    from fer_edge.data import default_train_split, default_val_split
    from fer_edge.errors import DataError

    found, problems = [], []
    for pick in (default_val_split, default_train_split):
        try:
            found.append(pick(data, options=""))
        except DataError as e:
            problems.append(str(e))
    if problems:
        raise DataError("; ".join(problems) + "; the leaderboard cannot be told which splits to use: --data must "
                        "hold a 'Training' and a 'PublicTest' split (a CSV's Usage column), or, as image folders, "
                        "train/ and val/")
    return found[0], found[1]


@dataclass(frozen=True)
class BenchSettings:
    seconds: float = DEFAULT_BENCH_SECONDS
    iters: int | None = None
    warmup: int = 10
    n_images: int | None = None
    threads: int = 1
    batch: int = 1


@dataclass
class LeaderboardResult:
    out_dir: Path
    rows: list[dict]
    document: dict
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]


def run_leaderboard(
    data: str | Path,
    out: str | Path = DEFAULT_OUT,
    models: Sequence[str] | None = None,
    recipe: Recipe = Recipe(),
    extras: Sequence[str] = (),
    calib_size: int | None = None,
    bench: BenchSettings = BenchSettings(),
    console=None,
    progress: bool | None = None,
    rebench: bool = False,
) -> LeaderboardResult:
    """Train, export and bench every model (default: every registered one) and write the three files.

    A model's bench report from an earlier run is reused when it measured exactly this (:func:`reusable_bench`)
    unless ``rebench``.
    """
    import torch
    from fer_edge.console import WideConsole as Console  # wide off a terminal
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fer_edge import __version__
    from fer_edge.benchmarks.bench import run_bench
    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.data import load_split
    from fer_edge.exporters.calibration import DEFAULT_CALIB_SIZE
    from fer_edge.training.trainer import data_fingerprint
    from fer_edge.models import describe_model, list_models
    from fer_edge.utils import sha256_path
    from fer_edge.weights import PRETRAINED, shipped_with_sha

    data = Path(data)
    out = Path(out)
    if not data.exists():
        raise FerEdgeError(f"--data {data}: no such file or folder")
    valid = list_models()
    models = None if models is None else list(models)  # a generator is read once
    if models is not None and not models:
        raise FerEdgeError(EMPTY_MODELS)
    models = models if models is not None else valid
    unknown = [m for m in models if m not in valid]
    if unknown:
        raise FerEdgeError(f"unknown model {unknown[0]!r}; valid: {', '.join(valid)}")
    calib_size = DEFAULT_CALIB_SIZE if calib_size is None else int(calib_size)
    if calib_size < 1:
        raise FerEdgeError("--calib-size must be at least 1")
    entries = [Entry(m, m) for m in models] + parse_extra(extras, models)
    console = console or Console(stderr=True)
    show_bar = console.is_terminal if progress is None else progress

    # decode both splits once up front: a bad --data fails here, not after an hour of training
    val_split, train_split = leaderboard_splits(data)
    train_data = load_split(data, train_split)
    val = load_split(data, val_split)
    fingerprints = {"train": data_fingerprint(train_data), "val": data_fingerprint(val)}
    del train_data
    n_val = len(val.labels)
    default_threads = torch.get_num_threads()
    request = bench_request(val_split, (val.fingerprint or {}).get("sha256"), min(bench.n_images or n_val, n_val),
                            bench)
    here = None  # this machine's environment, described once (only needed to reuse earlier reports)
    shipped_paths = {meta.path.resolve(): name for name, meta in PRETRAINED.items()}

    rows: list[dict] = []
    environment: dict | None = None
    tool_versions: dict | None = None
    summaries: dict[str, dict] = {}
    started = time.perf_counter()

    with Progress(TextColumn("[bold]{task.fields[label]}[/]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=True,
                  disable=not show_bar) as bar:
        overall = bar.add_task("starting", total=len(entries), label="leaderboard")
        step_task = bar.add_task("", total=None, visible=False, label="  step")

        def log(msg: str) -> None:
            console.print(msg, highlight=False, markup=False)

        for i, entry in enumerate(entries):
            row = new_row(entry)
            rows.append(row)
            stage = "checkpoint"
            bar.update(overall, description=f"{entry.name}")
            try:
                # 1. the checkpoint: trained with the shared recipe, or the extra as given
                if entry.is_extra:
                    ckpt_path = entry.checkpoint
                    ck = load_checkpoint(ckpt_path)
                    entry.architecture = row["architecture"] = ck.model_name
                    shipped = shipped_paths.get(Path(ckpt_path).resolve())
                    if shipped is None:  # a copy of a shipped weight is that weight
                        meta = shipped_with_sha(sha256_path(ckpt_path))
                        shipped = next((n for n, m in PRETRAINED.items() if m is meta), None) if meta else None
                    cfg = ck.train_config
                    detail = recipe_text(cfg) if cfg else "unknown (the checkpoint records no train config)"
                    if shipped:
                        row["recipe"] = SHIPPED_LABEL
                        row["recipe_detail"] = PRETRAINED[shipped].recipe or detail
                    else:
                        row["recipe"] = "own recipe"
                        row["recipe_detail"] = detail
                    row["training"] = "not retrained (--extra)"
                    kwargs = ck.model_kwargs
                else:
                    stage = "train"
                    bar.update(step_task, description=f"{entry.name}: training", total=None, completed=0,
                               visible=True)
                    ckpt_path = train_entry(entry, row, data, out, recipe, log, default_threads, fingerprints)
                    ck = load_checkpoint(ckpt_path)
                    row["recipe_detail"] = recipe_text(ck.train_config)
                    kwargs = ck.model_kwargs
                row["checkpoint"] = str(ckpt_path)
                ckpt_sha = sha256_path(ckpt_path)
                row["checkpoint_sha256"] = ckpt_sha
                row["train_val_accuracy"] = ck.metrics.get("val_accuracy")

                stage = "summary"
                arch = row["architecture"]
                if arch not in summaries:
                    summaries[arch] = describe_model(arch)
                row["source"] = summaries[arch]["source"]
                row["origin"] = _origin(row["source"])
                if kwargs:  # not the registry's default configuration: count the model as built
                    from fer_edge.models import count_macs, count_params

                    model = ck.build_model()
                    row.update(params=count_params(model), macs=count_macs(model))
                else:
                    row.update(params=summaries[arch]["params"], macs=summaries[arch]["macs"])
                del ck

                # 2. export
                stage = "export"
                bar.update(step_task, description=f"{entry.name}: exporting", total=None, completed=0)
                export_dir = out / "exports" / ("extra" if entry.is_extra else "") / entry.name
                row["export_dir"] = str(export_dir)
                tool_versions = export_entry(ckpt_path, ckpt_sha, export_dir, data, calib_size, log,
                                             entry.name, fingerprints["train"].get("sha256")) or tool_versions

                # 3. bench
                stage = "bench"
                bench_dir = out / "bench" / ("extra" if entry.is_extra else "") / entry.name
                row["bench_dir"] = str(bench_dir)
                report, why = None, "--rebench"
                if not rebench:
                    if here is None:
                        from fer_edge.benchmarks.environment import describe_environment

                        here = describe_environment(list(BENCH_RUNTIMES))
                    report, why = reusable_bench(bench_dir, ckpt_sha, export_dir, request, here)
                if report is not None:
                    row["bench_reused"] = True
                    log(f"{entry.name}: reusing the bench of {report.created_at} in {bench_dir} (same checkpoint, "
                        "files, settings and machine; --rebench to measure again)")
                else:
                    log(f"{entry.name}: benchmarking PyTorch FP32 and ONNX Runtime FP32/INT8 "
                        f"(CPU, batch {bench.batch}, {bench.threads} thread(s), {val_split}; not reused: {why})")

                    def on_bench(done: int, total: int, msg: str, _name=entry.name) -> None:
                        bar.update(step_task, completed=done, total=total, description=f"{_name}: bench {msg}")

                    report = run_bench(
                        [export_dir], data=data, split=val_split, reference=ckpt_path,
                        runtimes=list(BENCH_RUNTIMES), devices=["cpu"], batches=(bench.batch,), threads=bench.threads,
                        warmup=bench.warmup, iters=bench.iters, seconds=bench.seconds, n_images=bench.n_images,
                        parity_gate=False, out_dir=bench_dir, progress=on_bench,
                    )
                row["bench_measured_at"] = report.created_at
                environment = environment or report.environment
                missing = take_bench(row, report)
                if missing:
                    raise FerEdgeError("bench rows not measured: " + "; ".join(missing))
                row["status"] = "ok"
                log(f"{entry.name}: FP32 {_pct(row['fp32_accuracy'])}, INT8 {_pct(row['int8_accuracy'])} "
                    f"(agreement {_pct(row['int8_agreement'])}), p50 PyTorch FP32 {_ms(row['pytorch_fp32_p50_ms'])} "
                    f"ms, ORT INT8 {_ms(row['ort_int8_p50_ms'])} ms")
            except KeyboardInterrupt:
                raise
            except Exception as e:  # one failing model never stops the others
                row.update(status="failed", stage=stage, error=_err(e))
                short = row["error"] if len(row["error"]) <= 300 else row["error"][:297] + "..."
                console.print(f"[bold red]{escape(entry.name)} failed[/] at {stage}: {escape(short)}", highlight=False)
            finally:
                bar.update(step_task, visible=False)
                bar.update(overall, completed=i + 1)

    rows = [finite_or_null(r) for r in rows]  # take_bench copies finite figures only; nothing else may hold a NaN
    mark_pareto(rows)
    rows = sort_rows(rows)
    doc = {
        "schema": SCHEMA_ID,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fer_edge_version": __version__,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "data": {"path": str(data.resolve()), "split": val_split, "n_images": min(bench.n_images or n_val, n_val),
                 "split_size": n_val, "sha256": (val.fingerprint or {}).get("sha256")},
        "recipe": {**asdict(recipe), "description": recipe_text(recipe.train_config(data, "-", "-").to_dict()),
                   "header": recipe_header(recipe, data),
                   "train_config": _recipe_dict(recipe.train_config(data, "-", "-").to_dict())},
        "export": {"targets": ["onnx"], "precisions": ["fp32", "int8"], "calib_size": calib_size,
                   "calib_split": train_split},
        "bench": {"runtimes": list(BENCH_RUNTIMES), "device": "cpu", "batch": bench.batch,
                  "threads": bench.threads, "seconds": None if bench.iters else bench.seconds,
                  "iters": bench.iters, "warmup": bench.warmup, "statistic": "p50", "parity_gate": False},
        "pareto": "ONNX Runtime INT8 accuracy against its p50 batch-1 latency, over the shared-recipe rows",
        "environment": environment,
        "tool_versions": tool_versions,
        "rows": rows,
    }
    files = write_leaderboard(doc, out)
    return LeaderboardResult(out, rows, doc, files)


def _int8_point(r: dict) -> tuple[float | None, float | None]:
    return (r.get("ort_int8_p50_ms"), r.get("int8_accuracy"))


def mark_pareto(rows: list[dict]) -> None:
    """``pareto: true`` on the shared-recipe rows on the INT8 accuracy / latency front."""
    shared = [r for r in rows if r["status"] == "ok" and not r["extra"]]
    for r in rows:
        r["pareto"] = False
    for i in pareto_front([_int8_point(r) for r in shared]):
        shared[i]["pareto"] = True


def sort_rows(rows: list[dict]) -> list[dict]:
    """By PyTorch FP32 accuracy, best first; rows without one (failed) last, by name."""
    return sorted(rows, key=lambda r: (r.get("fp32_accuracy") is None, -(r.get("fp32_accuracy") or 0.0), r["name"]))


# --- output -------------------------------------------------------------------------------------
def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _ms(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 100 else f"{v:.0f}")


def _count(v) -> str:
    from fer_edge.models import format_count

    return "-" if v is None else format_count(int(v))


def _model_cell(r: dict) -> str:
    arch = r.get("architecture")
    return r["name"] if not arch or arch == r["name"] else f"{r['name']} ({arch})"


def status_cell(r: dict) -> str:
    if r["status"] == "failed":
        err = r.get("error") or "?"
        return f"failed at {r.get('stage')}: {err[:80]}{'...' if len(err) > 80 else ''}"
    if r.get("int8_parity_failures"):
        return "ok (INT8 below the export parity gate)"
    return r["status"]


TABLE_COLUMNS = ("#", "Model", "Origin", "Recipe", "Params", "MACs", "FP32 top-1", "INT8 top-1", "INT8 agree",
                 "PyTorch FP32 p50 ms", "ORT INT8 p50 ms", "Pareto", "Status")


def table_cells(rank: int, r: dict) -> list[str]:
    return [
        str(rank), _model_cell(r), r.get("origin") or "-", r.get("recipe") or "-", _count(r.get("params")),
        _count(r.get("macs")), _pct(r.get("fp32_accuracy")), _pct(r.get("int8_accuracy")),
        _pct(r.get("int8_agreement")), _ms(r.get("pytorch_fp32_p50_ms")), _ms(r.get("ort_int8_p50_ms")),
        "yes" if r.get("pareto") else "", status_cell(r),
    ]


def leaderboard_markdown(doc: dict) -> str:
    from fer_edge.benchmarks.report import environment_line, md_table

    d, b = doc["data"], doc["bench"]
    timing = f"{b['iters']} timed calls" if b.get("iters") else f"{b['seconds']:g} s of timed calls"
    lines = [
        "## fer-edge leaderboard",
        "",
        doc["recipe"]["header"],
        "",
        f"- Accuracy: top-1 on {d['n_images']:,} images of `{d['split']}` of `{Path(d['path']).name}`. "
        "FP32 is the PyTorch checkpoint; INT8 is ONNX Runtime running the static-INT8 ONNX export "
        f"(calibrated on {doc['export']['calib_size']} images of `{doc['export']['calib_split']}`); "
        "agreement is INT8's top-1 agreement with FP32 on the same images.",
        f"- Latency: p50 of batch-{b['batch']} calls on the CPU, {b['threads']} thread, {timing} per runtime "
        "(`fer-edge bench`; each model's full report is in `bench/<model>/`).",
    ]
    if doc.get("environment"):
        lines.append(f"- Machine: {environment_line(doc['environment'])}")
    if any(r["extra"] for r in doc["rows"]):
        lines.append("- Rows whose recipe is not `shared` were not retrained: their checkpoints were exported and "
                     "benchmarked the same way, but their accuracy comes from their own recipe "
                     "(listed below the table), so they are not part of the Pareto front.")
    lines.append("- Pareto: on the front of ONNX Runtime INT8 accuracy against its latency among the "
                 "shared-recipe rows (nothing is both faster and more accurate).")
    lines += ["", md_table(TABLE_COLUMNS, ([c.replace("|", "\\|") for c in table_cells(i, r)]
                                          for i, r in enumerate(doc["rows"], 1))), ""]
    extras = [r for r in doc["rows"] if r["extra"] and r.get("recipe_detail")]
    if extras:
        lines += ["Recipes of the rows not trained here:", ""]
        lines += [f"- `{r['name']}`: {r['recipe']}: {r['recipe_detail']}" for r in extras]
        lines.append("")
    gated = [r for r in doc["rows"] if r.get("int8_parity_failures")]
    if gated:
        lines += ["INT8 rows outside the export parity gate's thresholds (measured, not hidden):", ""]
        lines += [f"- `{r['name']}`: {'; '.join(r['int8_parity_failures'])}" for r in gated]
        lines.append("")
    reused = [r for r in doc["rows"] if r.get("bench_reused")]
    if reused:
        lines += ["Latencies and accuracies reused from an earlier run's bench on this machine (same checkpoint, "
                  "files and settings; `--rebench` measures again):", ""]
        lines += [f"- `{r['name']}`: measured {r['bench_measured_at']}" for r in reused]
        lines.append("")
    failed = [r for r in doc["rows"] if r["status"] == "failed"]
    if failed:
        lines += ["Failed:", ""]
        lines += [f"- `{r['name']}` at {r['stage']}: {r['error']}" for r in failed]
        lines.append("")
    lines.append(f"Generated by `python -m fer_edge.benchmarks.leaderboard` (fer-edge {doc['fer_edge_version']}, "
                 f"{doc['created_at']}).")
    return "\n".join(lines) + "\n"


def plot_leaderboard(rows: list[dict], path: Path, title: str) -> Path:
    """ONNX Runtime INT8 top-1 (%) against its p50 batch-1 latency (ms, log x), one labelled point per model;
    the shared-recipe Pareto front as a step line; rows with another recipe as diamonds. A Figure on its own Agg
    canvas (:mod:`fer_edge.plotting`: no pyplot, the caller's matplotlib backend left alone), saved atomically."""
    from fer_edge.benchmarks.report import finish_latency_plot
    from fer_edge.plotting import colormap, subplots

    pts = [r for r in rows if r["status"] == "ok" and all(_finite(v) for v in _int8_point(r))]
    fig, ax = subplots(figsize=(9, 6), dpi=110)
    from matplotlib.lines import Line2D  # (after subplots, which first imports matplotlib with MPLBACKEND aside)

    origins = sorted({r.get("origin") or "-" for r in pts})
    cmap = colormap("tab10")
    for k, r in enumerate(pts):
        x, y = r["ort_int8_p50_ms"], 100 * r["int8_accuracy"]
        ax.scatter(x, y, s=90 if r["extra"] else 60, marker="D" if r["extra"] else "o", alpha=0.9,
                   color=cmap(origins.index(r.get("origin") or "-") % 10),
                   edgecolors="black" if r["pareto"] else "none", linewidths=1.2, zorder=3)
        ax.annotate(r["name"], (x, y), textcoords="offset points", xytext=(6, (5, -11, 12, -18)[k % 4]),
                    fontsize=8, zorder=4)
    front = sorted((r for r in pts if r["pareto"]), key=lambda r: r["ort_int8_p50_ms"])
    if front:
        xs = [r["ort_int8_p50_ms"] for r in front]
        ys = [100 * r["int8_accuracy"] for r in front]
        ax.plot(xs, ys, "--", color="gray", lw=1.2, drawstyle="steps-post", zorder=2)
    handles = [Line2D([], [], ls="", marker="o", color=cmap(i % 10), label=o) for i, o in enumerate(origins)]
    handles.append(Line2D([], [], ls="--", marker="o", mfc="lightgray", mec="black", color="gray",
                          label="Pareto front (shared recipe)"))
    if any(r["extra"] for r in pts):
        handles.append(Line2D([], [], ls="", marker="D", color="gray", label="own recipe (not retrained)"))
    if pts:
        ax.legend(handles=handles, fontsize=8, loc="best")
    return finish_latency_plot(fig, ax, path, title, bool(pts),  # a log axis only when there are points
                               f"ONNX Runtime INT8 p50 latency, batch 1, 1 thread (ms{', log scale' if pts else ''})",
                               "top-1 accuracy, ONNX Runtime INT8 (%)")


class InterruptedAfterWriting(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) that came while the leaderboard files were written: held until all three were."""

    def __init__(self, paths: dict[str, Path]):
        super().__init__("interrupted after the leaderboard files were written")
        self.paths = paths


def write_leaderboard(doc: dict, out_dir: str | Path) -> dict[str, Path]:
    """``leaderboard.json``, ``leaderboard.md`` and ``leaderboard.png`` into ``out_dir``, as one group
    (:func:`fer_edge.benchmarks.report.write_together`: a plot that cannot be drawn is a warning).

    Ctrl-C and SIGTERM are held over the three writes (:class:`InterruptedAfterWriting` once they are done), so
    the three files are all new or all as they were; a failure to write is a :class:`FerEdgeError`.
    """
    from fer_edge.benchmarks.report import write_together
    from fer_edge.utils import interrupts_deferred, json_text

    out = Path(out_dir)
    doc = finite_or_null(doc)  # leaderboard.json stays strict JSON, and the table shows no nan
    text = json_text(doc)
    md = leaderboard_markdown(doc)
    r = doc["recipe"]
    steps = f" x {r['max_steps_per_epoch']} steps" if r["max_steps_per_epoch"] else ""
    title = (f"fer-edge leaderboard: {doc['data']['split']} accuracy vs CPU latency "
             f"(shared recipe: {r['epochs']} epoch{'s' if r['epochs'] != 1 else ''}{steps})")
    paths = None  # the files written, once they are
    try:
        with interrupts_deferred():
            paths = write_together(out, {"leaderboard.json": text, "leaderboard.md": md}, "leaderboard.png",
                                   lambda png: plot_leaderboard(doc["rows"], png, title))  # no PNG if not drawn
    except KeyboardInterrupt:
        if paths is not None:
            raise InterruptedAfterWriting(paths) from None
        raise
    except OSError as e:
        where = e.filename or out
        raise FerEdgeError(f"cannot write the leaderboard files into {out}: {where}: {e.strerror or _err(e)} "
                           "(the runs, exports and bench reports made so far are kept: rerunning the same command "
                           "once the folder can be written goes on from them)") from None
    return paths


def rich_table(doc: dict, width: int | None = None):
    """The leaderboard as a rich table; narrower terminals get fewer columns (all are in the files)."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    width = width or 200
    keep = {"#", "Model", "FP32 top-1", "INT8 top-1", "PyTorch FP32 p50 ms", "ORT INT8 p50 ms", "Status"}
    if width >= 110:
        keep |= {"Params", "MACs", "INT8 agree", "Recipe"}
    if width >= 150:
        keep |= {"Origin", "Pareto"}
    short = {"FP32 top-1": "FP32", "INT8 top-1": "INT8", "INT8 agree": "Agree", "PyTorch FP32 p50 ms": "PT FP32 ms",
             "ORT INT8 p50 ms": "ORT INT8 ms"}
    t = Table(title="fer-edge leaderboard", caption=escape(doc["recipe"]["header"]), box=box.SIMPLE_HEAD,
              show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    cols = [i for i, c in enumerate(TABLE_COLUMNS) if c in keep]
    for i in cols:
        c = TABLE_COLUMNS[i]
        text_col = c in ("Model", "Origin", "Recipe", "Status")
        t.add_column(short.get(c, c), justify="left" if text_col else "right", no_wrap=c != "Status",
                     overflow="fold")
    style = {"ok": "green", "failed": "red"}
    for rank, r in enumerate(doc["rows"], 1):
        cells = [escape(c) for c in table_cells(rank, r)]
        if "Pareto" not in keep and r.get("pareto"):
            cells[1] += " *"
        cells[-1] = f"[{style.get(r['status'], 'yellow')}]{cells[-1]}[/]"
        t.add_row(*(cells[i] for i in cols))
    return t


# --- command line ---------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    d = Recipe()
    ap = argparse.ArgumentParser(
        prog="python -m fer_edge.benchmarks.leaderboard",
        description="Train every registered model with one shared recipe, export ONNX fp32/int8, bench them "
                    "(PyTorch FP32 and ONNX Runtime INT8, batch 1, 1 thread) and write a leaderboard "
                    "(json, md, png).")
    ap.add_argument("--data", required=True, help="FER2013 CSV (.csv/.csv.gz) or image-folder data set")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output folder (default: %(default)s)")
    ap.add_argument("--models", default=None,
                    help="comma-separated registered models (default, the option left out: every one; see "
                         "`fer-edge models`)")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=CHECKPOINT",
                    help="an already trained checkpoint (path or shipped name, e.g. small=small) to export and "
                         "bench the same way without retraining; labelled with its own recipe (repeatable)")
    g = ap.add_argument_group("shared recipe (every model trains with it)")
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--max-steps-per-epoch", type=int, default=d.max_steps_per_epoch,
                   help="steps per epoch, 0: the whole training split (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    g.add_argument("--augment", default=d.augment, help="none, light, standard or strong (default: %(default)s)")
    g.add_argument("--ema", type=float, default=d.ema, help="weight EMA decay, 0: off (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--threads", type=int, default=d.threads, help="torch threads for training, 0: torch default")
    g.add_argument("--device", default=d.device, help="training device: auto, cpu, cuda, mps")
    g = ap.add_argument_group("export and bench")
    g.add_argument("--calib-size", type=int, default=None,
                   help="INT8 calibration images of the training split (default: the exporter's, 500)")
    g.add_argument("--bench-seconds", type=float, default=DEFAULT_BENCH_SECONDS,
                   help="timing budget per runtime row (default: %(default)s)")
    g.add_argument("--bench-iters", type=int, default=None, help="timed calls per runtime row (overrides seconds)")
    g.add_argument("--bench-warmup", type=int, default=10, help="untimed calls before timing (default: %(default)s)")
    g.add_argument("--n-images", type=int, default=None,
                   help="images of the validation split for accuracy (default: all of it)")
    g.add_argument("--rebench", action="store_true",
                   help="bench every model again, even where an earlier report measured the same files, "
                        "settings and machine")
    return ap


#: The command line's float options, each refused up front unless a finite number.
FLOAT_OPTIONS = ("lr", "weight_decay", "label_smoothing", "ema", "bench_seconds")
EMPTY_MODELS = "--models is empty: name at least one model, or leave the option out for every model"


def option_problems(args: argparse.Namespace) -> tuple[list[str] | None, list[str]]:
    """``(models, problems)``: the ``--models`` list (None: every model) and every problem with the command line's
    options, found before any data is read or any model trained."""
    from fer_edge.cli.common import parse_csv_option
    from fer_edge.models import list_models
    from fer_edge.training.trainer import validate_config
    from fer_edge.utils import check_writable_dir

    problems: list[str] = []
    # an empty --data or --out (a script's unset variable) would be the current folder: refused, naming it
    problems += [f"{option} is empty: give a path (an unset variable in a script?)"
                 for option, value in (("--data", args.data), ("--out", args.out)) if not str(value).strip()]
    if str(args.data).strip() and not Path(args.data).exists():
        problems.append(f"--data {args.data}: no such file or folder")
    models = None
    if args.models is not None:
        try:
            models = parse_csv_option(args.models, list_models(), "model")
        except FerEdgeError as e:
            problems.append(str(e))
        else:
            if not models:
                problems.append(EMPTY_MODELS)
    bad_floats = [k for k in FLOAT_OPTIONS if not math.isfinite(getattr(args, k))]
    problems += [f"--{k.replace('_', '-')} must be a finite number, not {getattr(args, k)!r}" for k in bad_floats]
    problems += [f"--{k.replace('_', '-')} must be at least {lo}, not {getattr(args, k)}" for k, lo in
                 (("epochs", 1), ("batch_size", 1), ("max_steps_per_epoch", 0), ("threads", 0), ("bench_warmup", 0))
                 if getattr(args, k) < lo]
    if "bench_seconds" not in bad_floats and args.bench_seconds <= 0 and args.bench_iters is None:
        problems.append("--bench-seconds must be positive")
    for k in ("bench_iters", "n_images", "calib_size"):
        if getattr(args, k) is not None and getattr(args, k) < 1:
            problems.append(f"--{k.replace('_', '-')} must be at least 1, not {getattr(args, k)}")
    if args.device not in TRAIN_DEVICES:
        problems.append(f"--device {args.device!r}: valid: {', '.join(TRAIN_DEVICES)}")
    else:  # before any run is moved aside or any table rewritten
        from fer_edge.training.trainer import resolve_device

        try:
            resolve_device(args.device)
        except FerEdgeError as e:
            problems.append(str(e))
    out_ok = bool(str(args.out).strip())
    try:
        if out_ok:
            check_writable_dir(args.out, "--out", FerEdgeError)
    except FerEdgeError as e:
        problems.append(str(e))
        out_ok = False
    out = Path(args.out)
    for name in FILES:  # an atomic write never replaces a folder: refuse it now, not after all the work
        if (out / name).is_dir() and not (out / name).is_symlink():
            problems.append(f"--out {out}: {out / name} is a folder, where the leaderboard writes its {name}: "
                            "move it away, or choose another --out")
    # the trainer's own range checks (--lr must be positive, ...), the ones not made above; a non-finite recipe
    # float (reported above) is replaced by its default here so that the other fields are still checked
    d = Recipe()
    finite = {k: getattr(args, k) if k not in bad_floats else getattr(d, k)
              for k in ("lr", "weight_decay", "label_smoothing", "ema")}
    recipe = Recipe(epochs=max(args.epochs, 1), max_steps_per_epoch=max(args.max_steps_per_epoch, 0),
                    batch_size=max(args.batch_size, 1), augment=args.augment, seed=args.seed,
                    threads=max(args.threads, 0), device="auto", **finite)
    try:
        validate_config(recipe.train_config(args.data, (models or ["fer_nano"])[0], "-"))
    except FerEdgeError as e:
        problems += [line.strip() for line in str(e).splitlines()[1:] if line.strip()] or [str(e)]
    if args.extra:  # each checkpoint read and its model built, as run_leaderboard will
        problems += extra_problems(args.extra, list_models() if args.models is None else (models or []))[1]
    if out_ok and not problems:
        problems += _creatable_dir_problems(out)
    return models, problems


def _creatable_dir_problems(path: Path) -> list[str]:
    """Make the folders of ``path`` that do not exist yet and remove them again: ``[]`` when it can be created,
    else the problem (a path under /proc, a read-only mount, ...), found before any training."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    if not missing:
        return []
    try:
        path.mkdir(parents=True)
    except OSError as e:
        return [f"--out {path}: cannot create the folder ({e.strerror or _err(e)}): choose another --out"]
    for q in missing:  # deepest first; nothing else is in them yet
        try:
            q.rmdir()
        except OSError:
            break
    return []


def main(argv: list[str] | None = None) -> int:
    from fer_edge.cli.common import console, err_console
    from fer_edge.utils import sigterm_as_interrupt

    args = build_parser().parse_args(argv)
    try:
        models, problems = option_problems(args)
        if problems:  # checked together and listed at once, a usage error (exit 2) as fer-edge train's list
            raise OptionError("bad options:\n  " + "\n  ".join(problems))
        recipe = Recipe(epochs=args.epochs, max_steps_per_epoch=args.max_steps_per_epoch, batch_size=args.batch_size,
                        lr=args.lr, weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                        augment=args.augment, ema=args.ema, seed=args.seed, threads=args.threads,
                        device=args.device)
        with sigterm_as_interrupt():
            result = run_leaderboard(
                args.data, args.out, models, recipe, args.extra, args.calib_size,
                BenchSettings(seconds=args.bench_seconds, iters=args.bench_iters, warmup=args.bench_warmup,
                              n_images=args.n_images),
                console=err_console, rebench=args.rebench,
            )
    except FerEdgeError as e:
        err_console.print(f"error: {e}", highlight=False, markup=False)
        return 2 if isinstance(e, OptionError) else 1
    except InterruptedAfterWriting as e:
        err_console.print(f"interrupted after the leaderboard files were written ("
                          f"{', '.join(str(p) for p in e.paths.values())})", highlight=False, markup=False)
        return 130
    except KeyboardInterrupt:
        err_console.print(f"interrupted: the leaderboard files were not written; the runs, exports and bench reports "
                          f"finished so far are kept under {args.out}, and rerunning the same command goes on from "
                          "them", highlight=False, markup=False)
        return 130
    console.print(rich_table(result.document, console.width))
    if console.width < 150 and any(r.get("pareto") for r in result.rows):
        console.print("* on the Pareto front (ONNX Runtime INT8 accuracy vs latency, shared recipe)")
    # (paths and names: no markup, or a --out holding [/x] raised rich's MarkupError after the files were written)
    console.print(f"wrote {', '.join(str(p) for p in result.files.values())}", highlight=False, markup=False)
    if result.failed:
        from rich.markup import escape

        err_console.print(f"[bold red]{len(result.failed)} of {len(result.rows)} model(s) failed:[/] "
                          + escape(", ".join(r["name"] for r in result.failed)), highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    from fer_edge.console import run_script
    from fer_edge.utils import command_environment

    command_environment()  # as the fer-edge command: ONNX Runtime's telemetry off (a user's setting wins)
    sys.exit(run_script(main))  # a closed stdout (`| head`): exit 141 quietly, as fer-edge

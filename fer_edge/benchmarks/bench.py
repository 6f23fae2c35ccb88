"""``fer-edge bench``: latency, accuracy and parity of every artifact on every runtime and device here.

>>> from fer_edge.benchmarks.bench import run_bench
>>> report = run_bench(["runs/exp/export"], data="fer2013.csv.gz", split="PublicTest", seconds=2)
>>> report.write("reports/bench")          # report.json, report.csv, report.md, latency_vs_accuracy.png
>>> [r["status"] for r in report.rows]

Method
------
* Rows: every artifact x runtime x device x batch size. Each artifact's source
  checkpoint, run by PyTorch eager in FP32, is its reference (``reference: true`` rows):
  artifacts of several checkpoints are each compared with their own, and every row names
  its ``model`` and ``source_sha256`` (``--reference``: one checkpoint for all).
* Inputs: ``n_images`` images of the labelled split (a seeded subset when fewer than the
  split), through :func:`fer_edge.preprocess.normalize` with each artifact's own
  normalisation. The timing inputs of each row are preallocated once (the first
  ``batch`` images) and reused: the timed loop measures the runtime call alone
  (``time.perf_counter_ns`` around ``runtime.run(x)``), including any host/device copy
  the runtime makes.
* Per row: load time (constructor), first-inference time, ``warmup`` untimed calls;
  accuracy and parity once per artifact x runtime x device (largest batch), shown on
  each of its rows.
* Timing is interleaved: ``rounds`` rounds, each giving every loaded row one untimed
  call then its share of ``iters`` (or of ``seconds``) in turn, the order rotated each
  round, so drift (thermal, other load) hits every row alike. The garbage collector is
  off while timing. ``p50_spread_pct`` says how much the rounds' medians disagree.
* Threads are set explicitly for every runtime (``threads``, default: the physical
  cores this process may use) and each row records what the runtime reports using.
* ``peak_rss_mb`` is the process's peak resident memory once the row was loaded and
  validated (rows share one process so they can be interleaved: it only grows);
  ``rss_delta_mb`` is what loading that row added.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import math
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from fer_edge.benchmarks.artifacts import (
    CHECKPOINT_RUNTIME,
    CHECKPOINT_TARGET,
    MANIFEST_NAME,
    Artifact,
    check_unchanged,
    collect_artifacts,
    error_text,
    gate_failed,
    metadata_normalization,
    read_manifest,
    reference_groups,
    unfinished,
    unverified,
)
from fer_edge.benchmarks.report import BenchReport, artifact_tags, check_out_dir, model_labels, row_label
from fer_edge.errors import ArtifactError, CheckpointError, FerEdgeError
from fer_edge.preprocess import Normalization
from fer_edge.utils import check_not_in_data

DEFAULT_BATCHES = (1, 32)
DEFAULT_SECONDS = 2.0
DEFAULT_WARMUP = 10
DEFAULT_ROUNDS = 5
#: The lock file a bench holds in its ``--out`` while it runs (:func:`holding_out`).
LOCK_FILE = ".fer-edge-bench.lock"
#: What a bench's ``--out`` inside its image-folder ``--data`` would do (:func:`fer_edge.utils.check_not_in_data`).
BENCH_IN_DATA = ("the report's files would become part of that data set: in a class folder every later command on "
                 "it (this bench again among them) would read its latency_vs_accuracy.png as a face of that class")


@contextlib.contextmanager
def holding_out(out_dir: str | Path | None):
    """Hold ``OUT/.fer-edge-bench.lock`` (:func:`fer_edge.utils.hold_lock`, made with the folder where need be)
    while a bench runs: a second bench into the same ``--out`` is refused before any work, so two runs never both
    claim the report there. The folders it made are removed again when nothing was written into them. Nothing is
    held for ``None`` (no report written), nor on Windows (no ``fcntl``)."""
    from fer_edge.utils import hold_lock, release_lock

    if out_dir is None:
        yield
        return
    out = Path(out_dir)
    made = [q for q in (out, *out.parents) if not (q.exists() or q.is_symlink())]  # deepest first
    out.mkdir(parents=True, exist_ok=True)
    try:
        lock = hold_lock(out / LOCK_FILE)
    except BlockingIOError:
        raise FerEdgeError(f"{out}: another fer-edge bench is writing into it now (it holds {out / LOCK_FILE}); "
                           "wait for it to end, or choose another --out") from None
    try:
        yield
    finally:
        release_lock(out / LOCK_FILE, lock)
        for q in made:  # a bench that wrote nothing (an error, an interrupt) leaves no empty folder behind
            try:
                q.rmdir()
            except OSError:
                break


#: Devices some runtimes list that are not local hardware: never benchmarked by default.
REMOTE_DEVICES = frozenset({"AzureExecutionProvider"})

ProgressFn = Callable[[int, int, str], None]


# --- rows -----------------------------------------------------------------------------
def new_row(art: Artifact, runtime: str, device: str | None, batch: int, status: str = "skipped",
            reason: str = "", reference: bool = False, source: _Reference | None = None) -> dict:
    """A row with every schema field present (None until measured).

    ``source``: the reference checkpoint the artifact is compared with (its model and sha256
    name the row's model, so rows of several models stay apart). An artifact its runtime could
    not read (``read_error``) is not named after it: which checkpoint it came from is unknown.
    """
    if art.read_error:
        source = None
    return {
        "target": art.target, "precision": art.precision, "runtime": runtime, "device": device,
        "batch": int(batch), "status": status, "reason": reason, "threads": None,
        "load_ms": None, "first_inference_ms": None, "latency_ms": None, "throughput_ips": None,
        "peak_rss_mb": None, "accuracy": None, "macro_f1": None, "agreement": None,
        "max_abs_diff": None, "kl": None, "flips": None, "artifact": str(art.path),
        "size_bytes": art.size_bytes, "reference": reference,
        "model": art.model or (source.model if source is not None else None), "sha256": art.sha256,
        "source_sha256": (art.sha256 if art.is_checkpoint and art.sha256 else art.source.get("sha256"))
        or (source.sha256 if source is not None else None),
        "iters": None, "p50_spread_pct": None, "rss_delta_mb": None, "parity_failures": [],
        "runtime_info": None, "export_validation": art.export_validation,
    }



def _finite(v) -> float | None:
    """A float for JSON, None for NaN/inf (non-finite logits are reported by the parity reasons)."""
    v = float(v)
    return v if np.isfinite(v) else None


def _jsonable(v):
    """``v`` when JSON can hold it as is (nested dicts/lists included), else its ``str``."""
    import json

    try:
        json.dumps(v, allow_nan=False)
        return v
    except (TypeError, ValueError):
        return str(v)


def _device_aliases(device: str) -> set[str]:
    """Names ``--devices`` accepts for a runtime device: ``cpu`` selects CPU everywhere."""
    d = device.lower()
    out = {d}
    if d.endswith("executionprovider"):
        out.add(d[: -len("executionprovider")])
    if d == "cpu_only":
        out.add("cpu")
    if d.startswith("cuda:0") or d == "cuda":
        out.update({"cuda", "cuda:0", "gpu"})
    if d.startswith("gpu"):
        out.add("gpu")
    return out


def check_devices(devices: Sequence[str], runtimes: Sequence[str] | None = None) -> None:
    """Refuse (:class:`OptionError`, before any work) a requested device that none of ``runtimes`` (default: every
    registered one) knows on any machine: a typo such as ``cpus``. A known device missing here (``cuda`` on a
    machine without a GPU) is left to the bench, which skips its rows and says so. ``GPU.1`` / ``cuda:1`` count as
    their name before the dot or colon."""
    from fer_edge.errors import OptionError
    from fer_edge.runtimes import RUNTIMES, get_runtime
    from fer_edge.runtimes._common import device_name

    known: list[str] = []
    for name in runtimes or list(RUNTIMES):
        try:
            known += [d for d in get_runtime(name).known_devices() if d not in known]
        except FerEdgeError:  # a runtime that cannot be imported: its rows say so
            continue
    aliases = set().union(*(_device_aliases(d) for d in known)) if known else set()
    unknown = [d for d in devices
               if d.lower() not in aliases and device_name(d) not in aliases]
    remote = [d for d in unknown if d in REMOTE_DEVICES]
    if remote:
        raise OptionError(f"--devices: {', '.join(map(repr, remote))} is a remote (cloud) provider that ONNX Runtime "
                          "lists, not a device that runs a model on this machine")
    if unknown:
        which = f"--runtimes {','.join(runtimes)}" if runtimes else "any runtime"
        names: dict[str, str] = {}  # lower case -> as shown: names are matched in any case
        for d in known:
            short = d.removesuffix("ExecutionProvider")
            names.setdefault(short.lower(), short)
        names.pop("cpu", None)
        ort = any(d.endswith("ExecutionProvider") for d in known)
        raise OptionError(f"--devices: unknown device {', '.join(map(repr, unknown))} (not a device of {which}); "
                          f"valid (any case): cpu, {', '.join(names.values())}"
                          + (" (ONNX Runtime's with or without 'ExecutionProvider')" if ort else ""))


def check_runtimes(runtimes: Sequence[str] | None, arts: Sequence[Artifact]) -> None:
    """Refuse (:class:`OptionError`) ``runtimes`` none of which runs any of ``arts`` nor the reference checkpoints
    (PyTorch): every row would be left out, and the bench would load the data and run the references for a report
    with no row. Names among several that run nothing are left to the bench's notes."""
    from fer_edge.errors import OptionError

    if not runtimes:
        return
    others = list(dict.fromkeys(a.runtime for a in arts if a.runtime != CHECKPOINT_RUNTIME))
    if not any(name in (*others, CHECKPOINT_RUNTIME) for name in runtimes):
        one = len(runtimes) == 1
        raise OptionError(
            f"--runtimes {','.join(runtimes)}: none of the inputs runs in {'it' if one else 'them'}; they run in "
            f"{', '.join(others)}{' and ' if others else ''}{CHECKPOINT_RUNTIME} (the reference checkpoint): name "
            "one of those, or leave --runtimes out for all of them")


def is_cpu_device(device: str | None) -> bool:
    return device is not None and "cpu" in _device_aliases(device)


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MiB."""
    try:
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux
    except ImportError:  # Windows
        try:
            import psutil

            return psutil.Process().memory_info().peak_wset / 2**20
        except Exception:
            return None


def rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except Exception:
        return None


# --- inputs and reference ----------------------------------------------------------------
@dataclass
class BenchInputs:
    images: np.ndarray  # uint8 N x 48 x 48
    labels: np.ndarray  # int64 N
    indices: np.ndarray  # positions in the split
    split_size: int
    split: str = ""
    fingerprint: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    def normalized(self, norm: Normalization) -> np.ndarray:
        from fer_edge.preprocess import normalize

        key = (norm.mean, norm.std)
        if key not in self._cache:
            self._cache[key] = np.ascontiguousarray(normalize(self.images, norm))
        return self._cache[key]

    def timing_batch(self, norm: Normalization, batch: int) -> np.ndarray:
        """The first ``batch`` inputs (repeated when there are fewer), preallocated, contiguous float32."""
        x = self.normalized(norm)
        reps = -(-batch // len(x))
        return np.ascontiguousarray(np.concatenate([x] * reps)[:batch]) if reps > 1 else np.ascontiguousarray(x[:batch])


def load_inputs(data: str | Path, split: str | None, n_images: int | None, seed: int) -> BenchInputs:
    """The labelled images: the whole split, or a seeded stratified subset of ``n_images``."""
    from fer_edge.data import default_val_split, load_split, stratified_indices

    if n_images is not None and n_images < 1:
        raise FerEdgeError("--n-images must be at least 1")
    s = load_split(data, default_val_split(data, test_ok=True) if split is None else split)  # measures, selects nothing
    images = s.images.numpy()
    labels = s.labels.numpy()
    n = len(images)
    idx = np.arange(n) if n_images is None or n_images >= n else stratified_indices(labels, n_images, seed)
    return BenchInputs(np.ascontiguousarray(images[idx], dtype=np.uint8), labels[idx].astype(np.int64), idx, n,
                       split=s.split, fingerprint=dict(s.fingerprint))


def run_in_chunks(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int) -> np.ndarray:
    """Logits of all of ``x`` in chunks of ``batch`` images, never more than ``len(x)``: every chunk has one
    size (the last one padded by repeating its last image), so runtimes that compile per input shape (OpenVINO)
    see a single shape. The chunk size is at most ``len(x)``, so a huge ``--batch`` allocates no more than the
    images there are; fer-edge's exports all have a dynamic batch dimension, so no artifact needs a larger one."""
    batch = max(1, min(int(batch), len(x)))
    outs = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        out = np.asarray(run(np.ascontiguousarray(chunk)), dtype=np.float32)
        outs.append(out.reshape(out.shape[0], -1)[:n])
    return np.concatenate(outs)


# --- memory -----------------------------------------------------------------------------
def available_memory_bytes() -> int | None:
    """Memory the system can give this process now (Linux ``MemAvailable``: free plus reclaimable cache), in
    bytes; None when the OS does not say."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def bytes_per_image(model) -> int:
    """A lower bound of the memory one image takes while a runtime runs ``model`` (a PyTorch module) on a batch:
    its float32 input (the preallocated timing batch) plus the largest input + output of one layer, measured with
    forward hooks on one image in PyTorch. Every runtime holds at least that much per image at once (most hold
    more: the whole network's activations, workspace); it scales linearly with the batch."""
    import torch

    from fer_edge.constants import IMAGE_SIZE

    largest = 0

    def hook(_module, args, output):
        nonlocal largest
        tensors = [t for t in (*args, *(output if isinstance(output, (tuple, list)) else (output,)))
                   if isinstance(t, torch.Tensor)]
        largest = max(largest, sum(t.numel() * t.element_size() for t in tensors))

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return int(largest + IMAGE_SIZE * IMAGE_SIZE * 4)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_batch_memory(batch: int, per_image: int, model: str, available: int | None = None) -> None:
    """Refuse a timing batch that clearly cannot fit in memory (:func:`bytes_per_image` x ``batch``, a lower
    bound, above the memory available now) with a :class:`FerEdgeError` naming ``--batch``, the estimate and the
    available memory; else return (also when the OS does not say how much is available)."""
    available = available_memory_bytes() if available is None else available
    need = int(batch) * int(per_image)
    if available is not None and need > available:
        raise FerEdgeError(
            f"--batch {batch} cannot fit in memory: one timing batch of {model} needs at least {_gib(need)} "
            f"({per_image / 2**10:.0f} KiB per image: its input and the largest layer's activations, measured in "
            f"PyTorch), but {_gib(available)} is available; use a smaller --batch"
        )


# --- thresholds -------------------------------------------------------------------------
def thresholds_dict(thresholds) -> dict:
    """The full per-precision threshold table in force (the export gate's defaults where not overridden)."""
    from fer_edge import parity

    if isinstance(thresholds, parity.Thresholds):
        return {p.value: thresholds.to_dict() for p in parity.DEFAULT_THRESHOLDS}
    table = parity.with_overrides(None, thresholds or None)
    return {p.value: t.to_dict() for p, t in table.items()}


# --- default artifacts -------------------------------------------------------------------
def calibration_identity(data: str | Path) -> dict:
    """Which images the default export's INT8 is calibrated on: ``data``'s training split.

    ``{"file", "split", "sha256"}``: the resolved path and the split's content hash as
    :mod:`fer_edge.data` fingerprints it (the same ``data_sha256`` the manifest's calibration
    record holds).
    """
    from fer_edge.data import default_train_split, load_split

    fs = load_split(data, default_train_split(data), progress=False)
    return {"file": str(Path(fs.source).resolve()), "split": fs.split, "sha256": str(fs.fingerprint.get("sha256"))}


def _calibration_text(record: dict | None) -> str:
    if not record:
        return "no INT8 calibration"
    sha = str(record.get("data_sha256") or "?")[:12]
    return (f"INT8 calibrated on {record.get('count', '?')} images of {record.get('split', '?')} of "
            f"{record.get('file', '?')} (data sha256 {sha})")


def default_artifacts(notes: list[str], data: str | Path | None = None) -> list[Artifact]:
    """The shipped default model's artifacts: exported once into the cache, then reused.

    ``$FER_EDGE_CACHE_DIR/exports/<checkpoint>-<sha256[:12]>-calib-<key>/``, where ``key``
    identifies the calibration data (:func:`calibration_identity` of ``data``: int8 is
    calibrated on its training split), so another ``--data`` gets its own export; ``nocalib``
    without ``data``. A cached export whose files no longer match its manifest, or whose
    recorded calibration data is not ``data``'s, is refused. The notes say which data the
    INT8 artifacts were calibrated on.
    """
    import hashlib
    import json

    from fer_edge.data import cache_dir
    from fer_edge.exporters import export_artifacts
    from fer_edge.exporters.manifest import load_manifest
    from fer_edge.utils import sha256_path
    from fer_edge.weights import resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(None)
    except CheckpointError as e:
        raise ArtifactError(
            f"no artifacts given, and the shipped default model is not available ({e}); pass an export "
            "directory (`fer-edge export CHECKPOINT --out DIR`, then `fer-edge bench DIR`)"
        ) from None
    calib = calibration_identity(data) if data is not None else None
    calib_key = "nocalib" if calib is None else hashlib.sha256(
        json.dumps([calib["file"], calib["split"], calib["sha256"]]).encode()).hexdigest()[:12]
    out = cache_dir() / "exports" / f"{ckpt.stem}-{sha256_path(ckpt)[:12]}-calib-{calib_key}"
    cached = load_manifest(out / MANIFEST_NAME) if (out / MANIFEST_NAME).is_file() else None
    if cached is None or cached.get("complete") is False:  # none yet, or an interrupted export: (re)export
        result = export_artifacts(ckpt, out, calib_data=data, data_progress=False, raise_on_failure=False)
        record = (getattr(result, "manifest", None) or {}).get("calibration")
        notes.append(f"exported the shipped model {ckpt.name} into {out} ({_calibration_text(record)}; "
                     "reused next time with the same --data)")
        for f in result.failed:
            notes.append(f"export of the shipped model: {f['target']} {f['precision']} failed: {f['reason']}")
    else:
        record = cached.get("calibration")
        if calib is not None and record and record.get("data_sha256") not in (None, calib["sha256"]):
            raise ArtifactError(
                f"the cached export {out} was calibrated on {record.get('split')} of {record.get('file')} "
                f"(data sha256 {str(record.get('data_sha256'))[:12]}), not on {calib['split']} of {calib['file']} "
                f"(data sha256 {calib['sha256'][:12]}); delete {out} to export it again"
            )
        notes.append(f"benchmarking the shipped model's artifacts cached in {out} ({_calibration_text(record)})")
    return read_manifest(out / MANIFEST_NAME)


# --- planning ----------------------------------------------------------------------------
@dataclass
class _Reference:
    """One reference checkpoint: its FP32 logits on the inputs, its metrics and the gate of its artifacts."""

    path: Path
    sha256: str
    model: str
    labels: list[str]
    normalization: Normalization
    macs: int
    params: int
    logits: np.ndarray
    metrics: dict
    thresholds: object
    thresholds_source: dict
    artifacts: list[Artifact]

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "sha256": self.sha256, "model": self.model, "macs_per_image": int(self.macs),
            "params": int(self.params), "accuracy": float(self.metrics["accuracy"]),
            "macro_f1": float(self.metrics["macro_f1"]),
        }


@dataclass
class _Group:
    """One artifact x runtime x device: the rows of its batch sizes share accuracy and parity."""

    art: Artifact
    runtime: str
    cls: type
    device: str | None
    rows: list[dict]
    ref: _Reference | None = None
    loaded: dict = field(default_factory=dict)  # batch -> runtime instance


@dataclass
class _Live:
    row: dict
    rt: object
    x: np.ndarray
    rounds: list[list[int]] = field(default_factory=list)


def _drop_group(live: list[_Live], g: _Group) -> None:
    """Take ``g``'s rows out of ``live`` (in place) and let go of its loaded runtimes; other groups' rows stay, whatever
    their status (a parity-failed row is still timed)."""
    mine = {id(r) for r in g.rows}
    live[:] = [lv for lv in live if id(lv.row) not in mine]
    g.loaded.clear()


def _plan(entries: list[tuple], batches: Sequence[int], runtimes: Sequence[str] | None,
          devices: Sequence[str] | None) -> tuple[list[dict], list[_Group]]:
    """Rows and groups of ``entries``: ``(artifact, is_reference)`` or ``(artifact, is_reference, _Reference)``."""
    from fer_edge.runtimes import get_runtime

    rows: list[dict] = []
    groups: list[_Group] = []

    for entry in entries:
        art, ref = entry[0], entry[1]
        src = entry[2] if len(entry) > 2 else None

        def row(dev, b, status, reason):
            return new_row(art, name, dev, b, status, reason, ref, src)

        def skipped(dev, reason):
            rows.extend(row(dev, b, "skipped", reason) for b in batches)

        name = art.runtime
        if runtimes and name not in runtimes:
            continue
        try:
            cls = get_runtime(name)
        except FerEdgeError as e:
            skipped(None, f"runtime missing: {e}")
            continue
        try:
            ok, why = cls.available()
        except Exception as e:
            ok, why = False, f"runtime missing: {error_text(e)}"
        if not ok:
            skipped(None, why or "runtime unavailable")
            continue
        try:
            have = [str(d) for d in cls.devices()]
        except Exception as e:
            rows.extend(row(None, b, "failed", f"listing devices: {error_text(e)}") for b in batches)
            continue
        chosen: list[str] = []
        if devices:
            for req in devices:
                match = [d for d in have if req.lower() in _device_aliases(d)]
                if not match:
                    skipped(req, f"device absent ({name} devices here: {', '.join(have) or 'none'})")
                elif match[0] not in chosen:
                    chosen.append(match[0])
        else:
            chosen = [d for d in have if d not in REMOTE_DEVICES]
            if not chosen:
                skipped(None, f"device absent ({name} lists no local device)")
        for dev in chosen:
            g_rows = [row(dev, b, "ok", "") for b in batches]
            rows.extend(g_rows)
            groups.append(_Group(art, name, cls, dev, g_rows, src))
    return rows, groups


# --- the bench ---------------------------------------------------------------------------
def _parse_md_field(md: dict, key: str):
    import json

    v = md.get(key)
    if v is None or v == "":
        return None
    return v if isinstance(v, (list, dict)) else json.loads(v)


def effective_rounds(rounds: int, iters: int | None) -> int:
    """The interleaved rounds a bench times (and records): no more than ``iters`` timed calls."""
    return rounds if iters is None else max(1, min(rounds, iters))


def _run_bench(
    artifacts: Sequence[str | Path] | None = None,
    *,
    data: str | Path,
    split: str | None = None,
    reference: str | Path | None = None,
    runtimes: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    threads: int | None = None,
    warmup: int = DEFAULT_WARMUP,
    iters: int | None = None,
    seconds: float | None = DEFAULT_SECONDS,
    rounds: int = DEFAULT_ROUNDS,
    n_images: int | None = None,
    seed: int = 0,
    thresholds=None,
    threshold_overrides: dict | None = None,
    parity_gate: bool = True,
    runtime_options: dict[str, dict] | None = None,
    out_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    on_warning: Callable[[str], None] | None = None,
    on_written: Callable[[BenchReport], None] | None = None,
) -> BenchReport:
    """Benchmark artifacts (dirs, manifests, files; None: the shipped model's) and return the report.

    ``iters`` (timed calls per row) wins over ``seconds`` (time budget per row). Timing
    is split over ``rounds`` interleaved rounds. ``thresholds``: the parity thresholds, as
    :func:`fer_edge.parity.check` takes them, used as given; without them, the export gate's
    (:func:`fer_edge.parity.resolve_gate`: the defaults, a shipped reference weight's own gate,
    then ``threshold_overrides``, ``{threshold: {precision: value}}``). ``runtime_options``: extra
    keyword options per runtime name, passed to its constructor. With ``out_dir`` the
    four report files are written there (an earlier report they replace is named in a note), and a second bench
    into it is refused while this one runs (:func:`holding_out`); an ``out_dir`` inside an image-folder ``data``
    is refused. Never raises for one row: a row that fails
    to load or run is ``failed`` with the error, and the others go on. The process's torch
    thread count is restored afterwards. Ctrl-C or SIGTERM (turned into ``KeyboardInterrupt``,
    as in ``fer-edge export``) stops it with ``KeyboardInterrupt``: before the report is
    written, ``out_dir`` is left as it was; one arriving while it is written waits until all
    four files are. ``on_warning`` is called with each warning known before the measuring starts (unverified
    artifacts, more threads than cores, a parity sample smaller than the export gate's), as soon as it is known;
    every warning is in the report's ``warnings`` as well. ``on_written`` is called with the report once its files
    are in ``out_dir`` (before an interrupt held over the writes is raised): how a caller tells that the report there
    is this run's, whatever another run wrote into ``out_dir`` meanwhile.
    """
    import torch

    from fer_edge import __version__, parity
    from fer_edge.benchmarks.environment import default_threads, describe_environment, usable_cores
    from fer_edge.benchmarks.stats import compute_limit, latency_summary, p50_spread_pct
    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.exporters.calibration import MIN_VAL_SIZE
    from fer_edge.metrics import classification_metrics
    from fer_edge.models import count_macs, count_params

    # one name given as a string is that name (a str is a sequence of letters: "onnxruntime" read as o,n,n,x,...)
    runtimes = [runtimes] if isinstance(runtimes, str) else runtimes
    devices = [devices] if isinstance(devices, str) else devices
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1:
        raise FerEdgeError("batch sizes must be positive integers")
    if iters is None and (seconds is None or not math.isfinite(seconds) or seconds <= 0):
        raise FerEdgeError("give --iters N or --seconds S (> 0)")
    if iters is not None and iters < 1:
        raise FerEdgeError("--iters must be at least 1")
    if warmup < 0 or rounds < 1:
        raise FerEdgeError("--warmup must be >= 0 and rounds >= 1")
    threads = int(threads) if threads else default_threads()
    rounds = effective_rounds(rounds, iters)
    runtime_options = runtime_options or {}
    notes: list[str] = []

    parity.validate_thresholds(thresholds, overrides=threshold_overrides)  # before the default export, too
    if devices:
        check_devices(devices, runtimes)
    if out_dir is not None:
        check_out_dir(out_dir)  # before any work: a bad --out must not cost a whole bench
        check_not_in_data(out_dir, [("given as --data", data)], FerEdgeError, BENCH_IN_DATA)

    with holding_out(out_dir):  # a second bench into this --out is refused until this one ends
        env = describe_environment()
        arts = collect_artifacts(list(artifacts)) if artifacts else default_artifacts(notes, data)
        check_runtimes(runtimes, arts)  # before the data and the references: a --runtimes that runs nothing is refused
        ref_groups, ref_notes = reference_groups(arts, reference)
        notes += ref_notes
        warnings: list[str] = []

        def warn(text: str) -> None:
            warnings.append(text)
            if on_warning is not None:
                on_warning(text)

        for found, why in (
            (unverified(arts), "have no manifest.json listing them, so they were neither verified (SHA-256) nor "
                               "parity-gated at export time (an interrupted export leaves such files)"),
            (unfinished(arts), "come from an export run that did not finish (\"complete\": false in its manifest for "
                               "that run): verified (SHA-256) but perhaps not parity-gated at export time"),
        ):
            if found:
                warn(f"{len(found)} artifact file(s) {why}: " + ", ".join(str(a.path) for a in found))
        failed_gate = gate_failed(arts)
        if failed_gate:
            warn(f"{len(failed_gate)} artifact file(s) failed the parity gate of the export that wrote them (their "
                 "manifest's validation status is 'failed'; the rows record it as export_validation): "
                 + "; ".join(f"{a.path} ({a.export_validation_reason})" if a.export_validation_reason else str(a.path)
                             for a in failed_gate))
        cores = usable_cores()
        if threads > cores:
            warn(f"--threads {threads} is more than the {cores} CPU core(s) this process may use: the threads share "
                 "cores, so latency and throughput say little about a machine with that many cores")

        # refuse a timing batch that clearly cannot fit in memory before loading data or any runtime
        ckpts = [load_checkpoint(rg.path) for rg in ref_groups]
        for ckpt in ckpts:
            check_batch_memory(batches[-1], bytes_per_image(ckpt.build_model()), ckpt.model_name)

        torch.manual_seed(seed)
        np.random.seed(seed)
        torch.set_num_threads(threads)
        inputs = load_inputs(data, split, n_images, seed)
        if n_images is not None and n_images > inputs.split_size:
            notes.append(f"--n-images {n_images} is more than the {inputs.split_size} images of the split: all of them "
                         "were used")
        # (only when an exported artifact is gated: a checkpoint compared with itself cannot fail)
        if parity_gate and len(inputs.labels) < MIN_VAL_SIZE and any(not a.is_checkpoint for a in arts):
            warn(small_sample_text(len(inputs.labels), MIN_VAL_SIZE, int(inputs.split_size)))
        refs: list[_Reference] = []
        entries: list[tuple[Artifact, bool, _Reference]] = []
        seen: set[str] = set()
        for rg, ckpt in zip(ref_groups, ckpts):
            model = ckpt.build_model()
            with torch.no_grad():
                logits = run_in_chunks(lambda x: model(torch.from_numpy(x)).numpy(),
                                       inputs.normalized(ckpt.normalization), 256)
            gate, gate_source = parity.resolve_gate(ckpt.sha256, thresholds, threshold_overrides)
            ref = _Reference(
                Path(rg.path), ckpt.sha256, ckpt.model_name, list(ckpt.labels), ckpt.normalization,
                int(count_macs(model)), int(count_params(model)), logits,
                classification_metrics(inputs.labels, logits.argmax(1), ckpt.labels), gate, gate_source,
                rg.artifacts)
            refs.append(ref)
            ref_art = Artifact(Path(rg.path), CHECKPOINT_TARGET, "fp32", CHECKPOINT_RUNTIME,
                               size_bytes=Path(rg.path).stat().st_size, sha256=ref.sha256, labels=list(ckpt.labels),
                               normalization=ckpt.normalization, model=ckpt.model_name)
            for art, is_ref in [(ref_art, True)] + [(x, False) for x in rg.artifacts]:
                if art.key not in seen:
                    seen.add(art.key)
                    entries.append((art, is_ref, ref))
            del model
        rows, groups = _plan(entries, batches, runtimes, devices)
        for name in runtimes or []:
            if not any(r["runtime"] == name for r in rows):
                notes.append(f"--runtimes {name}: no artifact among the inputs runs in it")

        n_load = sum(len(g.rows) for g in groups)
        total = n_load + rounds * n_load
        done = 0

        def tick(msg: str, n: int = 1) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(min(done, total), total, msg)

        if progress is not None:
            progress(0, total, "loading")

        def fail_group(g: _Group, reason: str) -> None:
            """``g``'s rows still ok fail with ``reason`` and leave the timing; only this group's: earlier groups'
            rows (parity-failed ones too) are timed."""
            for row in g.rows:
                if row["status"] == "ok":
                    row["status"], row["reason"] = "failed", reason
                    tick("", rounds)
            _drop_group(live, g)

        live: list[_Live] = []
        for g in groups:
            ref = g.ref
            label = f"{g.art.target} {g.art.precision} / {g.runtime} / {g.device}"
            opts = dict(runtime_options.get(g.runtime, {}))
            norm = g.art.normalization
            labels = g.art.labels
            for row in g.rows:
                b = row["batch"]
                tick(f"load {label} b{b}")
                rss0 = rss_mb()
                try:
                    t0 = time.perf_counter_ns()
                    rt = g.cls(g.art.path, device=g.device, threads=threads, batch_hint=b, **opts)
                    row["load_ms"] = (time.perf_counter_ns() - t0) / 1e6
                    if norm is None or labels is None:
                        md = dict(rt.metadata() or {})
                        norm = norm or metadata_normalization(md)
                        labels = labels or _parse_md_field(md, "labels")
                    if norm is None:
                        norm = ref.normalization
                        notes.append(f"{g.art.path.name}: no normalisation in its metadata; used the reference's")
                    if labels is not None and list(labels) != list(ref.labels):
                        raise ArtifactError(f"labels {list(labels)} differ from the reference's {list(ref.labels)}")
                    x = inputs.timing_batch(norm, b)
                    t0 = time.perf_counter_ns()
                    out = np.asarray(rt.run(x))
                    row["first_inference_ms"] = (time.perf_counter_ns() - t0) / 1e6
                    if out.shape[0] != b or out.reshape(b, -1).shape[1] != len(ref.labels):
                        raise FerEdgeError(f"output shape {tuple(out.shape)}, expected ({b}, {len(ref.labels)})")
                    info = dict(rt.describe() or {})
                    row["runtime_info"] = {str(k): _jsonable(v) for k, v in info.items()}
                    row["threads"] = int(info["threads"]) if isinstance(info.get("threads"), int) else threads
                    for _ in range(warmup):
                        rt.run(x)
                except Exception as e:  # one failing row never stops the others
                    row["status"], row["reason"] = "failed", error_text(e)
                    tick("", rounds)
                    continue
                r1 = rss_mb()
                row["rss_delta_mb"] = (r1 - rss0) if (r1 is not None and rss0 is not None) else None
                g.loaded[b] = rt
                live.append(_Live(row, rt, x))
            if not g.loaded:
                continue
            try:  # what was loaded is what was verified (and what the rows' sha256 names), not a file written since
                check_unchanged(g.art)
            except FerEdgeError as e:
                fail_group(g, error_text(e))
                continue
            # accuracy and parity: once per artifact x runtime x device, on its largest loaded batch
            b = max(g.loaded)
            try:
                logits = run_in_chunks(g.loaded[b].run, inputs.normalized(norm), b)
                stats = parity.compare(ref.logits, logits, labels=inputs.labels)
                m = classification_metrics(inputs.labels, logits.argmax(1), ref.labels)
                failures = list(parity.check(stats, g.art.precision, ref.thresholds))
            except Exception as e:
                fail_group(g, f"validation: {error_text(e)}")
                continue
            for row in g.rows:
                row.update(accuracy=_finite(m["accuracy"]), macro_f1=_finite(m["macro_f1"]),
                           agreement=_finite(stats.agreement), max_abs_diff=_finite(stats.max_abs_diff),
                           kl=_finite(stats.kl), flips=int(stats.flips), parity_failures=failures)
                if row["status"] == "ok":
                    row["peak_rss_mb"] = peak_rss_mb()
                    if failures:
                        row["status"], row["reason"] = "parity-failed", "; ".join(failures)

        # interleaved timing
        tags = artifact_tags(rows)
        budget_ns = None if iters is not None else int(seconds * 1e9 / rounds)
        gc_was = gc.isenabled()
        gc.collect()
        gc.disable()
        try:
            for r in range(rounds):
                quota = None if iters is None else iters // rounds + (1 if r < iters % rounds else 0)
                k = r % len(live) if live else 0
                for lv in live[k:] + live[:k]:
                    if lv.row["status"] == "failed":
                        continue
                    tick(f"round {r + 1}/{rounds}: {row_label(lv.row, tags=tags)} b{lv.row['batch']}")
                    buf: list[int] = []
                    try:
                        timed_turn(lv.rt, lv.x, buf, quota, budget_ns)
                    except Exception as e:
                        lv.row["status"], lv.row["reason"] = "failed", f"timing: {error_text(e)}"
                        tick("", rounds - r - 1)
                        continue
                    lv.rounds.append(buf)
        finally:
            if gc_was:
                gc.enable()

        for lv in live:
            row = lv.row
            if row["status"] == "failed":
                continue
            samples = [s for rnd in lv.rounds for s in rnd]
            lat = latency_summary(samples)
            row["latency_ms"] = lat
            row["iters"] = len(samples)
            row["throughput_ips"] = row["batch"] * 1000.0 / lat["mean"] if lat["mean"] > 0 else None
            row["p50_spread_pct"] = p50_spread_pct(lv.rounds)
        live.clear()
        for g in groups:
            g.loaded.clear()

        # how far the fastest CPU row (per image, at its p50) is from the compute limit
        cl = None
        cpu_rows = [r for r in rows if r["status"] in ("ok", "parity-failed") and r["latency_ms"]
                    and r["latency_ms"]["p50"] > 0 and is_cpu_device(r["device"])]
        if cpu_rows:
            fastest = min(cpu_rows, key=lambda r: r["latency_ms"]["p50"] / r["batch"])
            group = next(g for g in groups if any(r is fastest for r in g.rows))
            macs, why = row_macs(group.art, group.ref, refs)
            cores = min(fastest["threads"] or threads, env["cpu"].get("usable_cores") or threads)
            if macs is None:
                notes.append(f"compute limit: not estimated for the fastest CPU row "
                             f"{row_label(fastest, model_labels(rows), tags)} batch {fastest['batch']}: {why}")
            per_second = fastest["batch"] * 1000.0 / fastest["latency_ms"]["p50"]
            cl = None if macs is None else compute_limit(macs, per_second, cores, env,
                                                         precision=fastest.get("precision") or "fp32")
            if cl is not None:
                cl["row"] = f"{row_label(fastest, model_labels(rows), tags)} batch {fastest['batch']}"
                cl["basis"] = "p50 latency per image"

        first = refs[0]
        report = BenchReport(
            environment=env,
            settings={
                "data": str(data), "split": inputs.split, "data_sha256": inputs.fingerprint.get("sha256"),
                "n_images": int(len(inputs.labels)),
                "split_size": int(inputs.split_size), "batches": batches, "threads": threads, "warmup": int(warmup),
                "iters": iters, "seconds": None if iters is not None else float(seconds), "rounds": int(rounds),
                "seed": int(seed), "parity_gate": bool(parity_gate), "thresholds": thresholds_dict(first.thresholds),
                "thresholds_source": first.thresholds_source,
                "runtimes": list(runtimes) if runtimes else None, "devices": list(devices) if devices else None,
                "artifacts": [str(a) for a in artifacts] if artifacts else None,
            },
            reference=first.to_dict(),
            references=[{**x.to_dict(), "thresholds": thresholds_dict(x.thresholds),
                         "thresholds_source": x.thresholds_source} for x in refs],
            rows=rows,
            compute_limit=cl,
            notes=list(dict.fromkeys(notes)),
            warnings=warnings,
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            fer_edge_version=__version__,
        )
        if out_dir is not None:
            from fer_edge.utils import interrupts_deferred

            with interrupts_deferred():  # the four files are written together: an interrupt waits for the last one
                report.write(out_dir)
                if on_written is not None:
                    on_written(report)
        return report


@functools.wraps(_run_bench)
def run_bench(*args, **kwargs) -> BenchReport:
    import torch

    from fer_edge.utils import sigterm_as_interrupt

    before = torch.get_num_threads()
    try:
        with sigterm_as_interrupt():
            return _run_bench(*args, **kwargs)
    finally:
        torch.set_num_threads(before)


def small_sample_text(n: int, minimum: int, split_size: int) -> str:
    """Why a parity gate on ``n`` images (fewer than the export gate's ``minimum``) is a coarse one, and what would
    help given the split's ``split_size`` images."""
    if split_size >= minimum:
        advice = (f"leave --n-images out to gate on all {split_size} images of the split, as export does (at "
                  f"{minimum}, the least it takes, a 0.5-point accuracy-drop limit is still only "
                  f"{0.005 * minimum:.1f} images)")
    elif split_size > n:
        advice = (f"leave --n-images out to use all {split_size} images of the split (still fewer than {minimum}; "
                  "a larger data set gives a tighter gate)")
    else:
        advice = f"the split holds only {split_size} images: a larger data set gives a tighter gate"
    return (f"the parity gate runs on {n} images, fewer than the {minimum} the export gate requires: one flip "
            f"moves agreement by {100 / n:.2f} points, so a row may fail (or pass) by chance; {advice}, or "
            "--no-parity-gate")


def row_macs(art: Artifact, ref: _Reference, refs: list[_Reference]) -> tuple[int | None, str]:
    """MACs per image of the model ``art`` was exported from, and, when unknown (None), why.

    A checkpoint, or an artifact whose source checkpoint (manifest ``source``, else its embedded
    ``source_sha256``) is one of the references: that reference's MACs. An artifact of another checkpoint
    (``--reference`` names a different model): that checkpoint's, counted on it when its file can be found.
    An artifact whose source is unknown: its reference's (the row is attributed to that model).
    """
    from fer_edge.benchmarks.artifacts import _metadata_source, _source_checkpoint

    if art.is_checkpoint:
        return next((r.macs for r in refs if r.sha256 == art.sha256), ref.macs), ""
    source = dict(art.source) if (art.source.get("sha256") or art.source.get("path")) else {
        **art.source, **_metadata_source(art)}
    sha = source.get("sha256")
    if not sha and not source.get("path"):
        return ref.macs, ""
    same = next((r for r in refs if r.sha256 == sha), None)
    if same is not None:
        return same.macs, ""
    try:
        from fer_edge.checkpoint import load_checkpoint
        from fer_edge.models import count_macs

        probe = Artifact(art.path, art.target, art.precision, art.runtime, source=source, manifest=art.manifest)
        return int(count_macs(load_checkpoint(_source_checkpoint(probe)).build_model())), ""
    except FerEdgeError as e:
        model = source.get("model") or "its model"
        return None, (f"it comes from {model} (sha256 {str(sha or '?')[:12]}), not from the reference, and the "
                      f"MACs of that checkpoint are unknown here ({e})")


def timed_turn(rt, x: np.ndarray, buf: list[int], quota: int | None, budget_ns: int | None) -> None:
    """One row's turn in a round: one untimed call, then ``quota`` timed calls or ``budget_ns`` of them."""
    run = rt.run
    clock = time.perf_counter_ns
    run(x)
    if quota is not None:
        for _ in range(quota):
            t0 = clock()
            run(x)
            buf.append(clock() - t0)
        return
    end = clock() + budget_ns
    while True:
        t0 = clock()
        run(x)
        t1 = clock()
        buf.append(t1 - t0)
        if t1 >= end:
            break


def gate_failures(report: BenchReport) -> list[str]:
    """One line per parity-failed row: what the parity gate refuses."""
    labels, tags = model_labels(report.rows), artifact_tags(report.rows)
    return [f"{row_label(r, labels, tags)} batch {r['batch']}: {r['reason']}" for r in report.parity_failed]


def failed_rows(report: BenchReport) -> list[str]:
    """One line per ``failed`` row (could not load, run or be validated): each fails the run."""
    labels, tags = model_labels(report.rows), artifact_tags(report.rows)
    return [f"{row_label(r, labels, tags)} batch {r['batch']}: {r['reason']}" for r in report.failed]


def check_outcome(report: BenchReport, parity_gate: bool = True) -> None:
    """Raise what makes ``fer-edge bench`` exit 1, else return.

    Exit 1 when no row was measured, when any row ``failed`` (an artifact that cannot be
    loaded or run is an error, not a result), or, with ``parity_gate``, when a row is
    ``parity-failed``. ``skipped`` rows (runtime, platform or device missing here) never fail it.
    """
    from fer_edge.errors import ParityError

    if not any(r["status"] in ("ok", "parity-failed") for r in report.rows):
        raise FerEdgeError("no row could be measured (see the status column)")
    failed = failed_rows(report)
    gate = gate_failures(report) if parity_gate else []
    parts = []
    if failed:
        parts.append(f"{len(failed)} row(s) failed (could not load or run the artifact):\n  " + "\n  ".join(failed))
    if gate:
        parts.append(f"{len(gate)} row(s) failed the parity gate (use --no-parity-gate to accept):\n  "
                     + "\n  ".join(gate))
        from fer_edge.exporters.calibration import MIN_VAL_SIZE

        settings = report.settings or {}
        size = settings.get("split_size")
        n = min(settings["n_images"], size) if isinstance(settings.get("n_images"), int) and isinstance(size, int) \
            else size
        if isinstance(n, int) and isinstance(size, int) and n < MIN_VAL_SIZE:  # coarse: say so, it still fails
            parts.append(f"note: {small_sample_text(n, MIN_VAL_SIZE, size)}")
    if parts:
        raise (FerEdgeError if failed else ParityError)("\n".join(parts))


if __name__ == "__main__":
    from fer_edge.benchmarks import not_a_script

    raise SystemExit(not_a_script("bench"))

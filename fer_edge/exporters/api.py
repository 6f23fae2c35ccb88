"""The library entry point: :func:`export` a checkpoint to every requested target and precision.

    from fer_edge.exporters import export
    result = export("runs/x/best.pt", targets=["onnx", "openvino"], precisions=["fp32", "int8"],
                    out_dir="exports", calib_data="fer2013.csv.gz")
    result.manifest_path, [a.status for a in result.artifacts]

A target that fails does not stop the others. After writing the manifest, ``export``
raises :class:`~fer_edge.errors.ExportError` (a target failed) or
:class:`~fer_edge.errors.ParityError` (an artifact failed the parity gate) unless
``raise_on_failure=False``; the exception's ``result`` attribute holds the result.
"""
from __future__ import annotations

import numbers
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from fer_edge.data.loading import check_data_source
from fer_edge.errors import DataError, ExportError, FerEdgeError, OptionError, ParityError
from fer_edge.exporters import calibration as _cal
from fer_edge.exporters import validate as _val
from fer_edge.exporters.base import ExportRequest, example_input
from fer_edge.exporters.manifest import (FORMAT, MANIFEST_NAME, carry_over, file_record, files_unchanged,
                                         group_key, now_iso, run_record, tool_versions,
                                         write_manifest)
from fer_edge.exporters.metadata import build_metadata
from fer_edge.exporters.registry import get_exporter
from fer_edge.metrics import check_scorable, to_model_order
from fer_edge.targets import TARGETS, Precision, Target
from fer_edge.utils import interrupts_deferred, path_inside, sigterm_as_interrupt

#: Longest failure reason kept (converter errors can be pages long).
MAX_REASON = 600


@dataclass
class ProgressEvent:
    """Sent to the ``progress`` callback before each step; ``index`` counts steps from 0 of ``total``."""

    stage: str  # "export" | "validate" | "done"
    target: str
    precision: str
    index: int
    total: int


@dataclass
class ArtifactResult:
    target: str
    precision: str
    variant: str
    path: Path
    size_bytes: int
    sha256: str
    export_seconds: float
    validation: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.validation.get("status", _val.NOT_VALIDATED))


@dataclass
class ExportResult:
    out_dir: Path
    manifest_path: Path
    manifest: dict
    artifacts: list[ArtifactResult]
    failed: list[dict]  # {"target", "precision", "reason"}
    skipped: list[dict]
    warnings: list[str]

    @property
    def parity_failures(self) -> list[ArtifactResult]:
        return [a for a in self.artifacts if a.status == _val.FAILED]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.parity_failures

    def raise_for_failures(self) -> None:
        msgs = [f"{f['target']} {f['precision']}: export failed: {f['reason']}" for f in self.failed]
        msgs += [f"{a.path.name}: parity gate failed: {a.validation.get('reason')}" for a in self.parity_failures]
        if not msgs:
            return
        err_cls = ExportError if self.failed else ParityError
        err = err_cls(
            f"{len(msgs)} problem(s) (manifest {self.manifest_path} marks them):\n  " + "\n  ".join(msgs)
        )
        err.result = self  # type: ignore[attr-defined]
        raise err


def _short(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}" if not isinstance(e, FerEdgeError) else str(e)
    msg = " ".join(msg.split())
    return msg if len(msg) <= MAX_REASON else msg[: MAX_REASON - 3] + "..."


def _valid_targets() -> str:
    return ", ".join([*TARGETS, "all"])


def _resolve_targets(targets) -> list[Target]:
    """The targets named (every name checked, ``"all"`` among them too); an empty list or an unknown name is refused
    with the valid names."""
    if targets is None:
        return list(TARGETS.values())
    if not isinstance(targets, (str, Target, Iterable)):
        raise FerEdgeError(f"targets takes target names ({_valid_targets()}), got {targets!r}")
    names = [targets] if isinstance(targets, (str, Target)) else list(targets)
    if not names:
        raise FerEdgeError(f"targets is empty: name one or more of {_valid_targets()} (None: all)")
    out: list[Target] = []
    every = False
    for n in names:
        if isinstance(n, Target):
            t = n
        elif isinstance(n, str) and n == "all":
            every = True
            continue
        elif isinstance(n, str) and n in TARGETS:
            t = TARGETS[n]
        else:
            raise FerEdgeError(f"unknown target {n!r}; valid: {_valid_targets()}")
        if t not in out:
            out.append(t)
    return list(TARGETS.values()) if every else out


#: An artifact's validation reason while its validation has not finished (what an interrupted export leaves).
VALIDATION_UNFINISHED = "not validated: the export stopped before this artifact's validation finished"
#: The key of an earlier manifest entry an export run is replacing now (its ``run`` and the entry's own
#: ``validation``), and the validation such an entry is listed with meanwhile: its file may already be the new one.
BEING_REPLACED_KEY = "being_replaced"
BEING_REPLACED = ("not validated: an export run that had not finished was writing its replacement, so the file may "
                  "already be the new one")
#: Why a default export (no ``--precision``) leaves int8 out when it has no calibration images.
INT8_NEEDS_CALIBRATION = "int8 needs calibration images: add --calib-data PATH (a FER2013 CSV or image folder)"
#: A skipped (target, precision)'s ``code`` in the manifest: what callers branch on (``reason`` is for people).
SKIP_NEEDS_CALIBRATION = "needs-calibration"
SKIP_UNSUPPORTED = "unsupported-precision"


def _resolve_precisions(precisions) -> list[Precision]:
    if precisions is None:
        return list(Precision)
    valid = ", ".join(x.value for x in Precision)
    if not isinstance(precisions, (str, Precision, Iterable)):
        raise FerEdgeError(f"precisions takes precision names ({valid}), got {precisions!r}")
    items = [precisions] if isinstance(precisions, (str, Precision)) else list(precisions)
    if not items:
        raise FerEdgeError(f"precisions is empty: name one or more of {valid} (None: all)")
    out: list[Precision] = []
    for p in items:
        try:
            pr = Precision(p)
        except ValueError:
            raise FerEdgeError(f"unknown precision {p!r}; valid: {valid}") from None
        if pr not in out:
            out.append(pr)
    return out


#: Why artifacts are not validated when no validation data was given or found.
NO_VALIDATION_DATA = "no validation data (pass --val-data or --calib-data)"


def _validation_source(val_data, val_split, calib_data, ckpt) -> tuple[Path | None, str | None, str, str]:
    """Where the parity gate's images come from: (data, split (None: its validation split), why it was chosen,
    why there is none). In order: ``val_data``, the calibration data, the checkpoint's recorded validation data
    (``ckpt.data["val"]``: its ``source`` and ``split``), which must exist on this machine."""
    if val_data is not None:
        return Path(val_data), val_split, "--val-data", ""
    if calib_data is not None:
        return Path(calib_data), val_split, "--calib-data", ""
    rec = (ckpt.data or {}).get("val")
    src = rec.get("source") if isinstance(rec, dict) else None
    if not src:
        return None, None, "", NO_VALIDATION_DATA
    if not Path(src).exists():
        what = ", ".join(x for x in (f"split {rec['split']}" if rec.get("split") else "",
                                     f"{rec['n']:,} images" if isinstance(rec.get("n"), int) else "") if x)
        return None, None, "", (f"recorded validation data {src}{f' ({what})' if what else ''} not found here; "
                                "pass --val-data")
    return Path(src), val_split or rec.get("split"), "the checkpoint's recorded validation data", ""


def _held_out_warnings(vset, vdata: Path, calib, ckpt) -> list[str]:
    """Warnings when the parity gate's images are not held out: the data's training split, the split this
    checkpoint was trained on (by the SHA-256 of its recorded ``data.train``), or the calibration images (by
    name, or by SHA-256 under another name: a CSV's ``Training`` and an image folder's ``train``)."""
    from fer_edge.data import default_train_split

    rec = vset.record
    where = f"{rec['split']} of {rec['file']}"
    sha = rec.get("data_sha256")
    train = (ckpt.data or {}).get("train")
    train_sha = train.get("sha256") if isinstance(train, dict) else None
    try:
        train_split = default_train_split(vdata)
    except FerEdgeError:
        train_split = None
    out: list[str] = []
    if sha and train_sha and sha == train_sha:
        out.append(f"the parity gate runs on {where}, the images this checkpoint was trained on (the SHA-256 of "
                   "its recorded training data): the parity figures are not on held-out images")
    elif rec["split"] == train_split:
        out.append(f"the parity gate runs on {where}, the data's training split: the parity figures are not on "
                   "held-out images (leave --val-split out for the validation split)")
    if calib is not None:
        crec = calib.record
        if (crec["file"], crec["split"]) == (rec["file"], rec["split"]):
            out.append(f"calibration and validation both sample {where}: the parity figures are not on held-out "
                       "images")
        elif sha and crec.get("data_sha256") == sha:
            out.append(f"calibration ({crec['split']} of {crec['file']}) and validation ({where}) are the same "
                       "images under other names (the same SHA-256): the parity figures are not on held-out images")
    return out


def _leftover_temps(out: Path) -> list[str]:
    """Names of temporary files or folders (``.tmp-<stem>-*``) in ``out``: what an export killed mid-write left
    (or what one running now is writing)."""
    try:
        return sorted(p.name for p in out.iterdir() if p.name.startswith(".tmp-"))
    except OSError:
        return []


#: Characters no Windows file name may contain (nor a control character), and the device names Windows opens for a
#: file whose name before its first dot is one of them: :func:`check_name` refuses both on every system.
_NOT_PORTABLE = frozenset('<>:"|?*')
_WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL",
                              *(f"{d}{i}" for d in ("COM", "LPT") for i in "0123456789\u00b9\u00b2\u00b3")})


def check_name(name: str | None) -> None:
    """Refuse a ``--name`` that is not a plain file stem (it would write outside ``--out``, or nowhere sensible):
    an :class:`~fer_edge.errors.OptionError`, a usage error (exit status 2), as the value is wrong on its own."""
    from fer_edge.errors import OptionError

    if name is None:
        return
    if not isinstance(name, str):
        raise OptionError(f"--name takes a file stem (a string), got {name!r}")
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if (not name.strip() or name.startswith(".") or ".." in name or "\0" in name
            or any(s in name for s in seps)):
        raise OptionError(
            f"--name {name!r} is not a plain file name stem: it must not be empty or start with a dot (a hidden "
            "file, which fer-edge takes for a temporary one), nor contain '..' or a path separator (the artifacts "
            "always go into --out; choose the folder with --out)"
        )
    # refused on every system, as an artifact must keep its name on any: Windows refuses these characters, and there
    # "c:model" wrote relative to drive C:'s working folder (outside --out) and "v2:final" into an NTFS stream
    bad = sorted({c for c in name if c in _NOT_PORTABLE or ord(c) < 32 or ord(c) == 127})
    if bad:
        raise OptionError(
            f"--name {name!r} is not a portable file name stem: it contains {', '.join(map(repr, bad))}; a name must "
            "not contain any of < > : \" | ? * nor a control character (Windows refuses them, and a ':' there names "
            "a drive or an NTFS stream)"
        )
    # Windows opens a device for a file whose name before its first dot is one of these ("NUL.v2_fp32.onnx"); the
    # artifacts append "_<precision>", so a name without a dot ("aux") is safe
    base = name.split(".", 1)[0].rstrip(" ").upper()
    if "." in name and base in _WINDOWS_DEVICES:
        raise OptionError(
            f"--name {name!r} is not a portable file name stem: Windows takes a file named {base!r} before its first "
            "dot for a device (CON, PRN, AUX, NUL, COM0-9, LPT0-9); drop the dot or choose another name"
        )


#: The lock file an export holds in ``--out`` while it writes there (:func:`_lock_out`).
LOCK_FILE = ".fer-edge-export.lock"


def _lock_out(out: Path):
    """Hold ``OUT/.fer-edge-export.lock`` (:func:`fer_edge.utils.hold_lock`) while this export writes into ``out``,
    so that two exports into one folder do not rewrite each other's manifest (the last writer's would drop the
    other's artifacts): the second is refused. Returns the lock for :func:`_unlock_out` (None on Windows)."""
    from fer_edge.utils import hold_lock

    try:
        return hold_lock(out / LOCK_FILE)
    except BlockingIOError:
        raise ExportError(f"{out}: another fer-edge export is writing into it now (it holds {out / LOCK_FILE}); "
                          "wait for it to end, or choose another --out") from None


def _unlock_out(out: Path, lock) -> None:
    """Release the lock :func:`_lock_out` took, removing its file."""
    from fer_edge.utils import release_lock

    release_lock(out / LOCK_FILE, lock)


def _folders_to_create(out: Path) -> list[Path]:
    """The folders ``out.mkdir(parents=True)`` will create, deepest first; refuses an ``out`` that cannot be one
    (:func:`fer_edge.utils.check_writable_dir`)."""
    from fer_edge.utils import check_writable_dir

    # the nearest path that is there: a link to nothing (a dangling symbolic link) is neither a file nor a folder
    q = next((q for q in (out, *out.parents) if q.exists() or q.is_symlink()), None)
    if q is not None and q.is_symlink() and not q.exists():
        try:
            target = f" {os.readlink(q)}"
        except OSError:
            target = ""
        where = "is" if q == out else f"lies under {q}, which is"
        raise FerEdgeError(f"--out {out} {where} a symbolic link to{target}, which does not exist (a link to "
                           "nothing): create the folder it points to, remove the link, or choose another --out")
    check_writable_dir(out, "--out", FerEdgeError)
    missing: list[Path] = []
    for p in (out, *out.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def _remove_if_empty(created: list[Path]) -> None:
    """Remove the folders this export created (deepest first) while they are empty; never anything else."""
    for d in created:
        try:
            d.rmdir()
        except OSError:
            return


def _previous_manifest(out: Path, source_sha: str, ckpt_path: Path, replace_other: bool) -> tuple[dict | None, bool]:
    """The manifest already in ``out`` when it is of the same checkpoint (its entries may be kept), and whether
    what is there must be cleared first (``replace_other`` only).

    A manifest of another checkpoint is refused, so two checkpoints' files never share a folder unlisted;
    ``replace_other`` clears it instead (:func:`_clear_previous`). A manifest that cannot be read, or is not
    fer-edge's (another program's ``manifest.json``), is always refused: it is never trusted to list files to
    delete.
    """
    from fer_edge.errors import ArtifactError
    from fer_edge.exporters.manifest import load_manifest

    mpath = out / MANIFEST_NAME
    if not (mpath.exists() or mpath.is_symlink()):
        return None, False
    try:
        old = load_manifest(mpath)
    except ArtifactError as e:
        # never trusted to list files to delete: it may be another program's manifest.json
        raise ArtifactError(
            f"{e}; fer-edge does not trust it to say which files in {out} are its own, so it neither exports "
            f"into {out} nor removes anything there, not even when asked to replace an earlier export: choose "
            f"another --out, or remove {mpath} yourself (and whatever files of {out} you no longer need)"
        ) from None
    old_src = old.get("source") if isinstance(old.get("source"), dict) else {}
    if old_src.get("sha256") == source_sha:
        return old, False
    if replace_other:
        return None, True
    old_sha = str(old_src.get("sha256") or "unknown")
    raise ExportError(
        f"{out} holds an export of another checkpoint: {old_src.get('path') or 'unknown path'} "
        f"(sha256 {old_sha[:12]}), while this export is of {ckpt_path} (sha256 {source_sha[:12]}); exporting "
        f"into it would mix the two checkpoints' files. Pick another --out, pass --replace (removes the exported "
        f"files its manifest lists), or remove {out} first"
    )


def _is_coreml_manifest(path: Path) -> bool:
    """Whether ``path`` is the ``Manifest.json`` of a Core ML package (not fer-edge's ``manifest.json``, which a
    case-insensitive file system also finds under that name)."""
    import json

    try:
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return False
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and ("itemInfoEntries" in data or "rootModelIdentifier" in data)


def check_not_in_a_package(out: Path) -> None:
    """Refuse an ``--out`` that is, or lies inside, a Core ML package (a folder named ``*.mlpackage``, or one holding
    Core ML's ``Manifest.json``): the export would write into the package (and a re-export of it delete it)."""
    here = Path(os.path.abspath(out))
    for q in (here, *here.parents):
        if q.name.lower().endswith(".mlpackage") or _is_coreml_manifest(q / "Manifest.json"):
            where = "is" if q == here else f"lies inside {q}, which is"
            raise ExportError(
                f"--out {out} {where} a Core ML package (a .mlpackage folder): exporting into it would mix "
                "fer-edge's files into the package; pick a plain folder for --out"
            )


def check_not_in_data(out: Path, sources) -> None:
    """Refuse an ``--out`` that is, or lies inside, an image-folder data set this export reads (``sources``:
    ``(how it was given, path)`` pairs; a CSV is a file, which ``--out`` cannot lie in): its folders would be read
    as splits or classes by every later command on that data set (``unknown class folder 'exports'``), the
    export's own ``next:`` command and a rerun of it included (:func:`fer_edge.utils.check_not_in_data`)."""
    from fer_edge.utils import check_not_in_data as refuse_in_data

    refuse_in_data(out, sources, ExportError,
                   "the export's folders would be read as splits or classes of that data set, which every later "
                   "command on it (this export again among them) would then refuse")


def _listed_files(out: Path) -> set[str]:
    """Every file name the ``manifest.json`` in ``out`` lists (all its entries' files), read leniently."""
    import json

    try:
        data = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return set()
    return listed_names(data)


def listed_names(data) -> set[str]:
    """Every file name a manifest's content (``data``, as read) lists: each entry's file and its files' records,
    read leniently (a damaged entry's others are kept)."""
    arts = data.get("artifacts") if isinstance(data, dict) else None
    names: set[str] = set()
    for art in arts if isinstance(arts, list) else []:
        if not isinstance(art, dict):
            continue
        for rec in [{"file": art.get("file")}, *(art.get("files") or [])]:
            name = rec.get("file") if isinstance(rec, dict) else None
            if isinstance(name, str) and name:
                names.add(os.path.normpath(name))
    return names


def check_no_foreign_files(out: Path, plan, stem: str) -> None:
    """Refuse, before any work, an export that would write over (or delete) something in ``out`` that is not an
    artifact of an earlier export there: a file or folder at a path this export writes that the folder's
    ``manifest.json`` does not list."""
    from fer_edge.exporters.registry import get_exporter

    if not out.is_dir():
        return
    listed = _listed_files(out)
    found: list[str] = []
    for t, p in plan:
        for f in get_exporter(t.name).output_paths(out / t.filename(stem, p)):
            if (f.exists() or f.is_symlink()) and os.path.normpath(f.name) not in listed:
                kind = "folder" if f.is_dir() and not f.is_symlink() else "file"
                found.append(f"{f.name} ({kind})")
    if found:
        raise ExportError(
            f"--out {out} already holds {', '.join(dict.fromkeys(found))} where this export writes, and its "
            f"{MANIFEST_NAME} does not list {'it' if len(found) == 1 else 'them'} as an exported artifact: fer-edge "
            "does not overwrite or delete files it did not write. Move "
            f"{'it' if len(found) == 1 else 'them'} out of {out}, or pick another --out (or --name)"
        )


def _artifact_suffixes() -> tuple[str, ...]:
    """File suffixes fer-edge's exports write: every target's artifact and companion suffixes."""
    return tuple(x.lower() for t in TARGETS.values() for x in (t.suffix, *t.companion_suffixes))


def _clear_previous(out: Path) -> str:
    """Remove the export artifacts ``out``'s fer-edge manifest lists (plain names inside ``out`` with an export
    target's suffix or a companion's; anything else it lists stays), then the manifest itself; returns one line
    naming every file removed (and any listed file left)."""
    import shutil

    from fer_edge.exporters.manifest import load_manifest

    mpath = out / MANIFEST_NAME
    old = load_manifest(mpath)  # _previous_manifest checked that it is fer-edge's
    suffixes = _artifact_suffixes()
    removed: list[str] = []
    left: list[str] = []
    arts = old.get("artifacts")
    for art in arts if isinstance(arts, list) else []:
        if not isinstance(art, dict):
            continue
        for rec in art.get("files") or [{"file": art.get("file")}]:
            name = rec.get("file") if isinstance(rec, dict) else None
            if not isinstance(name, str) or not name or name in removed or name in left:
                continue
            f = out / name
            if not (f.exists() or f.is_symlink()):
                continue
            ours = (Path(name).name == name and not name.startswith(".") and name.lower().endswith(suffixes)
                    and f != mpath and (f.is_symlink() or path_inside(f, out)))
            if not ours:
                left.append(name)
                continue
            if f.is_dir() and not f.is_symlink():
                shutil.rmtree(f)
            else:
                f.unlink()
            removed.append(name)
    mpath.unlink()
    src = (old.get("source") or {}).get("path") if isinstance(old.get("source"), dict) else None
    line = (f"--replace: removed {', '.join([*removed, MANIFEST_NAME])} from {out} (the export of "
            f"{src or 'another checkpoint'})")
    if left:
        line += f"; left {', '.join(left)}: listed there, but not an export artifact"
    return line


def export(
    checkpoint: str | Path | None = None,
    targets: Sequence[str | Target] | str | None = None,
    precisions: Sequence[str | Precision] | str | None = None,
    out_dir: str | Path = "exports",
    *,
    calib_data: str | Path | None = None,
    calib_split: str | None = None,
    calib_size: int | None = None,
    calib_seed: int = _cal.DEFAULT_SEED,
    calib_method: str | None = None,
    overflow_fix: str | None = None,
    val_data: str | Path | None = None,
    val_split: str | None = None,
    val_size: int | None = _cal.DEFAULT_VAL_SIZE,
    val_seed: int = _cal.DEFAULT_SEED,
    validate: bool = True,
    thresholds: Mapping[Precision | str, object] | None = None,
    threshold_overrides: Mapping[str, Mapping[Precision | str, float | None]] | None = None,
    name: str | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    data_progress: bool = True,
    raise_on_failure: bool = True,
    replace_other: bool = False,
    small_val_advice: str | None = None,
) -> ExportResult:
    """Export ``checkpoint`` (path, shipped name, or None for the default model) to ``out_dir``.

    targets: target names or ``"all"`` (None: all). precisions: ``fp32``/``fp16``/``int8``
    (None: all three, except a calibrated int8 without ``calib_data``: then it is listed in ``skipped`` with
    the reason); a target skips precisions it does not support (TorchScript: fp32 only). An empty
    list, or an unknown name (beside ``"all"`` too), is refused with the valid names.
    A calibrated INT8 (ONNX, OpenVINO, Core ML on macOS; not Core ML's weights-only INT8 elsewhere) needs
    ``calib_data`` (a FER2013 CSV or image folder): ``calib_size`` images (None:
    :data:`~fer_edge.exporters.calibration.DEFAULT_CALIB_SIZE`) of ``calib_split`` (default: its training split),
    stratified by class with ``calib_seed``; they are loaded (and recorded) only when an artifact of the plan is
    calibrated with them (not Core ML's weights-only INT8 off macOS).
    ``calib_method``: ONNX calibration, ``minmax``/``entropy``/``percentile``.
    ``calib_split``, ``calib_size`` or ``calib_method`` given when nothing is calibrated (``calib_method``: no
    ONNX INT8), and ``val_data``, ``val_split`` or ``val_size`` given with ``validate=False``, are refused
    (every such option named in one error): they would do nothing.
    ``overflow_fix``: OpenVINO INT8 weights, ``first-layer`` (NNCF's default: 7 bits in the first quantized
    convolution, the first convolution being in float), ``enable`` (7 bits in every layer but the depthwise
    convolutions, for x86 CPUs without VNNI) or ``disable`` (8 bits everywhere); None: the
    default. Given explicitly when no OpenVINO INT8 is exported, it is refused.
    Validation (``validate``) runs each artifact that can run here on ``val_size`` images
    (None: all) of ``val_split`` of ``val_data`` (default: the calibration data, else the
    checkpoint's recorded validation data, ``ckpt.data["val"]``, when it exists on this machine; default split:
    its validation split, or the recorded one) and checks it against
    the PyTorch FP32 model with ``thresholds`` (``{precision: parity.Thresholds}``, used as
    given; gaps take :data:`fer_edge.parity.DEFAULT_THRESHOLDS`). Without ``thresholds`` the gate
    is the defaults, then a shipped weight's own gate (``WeightMeta.parity_gate``, found by the
    checkpoint's SHA-256), then ``threshold_overrides`` (``{threshold: {precision: value}}``, as
    the CLI's ``--min-agreement`` etc.); the manifest's ``thresholds_source`` says which applied. ``name``: the artifacts' file stem
    (default: the model name), e.g. ``fer_nano_int8.onnx``; a path is refused. ``progress`` gets a
    :class:`ProgressEvent` before each step; ``on_warning`` each warning as it happens (all
    warnings are also in ``result.warnings`` and the manifest). The validation images are loaded only when an
    artifact of the plan can run here. The gate needs at least
    :data:`~fer_edge.exporters.calibration.MIN_VAL_SIZE` images (the same floor that refuses a smaller
    ``val_size``): an explicit ``val_data`` with fewer is refused before any export (the error ends with
    ``small_val_advice``, what to do in the calling command's options; None: ``fer-edge export``'s); implied
    validation data with fewer (the calibration data, the checkpoint's recorded data) leaves every artifact
    ``not validated`` (``only N validation images; the gate needs M``), with a warning, never ``passed``.
    Validating on training
    images (the data's training split, the checkpoint's recorded training data by SHA-256, or the calibration
    images, under any name) is warned about.

    Every input is checked, and the data loaded, before ``out_dir`` is created; a folder this call
    created is removed again when it fails while the folder is still empty. A file or folder at a path
    this export writes (an artifact or its companion: Core ML's ``_logits`` package, OpenVINO's ``.bin``)
    that ``out_dir``'s ``manifest.json`` does not list is refused before any work (it is not fer-edge's
    to overwrite), as is an ``out_dir`` that is, or lies in, a Core ML package. An ``out_dir`` whose
    ``manifest.json`` records another checkpoint is refused (``replace_other``: the export artifacts that
    manifest lists, and the manifest, are removed and the folder reused, with a warning naming each file removed);
    one that cannot be read, or is not fer-edge's, is refused even with ``replace_other`` (it is never trusted to
    list files to delete). While it writes into ``out`` the export holds a lock file there (:data:`LOCK_FILE`, an
    advisory ``flock``; none on Windows): an export into a folder another export is writing is refused, and the
    folder's manifest is read again once the lock is held. Temporary ``.tmp-*`` files in ``out`` (left by an export that was killed) are named in
    a warning, not removed (they may be a running export's). ``manifest.json`` is rewritten
    (atomically) after every artifact, with ``"complete": false`` until the end, so an interrupted
    export (Ctrl-C, SIGTERM: both raise ``KeyboardInterrupt`` here) leaves a manifest of what it finished.
    """
    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.exporters.onnx import CALIB_METHODS, DEFAULT_CALIB_METHOD
    from fer_edge.parity import resolve_gate, validate_thresholds
    from fer_edge.weights import resolve_checkpoint

    check_name(name)
    validate_thresholds(thresholds, overrides=threshold_overrides)  # before the checkpoint is even read
    tlist = _resolve_targets(targets)
    plist = _resolve_precisions(precisions)
    calib_method_given = calib_method is not None
    calib_method = calib_method or DEFAULT_CALIB_METHOD
    if calib_method not in CALIB_METHODS:
        raise OptionError(f"unknown calibration method {calib_method!r}; valid: {', '.join(CALIB_METHODS)}")
    from fer_edge.exporters.openvino import DEFAULT_OVERFLOW_FIX, OVERFLOW_FIX

    overflow_fix_given = overflow_fix is not None
    overflow_fix = overflow_fix or DEFAULT_OVERFLOW_FIX
    if overflow_fix not in OVERFLOW_FIX:
        raise OptionError(f"unknown overflow fix {overflow_fix!r}; valid: {', '.join(OVERFLOW_FIX)}")
    calib_size_given = calib_size is not None
    if calib_size is None:
        calib_size = _cal.DEFAULT_CALIB_SIZE
    for opt, value, none_ok in (("--calib-size", calib_size, False), ("--calib-seed", calib_seed, False),
                                ("--val-size", val_size, True), ("val_seed", val_seed, False)):
        if not (value is None and none_ok) and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            raise FerEdgeError(f"{opt} takes a whole number, got {value!r}")
    if calib_size < 1:
        raise OptionError(f"--calib-size must be at least 1 (got {calib_size})")
    bad_seeds = [f"{opt} must be at least 0 (got {v})" for opt, v in (("--calib-seed", calib_seed),
                                                                     ("val_seed", val_seed)) if v < 0]
    if bad_seeds:  # numpy's generator refuses them only when a sample is drawn, with a traceback
        raise OptionError("; ".join(bad_seeds))
    if out_dir is None or not isinstance(out_dir, (str, os.PathLike)):
        raise FerEdgeError(f"--out takes a folder path, got {out_dir!r}")
    # Path("") is "." (the current folder), as the CLI's path options guard against: an empty path is refused
    empty = [opt for opt, v in (("--out", out_dir), ("--calib-data", calib_data), ("--val-data", val_data))
             if isinstance(v, (str, os.PathLike)) and not str(os.fspath(v)).strip()]
    if empty:
        raise OptionError(f"{', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty: give a path (an unset "
                          "variable in a script?)")
    if validate and val_size is not None and val_size < _cal.MIN_VAL_SIZE:
        raise OptionError(f"validation needs at least {_cal.MIN_VAL_SIZE} images (got --val-size {val_size})")

    plan: list[tuple[Target, Precision]] = []
    skipped: list[dict] = []
    # no precision asked for and no calibration images: the float precisions, and every int8 skip listed
    int8_by_default_only = precisions is None and calib_data is None
    for t in tlist:
        for p in plist:
            if int8_by_default_only and p in t.precisions and get_exporter(t.name).calibrates(p):
                skipped.append({"target": t.name, "precision": p.value, "code": SKIP_NEEDS_CALIBRATION,
                                "reason": INT8_NEEDS_CALIBRATION})
            elif p in t.precisions:
                plan.append((t, p))
            else:
                skipped.append({"target": t.name, "precision": p.value, "code": SKIP_UNSUPPORTED,
                                "reason": f"{t.name} supports {', '.join(x.value for x in t.precisions)} only"})
    if not plan:
        raise OptionError(
            "nothing to export: "
            + "; ".join(f"{s['target']} {s['precision']}: {s['reason']}" for s in skipped)
        )
    # every problem with the options at once; an option that would do nothing is refused, not ignored
    problems: list[str] = []
    planned = ", ".join(f"{t.name} {p.value}" for t, p in plan)
    needs_images = [f"{t.name} {p.value}" for t, p in plan if get_exporter(t.name).calibrates(p)]
    if needs_images and calib_data is None:  # Core ML's int8 off macOS is weights-only: it needs none
        problems.append(
            f"int8 export needs calibration images ({', '.join(needs_images)}): pass --calib-data PATH (a FER2013 "
            "CSV or image folder; the training split is sampled), or leave int8 out (--precision fp32,fp16)"
        )
    if overflow_fix_given and not any((t.name, p) == ("openvino", Precision.int8) for t, p in plan):
        problems.append(
            f"--overflow-fix applies to OpenVINO INT8 only, and this export makes none "
            f"({planned}): add --target openvino with int8 "
            "(and --calib-data), or leave --overflow-fix out"
        )
    calibrated = [(t, p) for t, p in plan if get_exporter(t.name).calibrates(p)]
    unused = [o for o, given in (("--calib-split", calib_split is not None), ("--calib-size", calib_size_given))
              if given]
    if unused and not calibrated:
        problems.append(
            f"{' and '.join(unused)} only {'shapes' if len(unused) == 1 else 'shape'} the INT8 calibration set, and "
            f"this export calibrates nothing ({planned}; Core ML's int8 off macOS is weights-only): leave "
            f"{'it' if len(unused) == 1 else 'them'} out, or export int8 of onnx or openvino (with --calib-data)"
        )
    if calib_method_given and not any((t.name, p) == ("onnx", Precision.int8) for t, p in plan):
        problems.append(
            f"--calib-method applies to ONNX INT8 only, and this export makes none ({planned}): add --target onnx "
            "with int8 (and --calib-data), or leave --calib-method out"
        )
    if not validate:
        unused = [o for o, v in (("--val-data", val_data), ("--val-split", val_split), ("--val-size", val_size))
                  if v is not None]
        if unused:
            problems.append(
                f"{', '.join(unused)} {'chooses' if len(unused) == 1 else 'choose'} the parity gate's images, and "
                f"--no-validate skips the gate: leave {'it' if len(unused) == 1 else 'them'} out, or drop "
                "--no-validate"
            )
    # threshold overrides (--min-agreement etc.) that no gate of this export would apply
    given = {f"--{k.replace('_', '-')}": [Precision(p.value if isinstance(p, Precision) else str(p)) for p in v]
             for k, v in (threshold_overrides or {}).items() if v}
    if given and not validate:
        problems.append(
            f"{', '.join(given)} {'sets' if len(given) == 1 else 'set'} the parity gate's thresholds, and "
            f"--no-validate skips the gate: leave {'it' if len(given) == 1 else 'them'} out, or drop --no-validate"
        )
    elif given:
        exported = {p for _, p in plan}
        unused = [f"{opt} {p.value}" for opt, ps in given.items() for p in ps if p not in exported]
        if unused:
            problems.append(
                f"{', '.join(unused)}: a threshold for a precision this export makes none of ({planned}): leave "
                f"{'it' if len(unused) == 1 else 'them'} out, or add the precision to --precision"
            )
    # a data path is checked even where this export will not read it (Core ML's weights-only int8 off macOS
    # calibrates nothing; nothing may run here to validate): a mistyped path never passes silently
    for opt, value in (("--calib-data", calib_data), ("--val-data", val_data)):
        if value is not None:
            try:
                check_data_source(value)
            except DataError as e:
                problems.append(f"{opt}: {e}")
    if problems:  # a usage error (the CLI exits 2), as train's list of bad options is
        raise OptionError("\n".join(problems))

    out = Path(out_dir)
    check_not_in_a_package(out)
    check_not_in_data(out, [("given as --calib-data", calib_data), ("given as --val-data", val_data)])
    to_create = _folders_to_create(out)
    ckpt_path = resolve_checkpoint(checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    if validate and val_data is None and calib_data is None:  # the checkpoint's recorded data, when it is used
        vdata, _, vwhy, _ = _validation_source(None, val_split, None, ckpt)
        if vdata is not None:
            check_not_in_data(out, [("that the checkpoint records as its validation data", vdata)])
    source_sha = ckpt.sha256
    old, clear = (None, False) if to_create else _previous_manifest(out, source_sha, Path(ckpt_path), replace_other)
    stem = name or ckpt.model_name
    if not to_create:
        check_no_foreign_files(out, plan, stem)
        _unlock_out(out, _lock_out(out))  # an export into it running now is refused before any data is loaded
    model = ckpt.build_model()
    # a broken model (NaN weights) is refused before any data is loaded: its artifacts would be broken too, and
    # the gate cannot judge them against NaN reference logits (OpenVINO's ReLU turns NaN into 0: "passed")
    _val.check_reference_finite(_val.reference_logits(model, example_input(4).numpy()), ckpt_path,
                                "random test inputs")
    thresholds, thresholds_source = resolve_gate(source_sha, thresholds, threshold_overrides)
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        if on_warning is not None:
            on_warning(msg)

    temps = [] if to_create else _leftover_temps(out)
    if temps:
        warn(f"{out} holds {', '.join(temps)}: temporary files of an export into it that did not finish (killed?), "
             f"or of one running now; fer-edge leaves them: remove them once no export into {out} is running")

    # all data is loaded (and any error about it raised) before the output folder exists; only what an
    # artifact of the plan uses: calibration images for a calibrated int8, validation images for a runnable one
    calib = None
    if calibrated:
        calib, w = _cal.load_calibration(calib_data, calib_split, calib_size, calib_seed,
                                         ckpt.normalization, progress=data_progress)
        calib.record["requested"] = int(calib_size)
        for msg in w:
            warn(msg)

    vset = ref = None
    val_record = None
    no_val = ""  # why artifacts that could run here are not validated
    if validate and any(_val.runtime_unavailable(t) is None for t, _ in plan):
        vdata, vsplit, vwhy, no_val = _validation_source(val_data, val_split, calib_data, ckpt)
        if vdata is None:
            warn(f"{no_val}: artifacts are not validated")
        else:
            vset = _cal.load_validation(vdata, vsplit, val_size, val_seed, ckpt.normalization,
                                        progress=data_progress)
            check_scorable(vset.labels, ckpt.labels)  # before any artifact is written
            # a model with FER2013's classes in another order: its output i is scored as the class it names (the
            # agreement needs no labels; the accuracies and the INT8 accuracy drop do)
            vset.labels = to_model_order(vset.labels, ckpt.labels)
            minimum = _cal.MIN_VAL_SIZE
            if len(vset) < minimum:  # a gate on a handful of images decides by noise: never "passed"
                short = (f"only {len(vset)} validation images ({vset.record['split']} of {vset.record['file']}); "
                         f"the gate needs {minimum}")
                if val_data is not None:
                    raise FerEdgeError(f"--val-data {val_data}: {short}: " + (
                        small_val_advice or "pass a larger validation split (--val-split) or data set, or "
                                            "--no-validate"))
                no_val = f"only {len(vset)} validation images; the gate needs {minimum}"
                warn(f"the parity gate has {short} (taken from {vwhy}): artifacts are not validated; pass "
                     f"--val-data with at least {minimum} images")
                vset = None
            else:
                vset.record["requested"] = None if val_size is None else int(val_size)
                val_record = {**vset.record, "chosen_from": vwhy}
                for msg in _cal.validation_warnings(vset, val_size):
                    warn(msg)
                for msg in _held_out_warnings(vset, vdata, calib, ckpt):
                    warn(msg)
                ref = _val.reference_logits(model, vset.inputs)
                _val.check_reference_finite(ref, ckpt_path, f"validation images ({vset.record['split']} of "
                                                            f"{vset.record['file']})")

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove_if_empty(to_create)
        raise FerEdgeError(f"cannot create --out {out}: {e.strerror or e}") from None
    lock = None
    try:
        lock = _lock_out(out)
        # another export may have written into the folder while this one loaded its data: read it again, now that
        # no other export can change it
        old, clear = _previous_manifest(out, source_sha, Path(ckpt_path), replace_other)
        check_no_foreign_files(out, plan, stem)
        if clear:
            warn(_clear_previous(out))
        with sigterm_as_interrupt():
            result = _run_plan(
                plan, skipped, out, stem, ckpt, ckpt_path, model, source_sha, old, calib, calib_method,
                overflow_fix, vset, ref, val_record, validate, thresholds, thresholds_source, warnings, warn,
                progress, no_val,
            )
    except BaseException:
        _unlock_out(out, lock)
        lock = None
        _remove_if_empty(to_create)
        raise
    finally:
        _unlock_out(out, lock)
    if raise_on_failure:
        result.raise_for_failures()
    return result


def _run_plan(plan, skipped, out, stem, ckpt, ckpt_path, model, source_sha, old, calib, calib_method, overflow_fix,
              vset, ref, val_record, validate, thresholds, thresholds_source, warnings, warn, progress,
              no_val: str = "") -> ExportResult:
    """Export (and validate) each (target, precision) of ``plan`` into ``out``, rewriting the manifest after each.

    An earlier entry of this checkpoint stays listed until its (target, precision) has been exported again: if
    that fails or is interrupted, it stays listed as long as its files are untouched. A file it made under
    another name (another ``--name``) is removed once its replacement is listed.
    """
    from fer_edge.parity import DEFAULT_THRESHOLDS, resolve_thresholds

    exporters: dict[str, object] = {}
    results: list[ArtifactResult] = []
    entries: list[dict] = []
    failed: list[dict] = []
    versions = tool_versions()
    total = len(plan) * (2 if validate else 1)
    step = 0
    source = {"path": str(Path(ckpt_path).resolve()), "sha256": source_sha, "model": ckpt.model_name}
    # earlier entries of this checkpoint whose files are unchanged; each goes once its (target, precision) is redone
    earlier, dropped = carry_over(old, source_sha, out)
    for a in earlier:  # marked by a run killed while replacing it: its files are still the entry's (carry_over)
        mark = a.pop(BEING_REPLACED_KEY, None)
        if isinstance(mark, dict) and isinstance(mark.get("validation"), dict):
            a["validation"] = mark["validation"]
    reported: set[str] = set()  # files a warning already named as no longer listed
    for files, msg in dropped:
        reported.update(files)
        warn(msg)
    earlier_runs = [run_record(old), *(old.get("earlier_runs") or [])] if earlier else []
    redone: set[tuple[str, str, str]] = set()  # exported again in this run: the new entries replace the earlier
    in_flight: set[tuple[str, str, str]] = set()  # being exported now: earlier entries listed while untouched
    created = now_iso()
    run_id = uuid.uuid4().hex[:16]

    def key(a: dict) -> tuple[str, str, str]:
        return a.get("target"), a.get("precision"), a.get("variant", "main")

    def touched() -> set[tuple]:
        """The (target, precision) being exported now when a file of its earlier entries changed."""
        return {group_key(a) for a in earlier if key(a) in in_flight and files_unchanged(a, out) is not None}

    def listed(a: dict) -> dict:
        """An earlier entry as the manifest lists it: one being exported again now vouches for nothing (a process
        killed once the new file is renamed over it leaves it listed, with the file changed)."""
        if key(a) not in in_flight:
            return a
        return {**a, "validation": _val.not_validated(BEING_REPLACED),
                BEING_REPLACED_KEY: {"run": run_id, "validation": a.get("validation")}}

    def manifest(complete: bool) -> dict:
        changed = touched()
        kept = [listed(a) for a in earlier if key(a) not in redone and group_key(a) not in changed]
        runs = {a.get("run") for a in kept}
        return {
            "format": FORMAT,
            "run_id": run_id,
            "created": created,
            "complete": complete,
            "fer_edge_version": versions["fer_edge"],
            "source": source,
            "labels": list(ckpt.labels),
            "normalization": ckpt.normalization.to_dict(),
            "tool_versions": versions,
            "calibration": calib.record if calib is not None else None,
            "calibration_method": calib_method if calib is not None else None,
            "validation_data": val_record,
            "thresholds": {pr.value: resolve_thresholds(thresholds, pr).to_dict() for pr in DEFAULT_THRESHOLDS},
            "thresholds_source": thresholds_source,
            "artifacts": kept + entries,
            "failed": failed,
            "skipped": skipped,
            "warnings": warnings,
            "earlier_runs": [r for r in earlier_runs if r["run_id"] in runs],
        }

    def emit(stage, t, p):
        if progress is not None:
            progress(ProgressEvent(stage, t.name, p.value, step, total))

    try:
        for i, (t, p) in enumerate(plan):
            emit("export", t, p)
            step += 1
            keys = {(t.name, p.value, v) for v in ("main", "logits")}
            in_flight = keys
            if (out / MANIFEST_NAME).exists() and (i == 0 or any(key(a) in keys for a in earlier)):
                # before any file of it is renamed into place: a process killed then (SIGKILL, power) leaves a
                # manifest saying the run did not finish, and vouching for no file it may have replaced
                write_manifest(out, manifest(False))
            path = out / t.filename(stem, p)
            meta = build_metadata(ckpt, p, t.name, source_sha)
            try:
                if t.name not in exporters:
                    exporters[t.name] = get_exporter(t.name)()
                exp = exporters[t.name]
                exp.check_available()
                req = ExportRequest(model=model, ckpt=ckpt, metadata=meta,
                                    calib=calib if p is Precision.int8 else None,
                                    options={"calib_method": calib_method, "overflow_fix": overflow_fix})
                t0 = time.perf_counter()
                files = exp.export(req, p, path)
                seconds = time.perf_counter() - t0
            except Exception as e:  # one target's failure does not stop the others
                failed.append({"target": t.name, "precision": p.value, "reason": _short(e)})
                # the earlier files stay listed if the failed export left them untouched
                changed = touched()
                for a in earlier:
                    if group_key(a) in changed:
                        names = [r["file"] for r in a.get("files") or []]
                        reported.update(names)
                        warn(f"{', '.join(names)} ({t.name} {p.value}) no longer listed in the manifest: the "
                             "failed export changed it; export it again, or remove it")
                earlier[:] = [a for a in earlier if group_key(a) not in changed]
                in_flight = set()
                if validate:
                    step += 1
                write_manifest(out, manifest(False))
                continue

            for w in dict.fromkeys(w for f in files for w in f.warnings):  # what it did other than asked
                warn(w)
            # held from here until the new files are listed: an interrupt in between left finished files that no
            # manifest listed, which the next export into the folder refuses to overwrite
            with interrupts_deferred():
                validation: dict
                if not validate:
                    validation = _val.not_validated("not validated: --no-validate")
                elif vset is None:  # the runtime's reason first (Core ML: needs macOS), then why there are no images
                    validation = _val.not_validated(_val.runtime_unavailable(t)
                                                    or f"not validated: {no_val or NO_VALIDATION_DATA}")
                else:
                    validation = _val.not_validated(VALIDATION_UNFINISHED)
                new: list[dict] = []
                for f in files:
                    recs = [file_record(f.path, out)] + [file_record(c, out) for c in f.companions]
                    new.append({
                        "file": recs[0]["file"],
                        "target": t.name,
                        "precision": p.value,
                        "variant": f.variant,
                        "runtime": t.runtime,
                        "size_bytes": sum(r["size_bytes"] for r in recs),
                        "sha256": recs[0]["sha256"],
                        "files": recs,
                        "inputs": f.inputs,
                        "outputs": f.outputs,
                        "labels": list(ckpt.labels),
                        "normalization": ckpt.normalization.to_dict(),
                        "metadata": {**meta, **({"variant": "classifier" if f.variant == "main" else f.variant}
                                                if t.name == "coreml" else {})},
                        "calibration": (calib.record if p is Precision.int8 and calib is not None
                                        and f.uses_calibration else None),
                        "export_seconds": round(seconds, 3) if f is files[0] else 0.0,
                        "export": f.extra,
                        "tool_versions": versions,
                        "source": source,
                        "validation": dict(validation),
                        "run": run_id,
                    })
                entries.extend(new)
                redone |= keys
                in_flight = set()
                _remove_superseded([a for a in earlier if key(a) in keys], new, out, warn)
                write_manifest(out, manifest(False))  # the artifact is listed as soon as it exists

            if validate and vset is not None:
                emit("validate", t, p)
                # the artifact that runs: the main file, or a companion built for parity (Core ML's logits)
                runnable = next((f for f in files if f.variant == "logits"), files[0])
                validation = _val.validate_artifact(runnable.path, t, p, vset, ref, thresholds)
                if runnable is not files[0] and validation["status"] != _val.NOT_VALIDATED:
                    validation["note"] = f"validated through {runnable.path.name}"
                for e in new:
                    e["validation"] = dict(validation)
                write_manifest(out, manifest(False))
            if validate:
                step += 1
            for f, e in zip(files, new):
                results.append(ArtifactResult(t.name, p.value, f.variant, f.path, e["size_bytes"], e["sha256"],
                                              e["export_seconds"], e["validation"]))
    except BaseException:  # an interrupt: list what is on disk, earlier entries whose files are untouched included
        if (out / MANIFEST_NAME).exists():  # one was written (nothing finished and none before: none now)
            changed = touched()  # an entry being replaced: dropped if its files changed, else listed as it was
            earlier[:] = [a for a in earlier if group_key(a) not in changed]
            in_flight = set()
            write_manifest(out, manifest(False))
        raise

    final = manifest(True)
    for name in _unlisted_artifacts(out, final, reported):
        warn(f"{out / name} is not listed in the manifest (not of this export, or changed after it): "
             "`fer-edge bench` of the folder measures it as unverified (no SHA-256, no parity gate); remove it or "
             "export into another --out")
    manifest_path = write_manifest(out, final)
    if progress is not None:
        progress(ProgressEvent("done", "", "", total, total))
    return ExportResult(out, manifest_path, final, results, failed, skipped, warnings)


def _remove_superseded(earlier: list[dict], new: list[dict], out: Path, warn) -> None:
    """Remove the files of earlier entries that ``new`` entries (the same target and precision) replaced
    under other names (another ``--name``), so that no file of the folder goes unlisted."""
    import shutil

    keep = [out / r["file"] for e in new for r in e["files"]]

    def kept(name: str) -> bool:  # the same file as a new one (a name differing in case only, on macOS/Windows)
        return any(name == str(k.relative_to(out)) or _same_file(out / name, k) for k in keep)

    for art in earlier:
        gone = [r["file"] for r in art.get("files") or [] if not kept(r["file"])]
        if not gone:
            continue
        if files_unchanged(art, out) is not None:  # changed by someone: not ours to delete
            continue
        for name in gone:
            f = out / name
            if path_inside(f, out):
                if f.is_dir() and not f.is_symlink():
                    shutil.rmtree(f, ignore_errors=True)
                else:
                    f.unlink(missing_ok=True)
        by = next((e for e in new if e.get("variant") == art.get("variant", "main")), new[0])
        warn(f"removed {', '.join(gone)}: the earlier {art.get('target')} {art.get('precision')} export of this "
             f"checkpoint, replaced by {by['file']}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _unlisted_artifacts(out: Path, manifest: dict, reported: set[str] = frozenset()) -> list[str]:
    """Names in ``out`` with an export target's suffix (or a companion's, OpenVINO's ``.bin``) that ``manifest``
    does not list, leaving out those already ``reported``."""
    from fer_edge.targets import TARGETS

    suffixes = tuple(x for t in TARGETS.values() for x in (t.suffix, *t.companion_suffixes))
    listed = {Path(r["file"]).parts[0] for a in manifest["artifacts"] for r in a.get("files") or []}
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError:
        return []
    return [n for n in names if not n.startswith(".") and n not in listed and n not in reported
            and n.endswith(suffixes)]


def export_artifacts(checkpoint: str | Path | None, out_dir: str | Path, **kwargs) -> ExportResult:
    """Every target at every precision it supports (a calibrated int8 only with ``calib_data``): the bench's default
    set."""
    return export(checkpoint, out_dir=out_dir, **kwargs)

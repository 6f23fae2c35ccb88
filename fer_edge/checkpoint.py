"""Checkpoint files: one format for ``best.pt``, ``last.pt`` and the shipped weights.

A checkpoint is a plain dict (loadable with ``torch.load(..., weights_only=True)``):

=================  ==========================================================
``format``         ``"fer-edge-checkpoint/1"``
``model``          registry name; ``model_kwargs``: its constructor arguments, defaults included
``state_dict``     the model weights (the EMA weights when EMA was used)
``labels``         list of class names, in output order
``normalization``  ``{"mean": m, "std": s}`` applied to pixels scaled to 0..1
``train_config``   the full :class:`fer_edge.training.config.TrainConfig` as a dict
``metrics``        e.g. ``{"val_accuracy": ..., "val_macro_f1": ...}``
``data``           data fingerprint (source path, split, size, sha)
``epoch``          epochs completed
``fer_edge_version``
=================  ==========================================================

``last.pt`` also carries the optimizer/scheduler/RNG state under ``resume``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_edge.errors import CheckpointError
from fer_edge.preprocess import Normalization

FORMAT = "fer-edge-checkpoint/1"
_REQUIRED = ("model", "state_dict", "labels", "normalization")


@dataclass
class Checkpoint:
    path: Path | None
    model_name: str
    model_kwargs: dict
    state_dict: dict
    labels: list[str]
    normalization: Normalization
    train_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    epoch: int = 0
    raw: dict = field(default_factory=dict, repr=False)
    #: the SHA-256 of the bytes :func:`load_checkpoint` read (None: hash ``path`` when asked)
    loaded_sha256: str | None = field(default=None, repr=False, compare=False)

    @property
    def sha256(self) -> str:
        """The SHA-256 of the checkpoint's file as it was loaded: of the weights held here, even when a training
        run has replaced the file since (a manifest or eval file named after a later best.pt would lie)."""
        from fer_edge.utils import sha256_path

        if self.loaded_sha256 is not None:
            return self.loaded_sha256
        if self.path is None:
            raise CheckpointError("checkpoint has no file to hash")
        return sha256_path(self.path)

    def _create(self):
        """The registered model of this checkpoint, untrained; a model that cannot be built names this file."""
        from fer_edge.errors import ModelError
        from fer_edge.models import create_model

        try:
            return create_model(self.model_name, num_classes=len(self.labels), **self.model_kwargs)
        except ModelError as e:
            raise CheckpointError(f"{self.path or 'checkpoint'}: {e}") from None

    def build_model(self):
        """The registered model with these weights, in eval mode, on CPU."""
        model = self._create()
        mismatch = state_dict_mismatch(model.state_dict(), self.state_dict)
        if mismatch:
            import json

            outputs = self._outputs_in_weights(model.state_dict())
            if outputs is not None:
                raise CheckpointError(
                    f"{self.path or 'checkpoint'}: it lists {len(self.labels)} labels ({', '.join(self.labels)}) but "
                    f"its weights give {outputs} outputs: its labels were edited, or come from another checkpoint. "
                    f"Give it the {outputs} labels it was trained with"
                )
            raise CheckpointError(
                f"{self.path or 'checkpoint'}: its weights do not fit {self.model_name} built with model_kwargs "
                f"{json.dumps(self.model_kwargs)} ({mismatch}). A checkpoint "
                "saved before fer-edge recorded the model's defaults breaks when those defaults change; "
                "retrain it or add the old defaults to its model_kwargs"
            )
        model.load_state_dict(self.state_dict)
        return model.eval()

    def _outputs_in_weights(self, own: dict) -> int | None:
        """The number of outputs the weights were trained with, when it differs from the labels' count and is
        the only reason they do not fit (None otherwise)."""
        from fer_edge.models import create_model

        n = len(self.labels)
        for k, v in own.items():
            other = self.state_dict.get(k)
            if other is None or other.shape == v.shape or not v.shape or v.shape[0] != n or not other.shape:
                continue
            candidate = int(other.shape[0])
            try:
                model = create_model(self.model_name, num_classes=candidate, **self.model_kwargs)
            except Exception:  # a count the factory refuses: not the reason
                return None
            return candidate if not state_dict_mismatch(model.state_dict(), self.state_dict) else None
        return None

    def resolved_model_kwargs(self) -> dict:
        """``model_kwargs`` with the constructor defaults filled in (older checkpoints stored only the passed ones)."""
        from fer_edge.models import resolved_model_kwargs

        return resolved_model_kwargs(self._create(), self.model_kwargs)


def state_dict_mismatch(own: dict, other: dict) -> str:
    """How ``other`` fails to fit a model whose state dict is ``own``, in one phrase ("" when it fits)."""
    missing = [k for k in own if k not in other]
    unexpected = [k for k in other if k not in own]
    shapes = [k for k in own if k in other and other[k].shape != own[k].shape]
    if not (missing or unexpected or shapes):
        return ""
    return (f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} of another shape, "
            f"e.g. {(missing + unexpected + shapes)[0]!r}")


def non_finite_tensors(state_dict: dict) -> list[str]:
    """Names of the floating-point tensors in ``state_dict`` holding inf or NaN, in its order (one device sync when
    none does)."""
    import torch

    floats = [(k, v) for k, v in state_dict.items() if torch.is_floating_point(v)]
    if not floats or bool(torch.stack([torch.isfinite(v).all() for _, v in floats]).all()):
        return []
    return [k for k, v in floats if not bool(torch.isfinite(v).all())]


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any], overwrite: bool = True) -> Path:
    """Write a checkpoint dict atomically (temp file, then rename); ``overwrite=False``: ``FileExistsError``
    if ``path`` exists by the time it is written. A write that fails (a full disk) is a :class:`CheckpointError`
    naming ``path`` and why (``cannot write PATH: No space left on device``), with no temporary file left."""
    import torch

    from fer_edge import __version__
    from fer_edge.utils import atomic_path

    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint payload lacks {', '.join(missing)}")
    # tensors go to the CPU: a checkpoint trained on a GPU then loads with a plain torch.load on any machine
    payload = _on_cpu({"format": FORMAT, "fer_edge_version": __version__, **payload})
    path = Path(path)
    # the temporary file keeps a suffix even when ``path`` has none: torch's zip writer refuses a name with
    # nothing before its last dot (".tmp-run-x1y2")
    with atomic_path(path, suffix=path.suffix or ".pt", overwrite=overwrite, durable=True) as tmp:
        try:
            torch.save(payload, tmp)
        except RuntimeError as e:  # torch's file writer: a full disk reads "[enforce fail ...] unexpected pos"
            # (the temporary file is removed on the way out, as after any failed write)
            raise CheckpointError(f"cannot write {path}: {_write_failure(tmp, e)}") from None
    return path


def _write_failure(tmp: Path, e: RuntimeError) -> str:
    """Why ``torch.save`` could not write ``tmp``, in one phrase. Its file writer keeps the system's reason to itself
    (``basic_ios::clear: iostream error``, then ``unexpected pos``): more is written to the file the way Python
    writes, whose error names it (``No space left on device``, a quota, a file too large); when that writes, the
    write failed for another reason, and torch's message's first line is given."""
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            chunk = b"\0" * 65536
            for _ in range(16):  # a full disk may still take a few bytes (the last block's free end)
                os.write(fd, chunk)
            os.fsync(fd)  # where the system says so only when the data goes to the disk (NFS)
        finally:
            os.close(fd)
    except OSError as oe:
        return oe.strerror or str(oe)
    first = (str(e).strip().splitlines() or [""])[0]
    return f"the write failed (torch.save: {type(e).__name__}: {first})" if first else "the write failed"


def _on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to the CPU."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def _load_error(e: Exception) -> str:
    """What ``torch.load``'s error means, in one line: its messages run to many lines of advice that does not
    apply here (a weights-only refusal suggests ``weights_only=False``, which fer-edge never uses: the
    unpickler's own reason is kept instead), and its other errors (``KeyError: 101``) say nothing by themselves."""
    text = str(e).strip()
    if text.startswith("Weights only load failed"):
        reason = text.split("WeightsUnpickler error:", 1)[-1].strip() if "WeightsUnpickler error:" in text else ""
        reason = (reason.splitlines() or [""])[0].split(". ")[0].rstrip(".")
        return (f"{type(e).__name__}: torch.load(weights_only=True) refused it"
                + (f" ({reason})" if reason else "")
                + ": not a PyTorch checkpoint, or one holding Python objects beyond tensors and plain data")
    # anything else torch.load raises on a bad file (EOFError, KeyError: 101, OSError, IndexError, a zip error...)
    return (f"corrupted, truncated, or not a PyTorch checkpoint at all; torch.load said {type(e).__name__}"
            + (f": {text.splitlines()[0]}" if text else ""))


def label_problems(labels) -> str:
    """What keeps ``labels`` from naming a model's outputs ("" when nothing): a list of distinct, non-empty
    strings (case-insensitively distinct, since files and folders are matched so) is needed."""
    if isinstance(labels, (str, bytes)) or not isinstance(labels, (list, tuple)):
        return f"expected a list of class names, got {type(labels).__name__}"
    if not labels:
        return "the list is empty"
    if not all(isinstance(x, str) and x.strip() for x in labels):
        return "every class name must be a non-empty string"
    seen: dict[str, str] = {}
    twice = []
    for x in labels:
        if x.lower() in seen:
            twice.append(f"{seen[x.lower()]!r} and {x!r}" if seen[x.lower()] != x else repr(x))
        seen.setdefault(x.lower(), x)
    return f"a class is named twice ({', '.join(twice)})" if twice else ""


def _file_state(fh) -> tuple:
    """What tells that an open file was written over: its size and modification time (nanoseconds)."""
    st = os.fstat(fh.fileno())
    return st.st_size, st.st_mtime_ns


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> Checkpoint:
    """Load a checkpoint with ``weights_only=True``; clear errors for missing or foreign files."""
    import torch

    from fer_edge.targets import find_target

    path = Path(path)
    artifact = find_target(path)
    if artifact is not None and path.exists():
        raise CheckpointError(f"{path} is an exported {artifact.name} artifact, not a checkpoint (.pt): "
                              "`fer-edge bench` and `fer-edge predict` run artifacts; this needs a checkpoint "
                              "or a shipped model name")
    if path.is_dir():  # a run folder: point at the checkpoints in it
        held = sorted(p.name for p in path.iterdir() if p.suffix.lower() in (".pt", ".pth") and p.is_file())
        held.sort(key=lambda n: (n != "best.pt", n))
        hint = (f"give a checkpoint file in it, e.g. {path / held[0]}" if held
                else "it holds no .pt checkpoint; give a checkpoint file or a shipped model name")
        raise CheckpointError(f"{path} is a folder, not a checkpoint: {hint}")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        # one open file, hashed then loaded: the digest is of the bytes loaded even if a training run replaces the
        # file meanwhile (a rename gives the path another file; this one stays), without holding a copy in memory
        with open(path, "rb") as fh:
            before = _file_state(fh)
            h = hashlib.sha256()
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
            digest = h.hexdigest()
            fh.seek(0)
            raw = torch.load(fh, map_location=map_location, weights_only=True)
            changed = _file_state(fh) != before  # written over in place meanwhile (cp, rsync --inplace)
    except PermissionError as e:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({_load_error(e)})") from None
    if changed:  # the digest would name other bytes than the weights loaded
        raise CheckpointError(f"{path}: the file changed while it was read (another program was writing it); "
                              "read it again once it is written")
    if is_part(raw):
        import re
        import shlex

        prefix = path.parent / re.sub(r"\.part\d+\.pt$", "", path.name)
        joined = Path(f"{prefix}.pt")
        if joined.exists():  # join replaces its --out: never suggest a file that is there
            joined = Path(f"{prefix}.joined.pt")
        raise CheckpointError(
            f"{path}: a part of a split checkpoint, not a whole one: join the parts into one checkpoint first "
            f"(`python -m fer_edge.checkpoint join {shlex.quote(str(prefix))}.part*.pt --out "
            f"{shlex.quote(str(joined))}`) and use that"
        )
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a fer-edge checkpoint (expected format {FORMAT!r}); "
            "train one with `fer-edge train` or use a shipped model"
        )
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    bad = label_problems(raw["labels"])
    if bad:
        raise CheckpointError(f"{path}: its labels {raw['labels']!r} are not usable: {bad}")
    problems = []
    if (why := Normalization.problem(raw["normalization"])) is not None:
        problems.append(f"its normalization {why}")
    for key in ("model_kwargs", "train_config", "metrics", "data"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            problems.append(f"its {key} is a {type(raw[key]).__name__}, not a dict")
    sd = raw["state_dict"]
    if not isinstance(sd, dict):
        problems.append(f"its state_dict is a {type(sd).__name__}, not a dict of tensors")
    else:
        odd = [(k, v) for k, v in sd.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
        if odd:
            k, v = odd[0]
            what = (f"key {k!r} is a {type(k).__name__}, not a name" if not isinstance(k, str)
                    else f"{k!r} is a {type(v).__name__}")
            problems.append(f"its state_dict is not a dict of tensors: {len(odd)} of its {len(sd)} entries are "
                            f"not a named tensor (e.g. {what})")
    epoch = raw.get("epoch", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int):
        problems.append(f"its epoch {epoch!r} is not a whole number")
    if not isinstance(raw["model"], str):
        problems.append(f"its model name {raw['model']!r} is not a string")
    if problems:
        raise CheckpointError(f"{path}: not a usable checkpoint: {'; '.join(problems)}")
    return Checkpoint(
        path=path,
        model_name=raw["model"],
        model_kwargs=dict(raw.get("model_kwargs") or {}),
        state_dict=raw["state_dict"],
        labels=list(raw["labels"]),
        normalization=Normalization.from_dict(raw["normalization"]),
        train_config=dict(raw.get("train_config") or {}),
        metrics=dict(raw.get("metrics") or {}),
        data=dict(raw.get("data") or {}),
        epoch=int(raw.get("epoch", 0)),
        raw=raw,
        loaded_sha256=digest,
    )


# --- parts: a checkpoint too large for one transfer, as several smaller files ----------------------------------
from collections.abc import Callable  # noqa: E402  (the parts' code below)

PART_FORMAT = "fer-edge-checkpoint-part/3"
# earlier formats: /1 carried no hashes (a flipped bit in its tensors joined unnoticed), /2 hashes that did not
# cover the parts' headers; named as such, and joined only when asked (--legacy-parts), unverified
_OLD_PART_FORMATS = ("fer-edge-checkpoint-part/1", "fer-edge-checkpoint-part/2")
_PART_SLACK = 64 * 1024  # bytes kept free in each part for the pickle's own overhead
_PART_KEYS = ("group", "index", "count", "state_dict", "sha256")


def is_part(raw: Any) -> bool:
    """Whether ``raw`` (a loaded file) is a checkpoint part, of this fer-edge's part format or an earlier one."""
    return isinstance(raw, dict) and raw.get("format") in (PART_FORMAT, *_OLD_PART_FORMATS)


def _stored(t):
    """Tensor ``t`` as a split stores it: floating point as float16, except a tensor holding finite values beyond
    float16's range (|x| > 65504), which would come back as infinities: that one keeps its own dtype."""
    import torch

    if t.is_floating_point() and t.dtype != torch.float16:
        half = t.half()
        if not bool((torch.isinf(half) & torch.isfinite(t)).any()):
            return half
    # torch.save writes a view's whole storage (a slice of a larger tensor): a copy holds only its own values
    return t.clone() if t.untyped_storage().nbytes() > t.numel() * t.element_size() else t


def _record_cost(name: str, t) -> int:
    """Bytes tensor ``t`` takes in a part under ``name``: its data and, generously, its zip record and pickle
    entry (about 200 bytes and the name twice, plus alignment; measured with torch 2.14)."""
    return t.numel() * t.element_size() + 320 + 2 * len(name.encode("utf-8", "surrogatepass"))


def _digest(state_dict: dict, extra: str = "") -> str:
    """SHA-256 of a part's contents: each tensor's name, dtype, shape and bytes (in name order), and ``extra``
    (part 0's metadata). torch.load checks no checksum: a bit flipped in a part's tensor data loads silently."""
    import hashlib

    import torch

    h = hashlib.sha256(extra.encode("utf-8", "surrogatepass"))
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode("utf-8", "surrogatepass"))
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _header(part: dict) -> str:
    """What a part's hash covers beyond its tensors: its place in the split (group, index, count) and, in part 0,
    the checkpoint's metadata, the original dtypes and the other parts' hashes, so damage to any of them is
    blamed on the part that holds it. ``repr`` is exact for the plain data a checkpoint holds (floats round-trip),
    and torch.load gives it back as saved."""
    head = (part["group"], part["index"], part["count"])
    if part["index"] == 0:
        head += (part.get("checkpoint"), part.get("dtypes"), (part.get("parts_sha256") or [None])[1:])
    return repr(head)


def part_limit_problems(max_bytes: float, state_dict: dict | None = None) -> list[str]:
    """What keeps parts of at most ``max_bytes`` bytes from holding a checkpoint with ``state_dict`` (its tensors
    as :func:`split_checkpoint` stores them), one phrase each; [] when they can. Without a state dict only the
    limit itself is judged. :func:`split_checkpoint` and the distillation round (before it trains anything) both
    ask this."""
    import math

    if not isinstance(max_bytes, (int, float)) or not math.isfinite(max_bytes):
        return [f"the part size must be a finite number, not {max_bytes!r}"]
    if max_bytes <= _PART_SLACK:
        return [f"parts of {max_bytes:.0f} bytes are too small to hold anything: each part must be larger than "
                f"{_PART_SLACK} bytes ({_PART_SLACK / 2**20:g} MiB), kept for the file's own overhead"]
    budget = max_bytes - _PART_SLACK
    stored = {name: _stored(t) for name, t in (state_dict or {}).items()}
    sizes = {name: _record_cost(name, t) for name, t in stored.items()}
    over = sorted((n for n, size in sizes.items() if size > budget), key=lambda n: -sizes[n])
    if not over:
        return []
    name, size = over[0], sizes[over[0]]
    dtype = str(stored[name].dtype).removeprefix("torch.")
    why = "" if dtype == "float16" else " (values beyond float16's range)" if stored[name].is_floating_point() else ""
    others = f" (and {len(over) - 1} other tensor{'s' if len(over) > 2 else ''})" if len(over) > 1 else ""
    return [f"tensor {name} alone takes {size} bytes ({size / 2**20:.2f} MiB) as {dtype}{why}{others}, over parts "
            f"of {max_bytes:.0f} bytes less {_PART_SLACK} kept for the file's overhead: parts must be at least "
            f"{math.ceil((size + _PART_SLACK) / 2**20 * 100) / 100:.2f} MiB"]


def prefix_problem(prefix: str | os.PathLike) -> str:
    """Why ``prefix`` cannot name parts ("" when it can): it must end in a file name (``runs/teacher``), not be
    empty or a folder (``runs/``), which gave hidden files such as ``runs/.part0.pt``."""
    text = os.fspath(prefix)
    if os.path.basename(text) in ("", ".", ".."):
        return (f"PREFIX {text!r} names no file: the parts would be hidden files such as "
                f"{part_path(text, 0) if text else '.part0.pt'}; give a name, e.g. {os.path.join(text, 'teacher')}")
    return ""


def part_path(prefix: str | os.PathLike, index: int) -> Path:
    """The file :func:`split_checkpoint` writes part ``index`` of ``prefix`` to: ``<prefix>.part<index>.pt``."""
    return Path(f"{prefix}.part{index}.pt")


def existing_parts(prefix: str | os.PathLike) -> dict[int, Path]:
    """The files named as parts of ``prefix`` (``<prefix>.part<N>.pt``) that exist now, by ``N``."""
    import re

    prefix = Path(prefix)
    if not prefix.parent.is_dir():
        return {}
    pattern = re.compile(re.escape(prefix.name) + r"\.part(\d+)\.pt")
    found = {}
    for p in prefix.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.is_file():
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def _read_part(p: Path, legacy: bool = False) -> tuple[dict | None, str]:
    """``(part, "")`` for a readable checkpoint part, else ``(None, what it is instead)``. ``legacy``: a part of an
    earlier format (no hashes) is read too, its ``sha256`` None."""
    import torch

    if p.is_dir():
        return None, "a folder, not a checkpoint part"
    if not p.exists():
        return None, "not found"
    try:
        raw = torch.load(p, map_location="cpu", weights_only=True)
    except PermissionError as e:
        return None, f"cannot be read ({e.strerror or e})"
    except Exception as e:
        return None, f"not readable ({_load_error(e)})"
    if isinstance(raw, dict) and raw.get("format") in _OLD_PART_FORMATS:
        if not legacy:
            return None, (f"a checkpoint part written by an earlier fer-edge (format {raw['format']!r}, without "
                          "the hashes this version checks, so damage cannot be found): split the checkpoint again "
                          "with this version, or, where the checkpoint is gone, join them unverified with "
                          "--legacy-parts")
        raw = {**raw, "format": PART_FORMAT, "sha256": None}
        if raw.get("index") == 0:
            raw["parts_sha256"] = None
    if not isinstance(raw, dict) or raw.get("format") != PART_FORMAT:
        return None, f"not a checkpoint part (expected format {PART_FORMAT!r})"
    lacks = [k for k in _PART_KEYS if k not in raw]
    garbled = [] if lacks else [k for k, ok in (
        ("index", isinstance(raw["index"], int) and not isinstance(raw["index"], bool)),
        ("count", isinstance(raw["count"], int) and not isinstance(raw["count"], bool)),
        ("group", isinstance(raw["group"], str)),
        ("sha256", raw["sha256"] is None or isinstance(raw["sha256"], str)),
        ("parts_sha256", "parts_sha256" not in raw or raw["parts_sha256"] is None
         or (isinstance(raw["parts_sha256"], list)
             and all(h is None or isinstance(h, str) for h in raw["parts_sha256"]))),
    ) if not ok]
    if lacks or garbled:
        return None, f"a damaged checkpoint part (lacks or garbles {', '.join(lacks or garbled)})"
    sd = raw["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        return None, "a damaged checkpoint part (its state_dict is not a dict of named tensors)"
    return raw, ""


class SplitInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during :func:`split_checkpoint`; ``written`` lists the parts in place when it came: all of
    them (the interrupt was held while they were renamed into place) or none (the files at PREFIX are as they
    were)."""

    def __init__(self, message: str, written: list[Path]):
        super().__init__(message)
        self.written = written


def split_checkpoint(path: str | os.PathLike, prefix: str | os.PathLike, max_bytes: int,
                     on_removed: Callable[[Path], None] | None = None) -> list[Path]:
    """Write checkpoint ``path`` as ``<prefix>.part<i>.pt`` files of at most ``max_bytes`` each.

    Floating-point weights are stored as float16 (a teacher loses nothing that matters; the original dtypes are
    recorded and restored by :func:`join_checkpoint`), except a tensor with finite values beyond float16's range,
    kept in its own dtype; ``resume`` state is dropped. Part 0 carries the rest of the checkpoint, and its size
    counts against part 0's limit. Every part names the split it belongs to (the checkpoint, the size limit and
    the number of parts), so parts of different checkpoints or splits do not mix, and the SHA-256 of its contents
    (part 0 lists every part's), so a part damaged in transfer is refused by :func:`join_checkpoint`.

    All parts are written to temporary files and checked against the limit first, then renamed into place with
    Ctrl-C and SIGTERM held: a failure or an interrupt leaves either every new part or the files at ``prefix`` as
    they were (:class:`SplitInterrupted` says which).

    Parts left at ``prefix`` by an earlier split into more parts (``<prefix>.part<N>.pt`` with ``N`` at least the
    new count, holding a checkpoint part) are removed once the new parts are in place, each passed to
    ``on_removed``: they would otherwise sit beside the new ones as if they belonged to them. Files of that name
    that are not checkpoint parts are left alone.
    """
    import hashlib
    import io
    import tempfile

    import torch

    from fer_edge.utils import check_writable_dir, interrupts_deferred

    problems = part_limit_problems(max_bytes)
    if why := prefix_problem(prefix):
        problems.append(why)
    if problems:
        raise CheckpointError(f"cannot split {path}: " + "; ".join(problems))
    ck = load_checkpoint(path)
    problems = part_limit_problems(max_bytes, ck.state_dict)
    if problems:
        raise CheckpointError(f"cannot split {path}: " + "; ".join(problems))
    folder = Path(prefix).parent
    try:
        check_writable_dir(folder, "PREFIX's folder", CheckpointError, advice="choose another PREFIX")
    except CheckpointError as e:
        raise CheckpointError(f"cannot split {path} into {prefix}.part<i>.pt: {e}") from None
    meta = {k: v for k, v in ck.raw.items() if k not in ("state_dict", "resume")}
    dtypes = {name: str(t.dtype).removeprefix("torch.") for name, t in ck.state_dict.items()}
    # part 0 carries the metadata: its pickled size counts against part 0's budget (a long train_config or
    # history would otherwise push part 0 over the limit, found only after writing it)
    buf = io.BytesIO()
    torch.save({"checkpoint": meta, "dtypes": dtypes}, buf)
    budget = max_bytes - _PART_SLACK
    if buf.tell() > budget:
        raise CheckpointError(f"cannot split {path}: its metadata alone (everything but the weights) takes "
                              f"{buf.tell()} bytes, over parts of {max_bytes} bytes less {_PART_SLACK} kept for the "
                              "file's overhead: give a larger limit")
    groups: list[dict] = [{}]
    used = buf.tell()
    for name, t in ck.state_dict.items():  # load_checkpoint mapped them to the CPU
        t = _stored(t)
        cost = _record_cost(name, t)
        if used + cost > budget and (groups[-1] or used):  # used > 0 in an empty part 0: its metadata
            groups.append({})
            used = 0
        groups[-1][name] = t
        used += cost
    # one split of one checkpoint: the same file split under another limit gives parts that do not mix with these
    group = hashlib.sha256(
        f"{Path(path).resolve()}:{ck.sha256}:{max_bytes}:{len(groups)}".encode()).hexdigest()[:16]
    payloads = [{"format": PART_FORMAT, "group": group, "index": i, "count": len(groups), "state_dict": sd}
                for i, sd in enumerate(groups)]
    payloads[0].update(checkpoint=meta, dtypes=dtypes)
    for part in payloads[:0:-1] + payloads[:1]:  # part 0 last: its hash covers the others'
        if part["index"] == 0:
            part["parts_sha256"] = [None] + [q["sha256"] for q in payloads[1:]]
        part["sha256"] = _digest(part["state_dict"], _header(part))
    payloads[0]["parts_sha256"][0] = payloads[0]["sha256"]
    # every part's path checked before any is written: a folder in the way of a later part, or the checkpoint
    # itself named as a part, would otherwise be found after the first parts (or the source) were overwritten
    source = Path(path).resolve()
    problems = []
    for i in range(len(groups)):
        dest = part_path(prefix, i)
        if dest.is_dir():
            problems.append(f"{dest} is a folder: remove it or choose another PREFIX")
        elif dest.exists() and dest.resolve() == source:
            problems.append(f"{dest}, part {i} of {len(groups)}, is the checkpoint being split: writing it would "
                            "overwrite the checkpoint; choose another PREFIX")
    if problems:
        raise CheckpointError(f"cannot split {path} into {len(groups)} part(s): " + "; ".join(problems))
    temps: list[Path] = []
    out = [part_path(prefix, i) for i in range(len(groups))]
    made = [q for q in (folder, *folder.parents) if not q.exists()]  # removed again if nothing is written
    folder.mkdir(parents=True, exist_ok=True)
    in_place = False
    try:
        for i, payload in enumerate(payloads):
            fd, tmp = tempfile.mkstemp(prefix=f".tmp-{out[i].stem}-", suffix=".pt", dir=folder)
            os.close(fd)
            temps.append(Path(tmp))
            os.unlink(tmp)  # torch.save makes it again with the umask's mode (mkstemp's file is owner-only)
            torch.save(payload, tmp)
            size = temps[-1].stat().st_size
            if size > max_bytes:  # the estimate of the pickle's overhead fell short: nothing is in place yet
                raise CheckpointError(f"cannot split {path}: part {i} came to {size} bytes, over the "
                                      f"{max_bytes}-byte limit; nothing was written (give a larger limit)")
        with interrupts_deferred():  # all new parts in place, and stale ones gone, or none
            for tmp, dest in zip(temps, out):
                os.replace(tmp, dest)
            in_place = True
            for n, stale in existing_parts(prefix).items():
                # parts of an earlier format too: they would sit beside the new ones as well
                if n >= len(groups) and _read_part(stale, legacy=True)[0] is not None:
                    stale.unlink()
                    if on_removed is not None:
                        on_removed(stale)
    except BaseException as e:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if not in_place:
            for q in made:  # deepest first; a folder something else put files in stays
                try:
                    q.rmdir()
                except OSError:
                    break
        if isinstance(e, KeyboardInterrupt):
            raise SplitInterrupted(str(e), out if in_place else []) from None
        raise
    return out


def join_checkpoint(parts: list[str | os.PathLike], dest: str | os.PathLike, legacy: bool = False) -> Path:
    """Reassemble the files :func:`split_checkpoint` wrote into one checkpoint at ``dest`` (a file; an existing
    folder is refused); every problem with the parts (unreadable, foreign, missing, repeated, from different
    checkpoints or splits, disagreeing on their number, contents that do not match their hashes, tensors missing or
    extra) and with ``dest`` is reported at once. ``legacy``: parts of an earlier format, which carry no hashes,
    are joined too (their contents unverified); without it they are refused."""
    import re

    import torch

    from fer_edge.utils import check_writable_dir

    parts = [Path(p) for p in parts]
    dest = Path(dest)
    problems, loaded = [], {}
    if dest.is_dir():
        name = re.sub(r"\.part\d+\.pt$", "", parts[0].name) if parts else "checkpoint"
        problems.append(f"--out {dest} is a folder: give the joined checkpoint's file name, e.g. {dest / name}.pt")
    elif not dest.exists():
        try:
            check_writable_dir(dest, "--out", CheckpointError)  # the folder it goes into must be one
        except CheckpointError as e:
            problems.append(str(e))
    if dest.exists() and any(dest.resolve() == p.resolve() for p in parts if p.exists()):
        problems.append(f"--out {dest} is one of the parts: write the checkpoint elsewhere")
    for p in parts:
        raw, why = _read_part(p, legacy=legacy)
        if raw is None:
            problems.append(f"{p}: {why}")
            continue
        if raw["index"] in loaded:
            problems.append(f"{p}: part {raw['index']} is given twice (also {loaded[raw['index']][0]})")
            continue
        loaded[raw["index"]] = (p, raw)
    first = loaded[0][1] if 0 in loaded else None
    if first is not None and not all(k in first for k in ("checkpoint", "dtypes", "parts_sha256")):
        problems.append(f"{loaded[0][0]}: part 0 lacks the checkpoint's metadata (a damaged part)")
        first = None
    damaged = set()
    for i, (p, raw) in sorted(loaded.items()):
        if (i == 0 and first is None) or raw["sha256"] is None:  # damaged part 0 (said above); an unhashed part
            continue
        if _digest(raw["state_dict"], _header(raw)) != raw["sha256"]:
            damaged.add(i)
            problems.append(f"{p}: its contents do not match the SHA-256 it was written with (damaged in transfer "
                            "or on disk): copy it again from where the checkpoint was split")
    if loaded:
        groups = {raw["group"] for _, raw in loaded.values()}
        if len(groups) > 1:
            problems.append("the parts come from different checkpoints or different splits of one: " + ", ".join(
                f"{p} ({raw['group']})" for p, raw in sorted(loaded.values(), key=lambda v: v[1]["index"])))
        counts = {raw["count"] for _, raw in loaded.values()}
        complete = len(groups) == 1 and len(counts) == 1 and set(loaded) == set(range(next(iter(counts))))
        if len(counts) > 1:
            problems.append("the parts disagree on how many there are: " + ", ".join(
                f"{p} says {raw['count']}" for p, raw in sorted(loaded.values(), key=lambda v: v[1]["index"])))
        else:
            count = counts.pop()
            beyond = sorted(i for i in loaded if not 0 <= i < count)
            if beyond:
                problems.append(f"part(s) {', '.join(map(str, beyond))} given, but the checkpoint has {count} "
                                f"(0 to {count - 1})")
            missing = sorted(set(range(count)) - set(loaded))
            if missing:
                problems.append(f"part(s) {', '.join(map(str, missing))} of {count} missing")
        if first is not None and 0 not in damaged and complete:  # what is missing is said once, above
            problems += _content_problems(loaded, first)
    elif not problems:
        problems.append("no parts given")
    if problems:
        raise CheckpointError("cannot join the checkpoint parts:\n  " + "\n  ".join(problems))
    state_dict = {}
    for i in range(first["count"]):
        state_dict.update(loaded[i][1]["state_dict"])
    dtypes = first["dtypes"]
    state_dict = {k: v.to(getattr(torch, dtypes[k])) for k, v in state_dict.items()}
    return save_checkpoint(dest, {**first["checkpoint"], "state_dict": state_dict})


def _content_problems(loaded: dict[int, tuple[Path, dict]], first: dict) -> list[str]:
    """What part 0's record (every part's hash, every tensor's dtype) says is wrong with the parts ``loaded`` of
    one split, each whole by its own hash: a part that is not the one part 0 lists, tensors in two parts, tensors
    part 0 does not list or lists but no part holds."""
    import torch

    problems = []
    listed = first["parts_sha256"]
    p0 = loaded[0][0]
    for i, (p, raw) in sorted(loaded.items()):
        if listed is None:  # --legacy-parts: an earlier format's part 0 lists no hashes
            break
        if raw["sha256"] is None:  # an earlier format's part (--legacy-parts): nothing to compare
            continue
        if i and (i >= len(listed) or listed[i] != raw["sha256"]):
            problems.append(f"{p}: not the part {i} that {p0} lists (another hash): a part of another split under "
                            "the same name; copy the parts of one split together")
    seen: dict[str, Path] = {}
    twice = []
    for i, (p, raw) in sorted(loaded.items()):
        for name in raw["state_dict"]:
            if name in seen:
                twice.append(f"{name!r} ({seen[name]} and {p})")
            seen.setdefault(name, p)
    dtypes = first["dtypes"]
    if twice:
        problems.append(f"{len(twice)} tensor(s) are in two parts, e.g. {twice[0]}")
    extra = [n for n in seen if n not in dtypes]
    if extra:
        problems.append(f"the parts hold {len(extra)} tensor(s) the checkpoint does not list, e.g. {extra[0]!r}")
    absent = [n for n in dtypes if n not in seen]
    if absent:
        problems.append(f"the parts lack {len(absent)} tensor(s) the checkpoint lists, e.g. {absent[0]!r}")
    bad = [f"{n!r}: {d!r}" for n, d in dtypes.items() if not isinstance(getattr(torch, str(d), None), torch.dtype)]
    if bad:
        problems.append(f"part 0 records {len(bad)} dtype(s) torch does not know, e.g. {bad[0]}")
    return problems


def main(argv: list[str] | None = None) -> int:
    import argparse
    import math
    import sys

    from fer_edge.errors import OptionError
    from fer_edge.utils import sigterm_as_interrupt

    ap = argparse.ArgumentParser(prog="python -m fer_edge.checkpoint",
                                 description="Split a checkpoint into parts of a size limit, or join them again.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="write CHECKPOINT as PREFIX.part<i>.pt (float16 weights where they fit)",
                       description="Write CHECKPOINT as PREFIX.part0.pt, PREFIX.part1.pt, ... (floating-point "
                                   "weights as float16, except those beyond its range; no optimizer state), each at "
                                   "most --max-mb MiB and carrying the SHA-256 of its contents. Parts left at PREFIX "
                                   "by an earlier split into more parts are removed, each named on stderr.")
    s.add_argument("checkpoint")
    s.add_argument("prefix", help="where the parts go: PREFIX.part0.pt, ... (e.g. out/teacher)")
    s.add_argument("--max-mb", type=float, required=True,
                   help=f"largest part, in MiB (more than {_PART_SLACK / 2**20:g}, and enough for the largest tensor)")
    j = sub.add_parser("join", help="reassemble parts into one checkpoint",
                       description="Reassemble the parts `split` wrote into one checkpoint with its original dtypes. "
                                   "Missing, repeated, foreign, mixed-up or damaged parts (contents that do not "
                                   "match their SHA-256) are refused, every problem listed.")
    j.add_argument("parts", nargs="+")
    j.add_argument("--out", required=True,
                   help="the checkpoint file to write, e.g. runs/gpu/teacher.pt (replaced if it exists; an existing "
                        "folder is refused)")
    j.add_argument("--legacy-parts", action="store_true",
                   help="also join parts an earlier fer-edge wrote, which carry no SHA-256: their contents cannot "
                        "be checked (for when the checkpoint they came from is gone)")
    args = ap.parse_args(argv)
    before, written = None, []
    try:
        with sigterm_as_interrupt():
            if args.cmd == "split":
                if not math.isfinite(args.max_mb) or args.max_mb <= 0:
                    raise OptionError(f"--max-mb must be a positive number of MiB, not {args.max_mb:g}")
                max_bytes = int(args.max_mb * 1024 * 1024)
                if why := prefix_problem(args.prefix) or "; ".join(part_limit_problems(max_bytes)):
                    raise OptionError(why)
                removed = lambda p: print(f"removed {p}: a part of an earlier split into more parts", file=sys.stderr)
                written = split_checkpoint(args.checkpoint, args.prefix, max_bytes, on_removed=removed)
                for p in written:
                    print(p)
            else:
                before = _identity(args.out)
                print(join_checkpoint(args.parts, args.out, legacy=args.legacy_parts))
    except OptionError as e:  # a value wrong on its own: a usage error
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, OSError) as e:  # OSError: the file system refused a write (no permission, full disk)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        written = getattr(e, "written", None) or written  # SplitInterrupted's, or the finished split's
        if written:
            print(f"interrupted after every part was written: {', '.join(map(str, written))}", file=sys.stderr)
        elif args.cmd == "split":  # before, or while, the parts were written
            print(f"interrupted: no part was written; the files at {args.prefix}.part<i>.pt are as they were",
                  file=sys.stderr)
        else:
            done = _identity(args.out) not in (before, None)
            print(f"interrupted after {args.out} was written" if done else
                  f"interrupted: {args.out} was not written" + (" (the file there is as it was)" if before else ""),
                  file=sys.stderr)
        return 130
    return 0


def _identity(path: str) -> tuple | None:
    """What tells a file at ``path`` from the one that replaced it (None when there is none)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


if __name__ == "__main__":
    from fer_edge.utils import command_environment

    command_environment()  # as the fer-edge command: ONNX Runtime's telemetry off (a user's setting wins)
    raise SystemExit(main())

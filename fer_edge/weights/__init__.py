"""Shipped pretrained weights and their metadata.

Each entry names a checkpoint file in this folder (a normal fer-edge checkpoint) and
describes it. ``resolve_checkpoint`` turns a shipped name or a path into a file.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from fer_edge.constants import IMAGE_SIZE, LABELS
from fer_edge.errors import CheckpointError

WEIGHTS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class WeightMeta:
    """Metadata of one shipped weight file."""

    name: str
    architecture: str
    file: str
    params: int
    macs: int
    mean: float
    std: float
    metrics: dict = field(default_factory=dict)
    recipe: str = ""
    hardware: str = ""
    train_time: str = ""
    labels: tuple[str, ...] = LABELS
    input_size: tuple[int, int, int] = (1, IMAGE_SIZE, IMAGE_SIZE)
    #: This weight's own parity gate, ``{precision: {threshold: value}}`` (e.g. ``{"int8":
    #: {"min_agreement": 0.97}}``), applied by ``fer-edge export`` over the defaults of
    #: :data:`fer_edge.parity.DEFAULT_THRESHOLDS`; command-line overrides still win.
    parity_gate: dict = field(default_factory=dict)
    #: Why the weight's gate differs from the defaults, with the figures measured on it.
    parity_gate_reason: str = ""

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file

    def gate_overrides(self) -> dict[str, dict[str, float | None]]:
        """The weight's gate as ``{threshold: {precision: value}}``, the shape :func:`fer_edge.parity.with_overrides` takes."""
        out: dict[str, dict[str, float | None]] = {}
        for precision, limits in self.parity_gate.items():
            for name, value in limits.items():
                out.setdefault(name, {})[precision] = value
        return out


def _load_table() -> dict[str, WeightMeta]:
    """Read ``weights.json`` (written by ``python -m fer_edge.weights.ship``) into WeightMeta entries; a damaged
    table (not JSON, not a list of entries, an entry with unknown or missing fields, a name twice) is a
    :class:`CheckpointError` naming the file."""
    import json
    from dataclasses import fields

    table = WEIGHTS_DIR / "weights.json"
    if not table.is_file():
        return {}
    known = {f.name for f in fields(WeightMeta)}
    try:
        entries = json.loads(table.read_text())
        if not isinstance(entries, list):
            raise ValueError(f"expected a list of weight entries, got a {type(entries).__name__}")
        out = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ValueError(f"entry {i + 1} is not an object with a name")
            if unknown := sorted(set(entry) - known):
                raise ValueError(f"entry {entry['name']!r} has unknown fields {', '.join(unknown)}")
            if entry["name"] in out:
                raise ValueError(f"{entry['name']!r} is listed twice")
            entry["labels"] = tuple(entry.get("labels", LABELS))
            entry["input_size"] = tuple(entry.get("input_size", (1, IMAGE_SIZE, IMAGE_SIZE)))
            out[entry["name"]] = WeightMeta(**entry)
    except (OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{table}, the shipped weights' table, is damaged ({e}); restore it (reinstall "
                              "fer-edge, or `git checkout` it in a source tree)") from None
    return out


def _load_table_or_note() -> tuple[dict[str, WeightMeta], str]:
    try:
        return _load_table(), ""
    except CheckpointError as e:
        return {}, str(e)


#: Shipped weights (see README, "Pretrained models"). A damaged table leaves it empty, and every use of a shipped
#: name says why (:data:`TABLE_PROBLEM`); commands given checkpoint paths work as usual.
PRETRAINED: dict[str, WeightMeta]
TABLE_PROBLEM: str
PRETRAINED, TABLE_PROBLEM = _load_table_or_note()

#: The weight used when a command gets no model.
DEFAULT_MODEL = "small"


def check_parity_gate(gate: dict, reason: str, reason_option: str = "--reason") -> None:
    """Refuse a weight gate with an unknown precision or threshold name, a value that is not a finite number in
    its range (:func:`fer_edge.parity.threshold_problems`), or without a reason, and a reason without a gate (it
    would be dropped: the defaults need none); one :class:`~fer_edge.errors.OptionError` (a usage error) lists every
    problem."""
    from fer_edge.errors import OptionError
    from fer_edge.parity import threshold_problems

    problems = threshold_problems(gate, objects_ok=False)
    if gate and not str(reason).strip():
        problems.append(f"a weight's own parity gate needs a reason ({reason_option}: the figures measured on the "
                        "weight)")
    if not gate and str(reason).strip():
        problems.append(f"{reason_option} without a gate: an empty gate restores the defaults, which need no reason "
                        f"(leave {reason_option} out)")
    if problems:
        raise OptionError("invalid parity gate: " + "; ".join(problems))


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, cached on its path, size and modification time (a changed file is hashed again)."""
    from fer_edge.utils import sha256_path

    return sha256_path(path)


def shipped_with_sha(sha256: str) -> WeightMeta | None:
    """The shipped weight whose file has this SHA-256 (so a path to a shipped file counts as the weight)."""
    for meta in PRETRAINED.values():
        if meta.path.is_file():
            st = meta.path.stat()
            if _file_sha256(str(meta.path), st.st_size, st.st_mtime_ns) == sha256:
                return meta
    return None


def resolve_checkpoint(spec: str | Path | None) -> Path:
    """A shipped name (``small``, ``nano``), a checkpoint path, or None for the default."""
    if spec is None:
        spec = DEFAULT_MODEL
    s = str(spec)
    if not s.strip():  # Path("") is ".", a folder that exists: it would be "checkpoint not found" further on
        raise CheckpointError("the checkpoint name is empty: give a checkpoint path or shipped model name")
    if s in PRETRAINED:
        p = PRETRAINED[s].path
        if not p.is_file():
            raise CheckpointError(f"shipped weight {s!r} is registered but its file {p} is missing")
        return p
    p = Path(s)
    if p.exists():
        return p
    if TABLE_PROBLEM:
        raise CheckpointError(f"{s}: no such checkpoint file, and no shipped model can be named: {TABLE_PROBLEM}")
    shipped = ", ".join(PRETRAINED) or "none yet"
    raise CheckpointError(f"{s}: no such checkpoint file or shipped model (shipped models: {shipped})")

"""Shipped pretrained weights and their metadata.

Each entry names a checkpoint file in this folder (a normal fer-edge checkpoint) and
describes it. ``resolve_checkpoint`` turns a shipped name or a path into a file.
"""
from __future__ import annotations

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

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file


def _load_table() -> dict[str, WeightMeta]:
    """Read ``weights.json`` (written by ``python -m fer_edge.weights.ship``) into WeightMeta entries."""
    import json

    table = WEIGHTS_DIR / "weights.json"
    if not table.is_file():
        return {}
    out = {}
    for entry in json.loads(table.read_text()):
        entry["labels"] = tuple(entry.get("labels", LABELS))
        entry["input_size"] = tuple(entry.get("input_size", (1, IMAGE_SIZE, IMAGE_SIZE)))
        out[entry["name"]] = WeightMeta(**entry)
    return out


#: Shipped weights (see README, "Pretrained models").
PRETRAINED: dict[str, WeightMeta] = _load_table()

#: The weight used when a command gets no model.
DEFAULT_MODEL = "small"


def resolve_checkpoint(spec: str | Path | None) -> Path:
    """A shipped name (``small``, ``nano``), a checkpoint path, or None for the default."""
    if spec is None:
        spec = DEFAULT_MODEL
    s = str(spec)
    if s in PRETRAINED:
        p = PRETRAINED[s].path
        if not p.is_file():
            raise CheckpointError(f"shipped weight {s!r} is registered but its file {p} is missing")
        return p
    p = Path(s)
    if p.exists():
        return p
    shipped = ", ".join(PRETRAINED) or "none yet"
    raise CheckpointError(f"{s}: no such checkpoint file or shipped model (shipped models: {shipped})")

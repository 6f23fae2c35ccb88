"""Summaries of the registered models: parameters, MACs per image and source."""
from __future__ import annotations

from fer_edge.constants import NUM_CLASSES
from fer_edge.models.registry import count_macs, count_params, create_model, get_model_entry, list_models


def describe_model(name: str, num_classes: int = NUM_CLASSES) -> dict:
    """``{"name", "params", "macs", "source"}`` for one registered model (MACs per 48x48 image)."""
    entry = get_model_entry(name)
    model = create_model(name, num_classes=num_classes)
    return {"name": name, "params": count_params(model), "macs": count_macs(model), "source": entry.source}


def describe_models(names: list[str] | None = None, num_classes: int = NUM_CLASSES) -> list[dict]:
    """:func:`describe_model` for ``names`` (default: every registered model, sorted by name)."""
    return [describe_model(n, num_classes=num_classes) for n in (list_models() if names is None else names)]


def format_count(n: int) -> str:
    """A short human count, 3 significant digits: 950 -> "950", 82383 -> "82.4K", 12402864 -> "12.4M"."""
    if abs(n) < 1000:
        return str(n)
    for div, unit in ((1e3, "K"), (1e6, "M"), (1e9, "G")):
        v = float(f"{n / div:.3g}")  # rounded, so 999_999 becomes 1.00M, not 1e+03K
        if abs(v) < 1000 or unit == "G":
            return f"{v:g}{unit}" if abs(v) < 1000 else f"{v:.0f}{unit}"
    raise AssertionError("unreachable")

"""Package a trained run's ``best.pt`` as a shipped weight and record its metadata.

    python -m fer_edge.weights.ship runs/fer_small/best.pt --name small \\
        --recipe "fer-edge train ..." --hardware "2-core x86-64 CPU" --train-time "62 min"

Copies the checkpoint's model state (no optimizer state) into ``fer_edge/weights/<name>.pt``
and writes or replaces the entry in ``weights.json``: architecture, parameters, MACs
(counted), normalisation, labels and the metrics recorded in the checkpoint.
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import typer

from fer_edge.cli.common import handle_errors
from fer_edge.weights import WEIGHTS_DIR, WeightMeta

MAX_BYTES = 4 * 1024 * 1024

cli = typer.Typer(add_completion=False)


def ship(checkpoint: Path, name: str, recipe: str, hardware: str, train_time: str,
         extra_metrics: dict | None = None, parity_gate: dict | None = None,
         parity_gate_reason: str = "") -> WeightMeta:
    """Copy ``checkpoint`` in as weight ``name`` and write its entry. A new weight starts from the
    default parity gate unless ``parity_gate`` is given (a gate measured on the old file does not carry over)."""
    from fer_edge.checkpoint import load_checkpoint, save_checkpoint
    from fer_edge.errors import CheckpointError
    from fer_edge.models import count_macs, count_params
    from fer_edge.weights import check_parity_gate

    check_parity_gate(parity_gate or {}, parity_gate_reason)

    ck = load_checkpoint(checkpoint)
    model = ck.build_model()
    dest = WEIGHTS_DIR / f"{name}.pt"
    keep = {k: ck.raw[k] for k in ("model", "labels", "normalization", "train_config", "metrics",
                                   "data", "epoch") if k in ck.raw}
    # the constructor defaults go in too, so the weight keeps loading if a factory's defaults change
    keep["model_kwargs"] = ck.resolved_model_kwargs()
    save_checkpoint(dest, {**keep, "state_dict": model.state_dict()})
    size = dest.stat().st_size
    if size > MAX_BYTES:
        dest.unlink()
        raise CheckpointError(f"{name}: {size} bytes is over the {MAX_BYTES}-byte limit")
    meta = WeightMeta(
        name=name, architecture=ck.model_name, file=dest.name, params=count_params(model), macs=count_macs(model),
        mean=ck.normalization.mean, std=ck.normalization.std,
        metrics={**ck.metrics, **(extra_metrics or {})}, recipe=recipe, hardware=hardware, train_time=train_time,
        labels=tuple(ck.labels), parity_gate=dict(parity_gate or {}), parity_gate_reason=parity_gate_reason,
    )
    _write_entry(meta)
    return meta


def json_option(value: str, option: str) -> dict:
    """A JSON object given on the command line, or a usage error naming the option."""
    try:
        out = json.loads(value)
    except ValueError as e:
        raise typer.BadParameter(f"not valid JSON: {e}", param_hint=option) from None
    if not isinstance(out, dict):
        raise typer.BadParameter(f"expected a JSON object, got {value!r}", param_hint=option)
    return out


def set_parity_gate(name: str, gate: dict, reason: str) -> WeightMeta:
    """Give shipped weight ``name`` its own parity gate (``{}`` restores the defaults), keeping the rest of its entry."""
    from fer_edge.errors import CheckpointError
    from fer_edge.weights import _load_table, check_parity_gate

    check_parity_gate(gate, reason)
    table = _load_table()
    if name not in table:
        raise CheckpointError(f"no shipped weight {name!r} (shipped: {', '.join(table) or 'none'})")
    meta = replace(table[name], parity_gate=dict(gate), parity_gate_reason=reason if gate else "")
    _write_entry(meta)
    return meta


def _write_entry(meta: WeightMeta) -> None:
    from fer_edge.utils import write_json_atomic

    table = WEIGHTS_DIR / "weights.json"
    entries = [e for e in (json.loads(table.read_text()) if table.is_file() else []) if e["name"] != meta.name]
    entries.append(asdict(meta))
    write_json_atomic(table, sorted(entries, key=lambda e: e["name"]))


@cli.command()
@handle_errors
def main(checkpoint: Path = typer.Argument(..., exists=True), name: str = typer.Option(...),
         recipe: str = typer.Option(...), hardware: str = typer.Option(...), train_time: str = typer.Option(...),
         metrics_json: str = typer.Option("{}", help="Extra measured metrics as JSON."),
         parity_gate: str = typer.Option(
             "{}", help='The weight\'s own export gate as JSON, e.g. \'{"int8": {"min_agreement": 0.97}}\'.'),
         parity_gate_reason: str = typer.Option("", help="Why, with the figures measured on this weight.")) -> None:
    meta = ship(checkpoint, name, recipe, hardware, train_time, json_option(metrics_json, "--metrics-json"),
                json_option(parity_gate, "--parity-gate"), parity_gate_reason)
    typer.echo(json.dumps(asdict(meta), indent=2))


if __name__ == "__main__":
    cli()

"""Give a shipped weight its own export parity gate, keeping the rest of its entry in ``weights.json``.

    python -m fer_edge.weights.gate nano --gate '{"int8": {"min_agreement": 0.97}}' \\
        --reason "its INT8 flips 2.6% of top-1 answers at 0.39 points of accuracy"

``fer-edge export`` applies the weight's gate over the defaults of ``fer_edge.parity`` (and says
so); ``--min-agreement`` etc. still override it. ``--gate '{}'`` restores the defaults (with no ``--reason``).
"""
from __future__ import annotations

import json
from dataclasses import asdict

import typer

from fer_edge.cli.common import handle_errors

cli = typer.Typer(add_completion=False)


@cli.command()
@handle_errors
def main(name: str = typer.Argument(..., help="Shipped weight name, e.g. nano."),
         gate: str = typer.Option(..., help='JSON {precision: {threshold: value}}, e.g. \'{"int8": {"min_agreement": 0.97}}\'.'),
         reason: str = typer.Option("", help="Why, with the figures measured on this weight (required with a gate).")) -> None:
    from fer_edge.utils import sigterm_as_interrupt
    from fer_edge.weights.ship import _entry, json_option, set_parity_gate

    before = _entry(name)
    try:
        with sigterm_as_interrupt():  # SIGTERM too: one line saying whether weights.json changed, exit 130
            meta = set_parity_gate(name, json_option(gate, "--gate"), reason)
            typer.echo(json.dumps({k: asdict(meta)[k] for k in ("name", "parity_gate", "parity_gate_reason")},
                                  indent=2))
    except KeyboardInterrupt:  # weights.json is written atomically: it holds the old gate or the new one
        now = _entry(name)
        typer.echo(f"interrupted: {name!r}'s parity gate was "
                   + ("changed" if now is not None and now != before else "not changed; weights.json is as it was"),
                   err=True)
        raise typer.Exit(130) from None


if __name__ == "__main__":
    import sys

    from fer_edge.console import run_script
    from fer_edge.utils import command_environment

    command_environment()  # as the fer-edge command: ONNX Runtime's telemetry off (a user's setting wins)
    sys.exit(run_script(cli))  # a closed stdout (`| head`): exit 141 quietly, as fer-edge (1: a failure's)

"""``fer-edge models``: the registered models with their size, cost and source."""
from __future__ import annotations

import json

import typer

from fer_edge.cli import app
from fer_edge.cli.common import console, handle_errors


@app.command("models")
@handle_errors
def models_command(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {name, params, macs, source}."),
) -> None:
    """List the registered models: parameters, MACs per 48x48 image, source."""
    from fer_edge.models import describe_models, format_count

    rows = describe_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return

    from rich.markup import escape
    from rich.table import Table

    table = Table(title="fer-edge models (input 1x48x48)")
    table.add_column("name", style="bold")
    table.add_column("params", justify="right")
    table.add_column("MACs/image", justify="right")
    table.add_column("source")
    for r in rows:
        table.add_row(escape(r["name"]), format_count(r["params"]), format_count(r["macs"]), escape(r["source"]))
    console.print(table)

"""``fer-edge soup``."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from fer_edge.cli import app
from fer_edge.cli.common import (console, err_console, existing_path_value, handle_errors, model_value, path_value,
                                  split_value)


class BatchNormMode(str, Enum):
    average = "average"
    recompute = "recompute"


@app.command()
@handle_errors
def soup(
    checkpoints: List[str] = typer.Argument(..., parser=model_value, metavar="CHECKPOINT",
                                            help="Checkpoints of one model fine-tuned from one starting point "
                                                 "(paths or shipped names)."),
    out: Path = typer.Option(..., parser=path_value, metavar="PATH",
                             help="The soup checkpoint to write: a new file ending in .pt or .pth."),
    data: Path = typer.Option(..., parser=existing_path_value, metavar="PATH", help="FER2013 CSV or image-folder root."),
    bn: BatchNormMode = typer.Option(BatchNormMode.average, help="BatchNorm statistics: average them with the weights, "
                                     "or recompute them on --split (un-augmented)."),
    split: Optional[str] = typer.Option(None, parser=split_value, metavar="SPLIT", help="Split to recompute BatchNorm statistics on; only "
                                 "with --bn recompute (default Training / train)."),
    val_split: Optional[str] = typer.Option(None, parser=split_value, metavar="SPLIT", help="Validation split (default PublicTest / val; never a test split by default)."),
    greedy: bool = typer.Option(False, "--greedy", help="Keep an ingredient only if validation accuracy does not drop."),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="Progress bars (on a terminal only): data loading, then each evaluation of "
                                  "an ingredient or candidate soup."),
) -> None:
    """Average fine-tuned checkpoints' weights (a model soup), average or re-measure BatchNorm statistics, evaluate."""
    from fer_edge.utils import sigterm_as_interrupt

    existed = out.exists()  # (make_soup refuses it)
    try:
        with sigterm_as_interrupt():
            _soup(checkpoints, out, data, bn, split, val_split, greedy, progress)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM
        ours = None if existed else _soup_at(out)
        what = (f"{ours} was written before it (whole: a soup is written completely or not at all)"
                if ours else f"nothing was written ({out})")
        typer.echo(f"interrupted: {what}", err=True)
        raise typer.Exit(130) from None


def _soup_at(out: Path) -> Path | None:
    """``out`` when it holds a soup checkpoint (the signal came after make_soup wrote it), None when it is
    missing or holds anything else (a file another process put there)."""
    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.errors import FerEdgeError

    if not out.is_file():
        return None
    try:
        raw = load_checkpoint(out).raw
    except FerEdgeError:
        return None
    return out if isinstance(raw, dict) and raw.get("soup") else None


def _soup(checkpoints, out, data, bn, split, val_split, greedy, progress) -> None:
    from rich.markup import escape
    from rich.table import Table

    from fer_edge.training.soup import make_soup

    r = make_soup(checkpoints, out, data, split=split, val_split=val_split, greedy=greedy, bn=bn.value,
                  progress=progress)
    # (paths and the split's name markup-escaped: a checkpoint path holding [/x] raised rich's MarkupError)
    t = Table("checkpoint", f"{escape(str(r.val_split))} accuracy", "in the soup")
    for path, acc in r.ingredient_accuracy.items():
        t.add_row(escape(str(path)), f"{acc:.4f}", "yes" if path in r.ingredients else "no")
    console.print(t)
    for note in r.notes:  # on stderr, as every command's notes
        err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    n = len(r.ingredients)
    console.print(f"soup of {n} checkpoint{'' if n == 1 else 's'}: {escape(str(r.val_split))} accuracy "
                  f"[bold]{r.accuracy:.4f}[/], macro-F1 {r.macro_f1:.4f} -> {escape(str(r.path))}")

"""``fer-edge eval``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from fer_edge.cli import app
from fer_edge.cli.common import Device, console, existing_path_value, handle_errors, model_value, path_value, split_value


@app.command("eval")
@handle_errors
def eval_cmd(
    checkpoint: Optional[List[str]] = typer.Option(
        None, "--checkpoint", "--model", parser=model_value, metavar="MODEL",
        help="Checkpoint path or shipped model name (default: the shipped model). Repeat it to evaluate the "
             "ensemble (mean softmax probabilities), e.g. a --distill teacher ensemble."),
    data: Path = typer.Option(..., parser=existing_path_value, metavar="PATH", help="FER2013 CSV or image-folder root."),
    split: Optional[str] = typer.Option(None, parser=split_value, metavar="SPLIT", help="Split (default PublicTest / val or test)."),
    tta: bool = typer.Option(False, "--tta", help="Average with the horizontally flipped image."),
    device: Device = typer.Option(Device.auto, help="Torch device (auto: cuda, else mps, else cpu)."),
    out: Optional[Path] = typer.Option(None, parser=path_value, metavar="PATH", help="Where to write confusion_<model>_<data>-<sha8>_<split>[_tta].png (<model>: the checkpoint file's stem and the start of its SHA-256, or ensemble<N>-<sha8>; <data>: the data file's name without .csv/.gz, or the image folder's name; <sha8>: the start of the split's fingerprint; default: the checkpoint's folder; ./fer-edge-eval for shipped weights and ensembles, or when that folder cannot be written or lies in an image-folder --data; never inside an image-folder --data)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Accuracy, macro-F1, per-class report and confusion matrix of a checkpoint on a labelled split."""
    from fer_edge.weights import WEIGHTS_DIR, resolve_checkpoint

    names = list(checkpoint or [None])
    if out is None:
        from fer_edge.utils import _unwritable, path_inside

        parent = resolve_checkpoint(names[0]).resolve().parent
        out = Path("fer-edge-eval") if parent == WEIGHTS_DIR or len(names) > 1 else parent
        if out == parent and (why := _unwritable(parent)):  # a checkpoint one may read but not write beside
            out = Path("fer-edge-eval")
            typer.echo(f"note: the checkpoint's folder {parent} cannot be written ({why}): the confusion matrix "
                       f"goes to {out}/ (--out chooses)", err=True)
        elif out == parent and data.is_dir() and path_inside(parent, data):  # the plot would join the data set
            out = Path("fer-edge-eval")
            typer.echo(f"note: the checkpoint's folder {parent} lies in the image-folder data set {data}, where the "
                       f"confusion matrix would be read as one of its images: it goes to {out}/ (--out chooses)",
                       err=True)

    from fer_edge.utils import sigterm_as_interrupt

    before = _plots(out)
    try:
        with sigterm_as_interrupt():
            _eval(names, data, split, tta, device.value, out, as_json)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: one line saying what was left, as the other commands do
        typer.echo(f"interrupted: {_written_since(out, before)}", err=True)
        raise typer.Exit(130) from None


def _plots(out: Path) -> dict[Path, tuple[int, int]]:
    """The confusion matrices in ``out`` now, each with what identifies its file (inode, mtime)."""
    found = {}
    try:
        for p in out.glob("confusion_*.png"):
            st = p.stat()
            found[p] = (st.st_ino, st.st_mtime_ns)
    except OSError:
        pass
    return found


def _written_since(out: Path, before: dict[Path, tuple[int, int]]) -> str:
    """What an interrupted eval left in ``out``: the confusion matrices that are new files since ``before``
    (:func:`_plots` when it started; a plot is written atomically, so it is whole or absent)."""
    new = sorted(p for p, ident in _plots(out).items() if before.get(p) != ident)
    if not new:
        return f"nothing was written (no new confusion matrix in {out}/)"
    return f"{', '.join(map(str, new))} was written before it"


def _eval(names, data, split, tta, device, out, as_json) -> None:
    from fer_edge.training import evaluate

    r = evaluate(names if len(names) > 1 else names[0], data, split, tta=tta, device=device, out_dir=out,
                 progress=not as_json)
    if as_json:
        typer.echo(json.dumps(r.to_dict()))
        return
    from rich.markup import escape
    from rich.table import Table

    # (the model, checkpoint path, split and class names markup-escaped: a path holding [/x] raised MarkupError)
    console.print(f"[bold]{escape(str(r.model))}[/] ({escape(str(r.checkpoint))}) on {escape(str(r.split))} "
                  f"(n={r.n}{', flip TTA' if r.tta else ''}): accuracy [bold]{r.accuracy:.4f}[/], "
                  f"macro-F1 {r.macro_f1:.4f}")
    t = Table("class", "precision", "recall", "F1", "support")
    for name, v in r.per_class.items():
        t.add_row(escape(name), f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
    console.print(t)
    # None: the plot could not be drawn, and the warning above says why (the metrics stand)
    console.print(f"confusion matrix: {r.confusion_png or 'not drawn (see the warning)'}", markup=False)
    for note in r.notes:
        typer.echo(f"note: {note}", err=True)

"""``fer-edge predict``: find faces in photos and classify their expressions."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from fer_edge.cli import app
from fer_edge.cli.common import console, err_console, handle_errors, is_tty
from fer_edge.faces import DEFAULT_MARGIN


def _annotation_dest(out_dir: Path, item, used: set[Path]) -> Path:
    rel = item.relative or Path(Path(item.source).name)
    dest = out_dir / rel
    src = item.path.resolve() if item.path is not None else None
    n = 1
    base = dest
    while dest.resolve() in used or (src is not None and dest.resolve() == src):
        n += 1
        dest = base.with_name(f"{base.stem}.annotated{'' if n == 2 else n - 1}{base.suffix}")
    used.add(dest.resolve())
    return dest


def _common_dir(sources: list[str]) -> str | None:
    """The directory all ``sources`` lie in (None for fewer than two, or when only the root is shared)."""
    if len(sources) < 2:
        return None
    try:
        common = os.path.commonpath([os.path.dirname(os.path.abspath(s)) for s in sources])
    except ValueError:  # paths on other drives
        return None
    return None if common == os.path.dirname(common) else common  # the filesystem root says nothing


def _row_cells(result, labels, name: str):
    from rich.markup import escape

    source = escape(name)
    if result.status == "error":
        return [[source, "", "", "[red]error[/]", *[""] * len(labels)]]
    if result.status == "no_face":
        return [[source, "", "", "[yellow]no face[/]", *[""] * len(labels)]]
    rows = []
    for i, f in enumerate(result.faces):
        box = "whole" if f.box is None else "{},{},{},{}".format(*f.box.to_list())
        probs = [f"[bold]{f.probabilities[lbl]:.2f}[/]" if lbl == f.label else f"{f.probabilities[lbl]:.2f}"
                 for lbl in labels]
        rows.append([source if i == 0 else "", str(i + 1), box, f"[bold]{f.label}[/]", *probs])
    return rows


@app.command("predict")
@handle_errors
def predict_cmd(
    inputs: List[Path] = typer.Argument(..., metavar="IMAGE_OR_DIR",
                                        help="Image files and/or directories (searched recursively)."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m",
        help="Checkpoint (.pt), shipped model name, or exported artifact (.onnx, .xml, .ts, .mlpackage). "
             "Default: the shipped model."),
    runtime: Optional[str] = typer.Option(
        None, "--runtime", "-r", help="Runtime to use (default: chosen from the model's file type)."),
    device: Optional[str] = typer.Option(None, help="Device for the runtime (default: its own default)."),
    detect_faces: bool = typer.Option(
        True, "--detect-faces/--no-detect-faces",
        help="Find faces with OpenCV's frontal-face Haar detector, or treat each whole image as one face."),
    margin: float = typer.Option(DEFAULT_MARGIN, min=0.0, max=1.0,
                                 help="Border added around each detected face, as a fraction of its size."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per image (JSON lines) on stdout."),
    annotate: Optional[Path] = typer.Option(
        None, "--annotate", metavar="OUT_DIR", file_okay=False,
        help="Write a copy of each image with boxes and labels drawn into this directory."),
) -> None:
    """Classify the facial expression of every face in images (JPEG, PNG, ...; any size; EXIF rotation honoured).

    Exit status: 0 when at least one input was read and classified (an image without a face is a result, not a failure); 1 when every input failed, or the model or face detector cannot be loaded; 2 for bad options.
    """
    from fer_edge.predict import collect_inputs, load, write_annotated

    items = collect_inputs(inputs)
    if annotate is not None:
        out_root = annotate.resolve()
        items = [it for it in items if it.path is None or out_root not in it.path.resolve().parents]

    predictor = load(model, runtime=runtime, device=device)
    if detect_faces:
        predictor.detector  # noqa: B018 - fail once, before any image, when no detector is available
    labels = list(predictor.labels)

    results = []
    used: set[Path] = set()
    counts = {"ok": 0, "no_face": 0, "error": 0}
    n_faces = 0

    progress = None
    if not as_json and is_tty() and len(items) > 20:
        from rich.progress import Progress

        progress = Progress(console=err_console, transient=True)
        progress.start()
        task = progress.add_task("predicting", total=len(items))
    try:
        for item in items:
            if item.error is not None:
                from fer_edge.predict import ImageResult

                r = ImageResult(item.source, error=item.error)
            else:
                r = predictor.predict_image(item.path, detect_faces=detect_faces, margin=margin,
                                            keep_image=annotate is not None)
            if r.status == "error":
                err_console.print(f"error: {r.error}", markup=False, highlight=False, soft_wrap=True)
            elif annotate is not None:
                note = "no face found" if r.status == "no_face" else None
                try:
                    write_annotated(r.image, r.faces, _annotation_dest(annotate, item, used), note=note)
                except OSError as e:
                    err_console.print(f"warning: {item.source}: cannot write annotated copy ({e})",
                                      markup=False, highlight=False, soft_wrap=True)
                r.image = None
            counts[r.status] += 1
            n_faces += len(r.faces)
            if as_json:
                typer.echo(json.dumps(r.to_dict()))
            else:
                results.append(r)
            if progress is not None:
                progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()

    if not as_json:
        from rich.markup import escape
        from rich.table import Table

        from rich import box

        short = console.width < 130
        title = f"{predictor.metadata.get('model') or predictor.path.name} ({predictor.runtime_name})"
        base = _common_dir([r.source for r in results])
        t = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False, title=title,
                  caption=None if base is None else f"images in {escape(base)}")
        names = [os.path.relpath(r.source, base) if base else r.source for r in results]
        t.add_column("image", overflow="fold", ratio=1, min_width=min(12 if short else 24, max(map(len, names), default=5)))
        t.add_column("face", justify="right")
        t.add_column("box x,y,w,h", overflow="fold", max_width=15 if short else None)
        t.add_column("label", no_wrap=True)
        for lbl in labels:
            t.add_column(lbl[:3] if short else lbl, justify="right", no_wrap=True)
        for r, name in zip(results, names):
            for row in _row_cells(r, labels, name):
                t.add_row(*row)
        console.print(t)
    summary = (f"{len(items)} input{'s' if len(items) != 1 else ''}: {n_faces} face{'s' if n_faces != 1 else ''}"
               f" classified, {counts['no_face']} without a face, {counts['error']} failed")
    if annotate is not None and counts["ok"] + counts["no_face"]:
        summary += f"; annotated copies in {annotate}"
    err_console.print(summary, markup=False, highlight=False, soft_wrap=True)
    if counts["ok"] + counts["no_face"] == 0:
        raise typer.Exit(1)

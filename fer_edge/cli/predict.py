"""``fer-edge predict``: find faces in photos and classify their expressions."""
from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from fer_edge.cli import app
from fer_edge.cli.common import (console, device_value, err_console, handle_errors, is_tty, model_value,
                                 path_value)
from fer_edge.faces import DEFAULT_MARGIN
from fer_edge.runtimes import RUNTIMES

#: ``--runtime`` choices, from the runtimes registry (an unknown name is a usage error listing these).
RuntimeName = Enum("RuntimeName", {n: n for n in RUNTIMES}, type=str)


def _check_margin(value: Optional[float]) -> Optional[float]:
    """--margin: None when not given; else a finite number in 0..1 (the library's check, as a bad option)."""
    from fer_edge.errors import DataError
    from fer_edge.predict import check_margin

    if value is None:
        return None
    try:
        return check_margin(value)
    except DataError as e:
        raise typer.BadParameter(str(e).removeprefix("margin ")) from None


def _check_min_face(value: Optional[int]) -> Optional[int]:
    """--min-face: None when not given; else a positive whole number of pixels (the library's check)."""
    from fer_edge.errors import DataError
    from fer_edge.faces import check_min_face

    if value is None:
        return None
    try:
        return check_min_face(value)
    except DataError:
        raise typer.BadParameter(f"must be a positive whole number of pixels (the smallest face to find), got "
                                 f"{value}") from None


@contextmanager
def _no_bomb_warnings():
    """Pillow's DecompressionBombWarning silenced: an image of 89 to 179 MP that is not a JPEG is read at full size
    and classified like any other (larger ones are refused as one input's error; a JPEG above 64 MP is decoded at
    reduced size without one), so the raw Python warning on stderr would say nothing the user can act on."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


#: an input no larger than this on either side, without a detected face, is probably a face crop already
CROP_SIZED = 96


def _note(text: str) -> None:
    err_console.print(text, markup=False, highlight=False, soft_wrap=True)


def _listing(items, most: int = 5) -> str:
    names = [it.source for it in items]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _duplicates(dropped, kept, most: int = 5) -> str:
    """The dropped duplicates, each with the name its file is listed under."""
    from fer_edge.predict import duplicate_of

    shown = []
    for d in dropped[:most]:
        k = duplicate_of(d, kept)
        if k is None or k.source == d.source:
            shown.append(f"{d.source} (named more than once)")
        else:
            shown.append(f"{d.source} (same file as {k.source}, listed under that name)")
    more = f" and {len(dropped) - most} more" if len(dropped) > most else ""
    return ", ".join(shown) + more


def _common_dir(sources: list[str]) -> str | None:
    """The directory all ``sources`` lie in (None for fewer than two, or when only the root is shared)."""
    if len(sources) < 2:
        return None
    try:
        common = os.path.commonpath([os.path.dirname(os.path.abspath(s)) for s in sources])
    except ValueError:  # paths on other drives
        return None
    return None if common == os.path.dirname(common) else common  # the filesystem root says nothing


def _row_cells(result, labels, name: str, narrow: bool = False):
    """The table's rows for one input: a probability per class, or (``narrow``) the label's alone."""
    from rich.markup import escape

    source = escape(name)
    if result.note:  # (a file of several frames: which one the row is)
        source += f" [dim]({escape(result.note.removesuffix(' classified'))})[/]"
    blank = [""] * (1 if narrow else len(labels))
    if result.status == "error":
        return [[source, "", "", "[red]error[/]", *blank]]
    if result.status == "no_face":
        return [[source, "", "", "[yellow]no face[/]", *blank]]
    rows = []
    for i, f in enumerate(result.faces):
        box = "whole" if f.box is None else "{},{},{},{}".format(*f.box.to_list())
        probs = [f"{f.probabilities[f.label]:.2f}"] if narrow else [
            f"[bold]{f.probabilities[lbl]:.2f}[/]" if lbl == f.label else f"{f.probabilities[lbl]:.2f}"
            for lbl in labels]
        rows.append([source if i == 0 else "", str(i + 1), box, f"[bold]{f.label}[/]", *probs])
    return rows


#: The width the predict table needs to show every column of a 7-class model (tested).
TABLE_MIN_WIDTH = 80


@app.command("predict")
@handle_errors
def predict_cmd(
    inputs: List[Path] = typer.Argument(..., metavar="IMAGE_OR_DIR", parser=path_value,
                                        help="Image files and/or directories (searched recursively)."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", parser=model_value, metavar="MODEL",
        help="Checkpoint (.pt), shipped model name, or exported artifact (.onnx, .xml, .ts, .mlpackage). "
             "Default: the shipped model."),
    runtime: Optional[RuntimeName] = typer.Option(
        None, "--runtime", "-r", help="Runtime to use (default: chosen from the model's file type)."),
    device: Optional[str] = typer.Option(None, parser=device_value, metavar="DEVICE",
                                         help="Device for the runtime (default: its own default)."),
    detect_faces: bool = typer.Option(
        True, "--detect-faces/--no-detect-faces",
        help="Find faces with OpenCV's frontal-face Haar detector, or treat each whole image as one face."),
    margin: Optional[float] = typer.Option(
        None, callback=_check_margin, show_default=False,
        help=f"Border added around each detected face, as a fraction of its size, 0..1 (default {DEFAULT_MARGIN}). "
             "Face detection only: refused with --no-detect-faces."),
    min_face: Optional[int] = typer.Option(
        None, "--min-face", metavar="PIXELS", callback=_check_min_face, show_default=False,
        help="Smallest face to find, in pixels of the image (default: 4% of its shorter side, at least 24 pixels of "
             "the detector's copy, shrunk to about 1.2 megapixels). Lower it for small faces in a large photo (a "
             "crowd); it costs more time. Face detection only."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per image (JSON lines) on stdout."),
    annotate: Optional[Path] = typer.Option(
        None, "--annotate", metavar="OUT_DIR", parser=path_value,
        help="Write a copy of each image with boxes and labels drawn into this directory."),
) -> None:
    """Classify the facial expression of every face in images (JPEG, PNG, ...; any size; EXIF rotation honoured).

    Exit status: 0 when at least one input was read and classified (an image without a face is a result, not a failure); 1 when every input failed, or the model or face detector cannot be loaded; 2 for bad options.
    """
    from fer_edge.errors import FerEdgeError
    from fer_edge.predict import (annotation_dest, collect_inputs, drop_duplicates, load,
                                  skipped_summary, split_annotated_copies, write_annotated)
    from fer_edge.utils import check_writable_dir

    if margin is not None and not detect_faces:
        raise typer.BadParameter("it sets the border around detected faces, and --no-detect-faces detects none: "
                                 "leave out one of the two", param_hint="'--margin'")
    if min_face is not None and not detect_faces:
        raise typer.BadParameter("it sets the smallest face to detect, and --no-detect-faces detects none: leave "
                                 "out one of the two", param_hint="'--min-face'")
    if annotate is not None:
        check_writable_dir(annotate, "--annotate", FerEdgeError)  # before any work

    skipped = []
    items, duplicates = drop_duplicates(collect_inputs(inputs, skipped=skipped))
    if skipped:
        n = len(skipped)
        _note(f"note: {n} file{'s' if n != 1 else ''} in the folders skipped, not classified: "
              f"{skipped_summary(skipped)}")
    if duplicates:
        n = len(duplicates)
        _note(f"note: {n} duplicate input{'s' if n != 1 else ''} dropped (the same file named more than once, "
              f"also found in a folder argument, or reached through a symbolic link; each is classified once): "
              f"{_duplicates(duplicates, items)}")
    if annotate is not None:
        with _no_bomb_warnings():
            items, copies = split_annotated_copies(items, annotate)
        if copies:
            n = len(copies)
            _note(f"note: skipped {n} earlier annotated cop{'ies' if n != 1 else 'y'} in {annotate} (written by "
                  f"fer-edge predict --annotate, not classified again): {_listing(copies)}")
        if not items:  # like a folder without images: an error, not an empty table and "0 failed"
            _note(f"error: nothing left to classify: every input is an earlier annotated copy in {annotate}; give "
                  "the original images")
            raise typer.Exit(1)

    predictor = load(model, runtime=runtime.value if runtime else None, device=device, runtime_option="--runtime")
    for text in predictor.warnings:
        _note(f"warning: {text}")
    if detect_faces:
        predictor.detector  # noqa: B018 - fail once, before any image, when no detector is available
    labels = list(predictor.labels)

    results = []
    taken = {it.path.resolve() for it in items if it.path is not None}  # a copy never replaces an input
    counts = {"ok": 0, "no_face": 0, "error": 0}
    written = unwritten = 0
    n_faces = 0
    small_without_face = 0  # inputs as small as FER2013's face crops in which the detector found no face

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
                with _no_bomb_warnings():
                    r = predictor.predict_image(item.path, detect_faces=detect_faces, margin=margin,
                                                keep_image=annotate is not None, min_face=min_face)
            if r.status == "error":
                err_console.print(f"error: {r.error}", markup=False, highlight=False, soft_wrap=True)
            elif annotate is not None:
                note = "no face found" if r.status == "no_face" else None
                try:
                    with _no_bomb_warnings():
                        write_annotated(r.image, r.faces, annotation_dest(annotate, item, taken), note=note)
                    written += 1
                except OSError as e:
                    unwritten += 1
                    _note(f"warning: {item.source}: cannot write annotated copy ({e})")
                r.image = None
            counts[r.status] += 1
            n_faces += len(r.faces)
            if r.status == "no_face" and r.width and r.height and max(r.width, r.height) <= CROP_SIZED:
                small_without_face += 1
            if as_json:
                typer.echo(json.dumps(r.to_dict()))
            else:
                results.append(r)
            if progress is not None:
                progress.advance(task)
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: what was classified is shown, not lost with the table
        from fer_edge.utils import mark_reported

        if progress is not None:
            progress.stop()
            progress = None
        if results:
            _print_table(results, labels, predictor)
        kept = ("their JSON lines are above" if as_json else "the table above holds them" if results
                else "nothing to show")
        copies = (f"; {written} annotated cop{'y' if written == 1 else 'ies'} written in {annotate}"
                  if annotate is not None and written else "")
        _note(f"interrupted: {sum(counts.values())} of {len(items)} input{'s' if len(items) != 1 else ''} done "
              f"({kept}){copies}")
        raise mark_reported(e) from None
    finally:
        if progress is not None:
            progress.stop()

    if not as_json:
        _print_table(results, labels, predictor)
    summary = (f"{len(items)} input{'s' if len(items) != 1 else ''}: {n_faces} face{'s' if n_faces != 1 else ''}"
               f" classified, {counts['no_face']} without a face, {counts['error']} failed")
    if annotate is not None and written + unwritten:
        summary += f"; {written} annotated cop{'y' if written == 1 else 'ies'} in {annotate}"
        if unwritten:
            summary += f", {unwritten} could not be written (see the warnings above)"
    _note(summary)
    if small_without_face:
        n, of = small_without_face, counts["no_face"]
        if n == 1:
            which, crop = ("the image without a face is" if of == 1 else f"1 of the {of} images without a face is",
                           "it is a face crop")
        else:
            which, crop = f"{n} of the {of} images without a face are", "they are face crops"
        _note(f"hint: {which} at most {CROP_SIZED}x{CROP_SIZED} pixels, the size of a face crop (FER2013's are "
              f"48x48), too little around the face for the detector: if {crop}, add --no-detect-faces to classify "
              "each whole image")
    if counts["ok"] + counts["no_face"] == 0:
        raise typer.Exit(1)


def _print_table(results, labels, predictor) -> None:
    """The results as one table on stdout (and a note when the console is too narrow for it)."""
    from rich.markup import escape
    from rich.table import Table

    from rich import box

    short = console.width < 130
    # narrower than the whole table: rich squeezed the image, face and box columns away first, so the rows no longer
    # said which image they were; the per-class probabilities make way instead (the label's own is kept)
    narrow = console.width < TABLE_MIN_WIDTH
    title = escape(f"{predictor.metadata.get('model') or predictor.path.name} ({predictor.runtime_name})")
    base = _common_dir([r.source for r in results])
    t = Table(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False, title=title,
              caption=None if base is None else f"images in {escape(base)}")
    names = [os.path.relpath(r.source, base) if base else r.source for r in results]
    least = 8 if narrow else 12 if short else 24
    t.add_column("image", overflow="fold", ratio=1, min_width=min(least, max(map(len, names), default=5)))
    t.add_column("face", justify="right")
    t.add_column("box x,y,w,h", overflow="fold", max_width=15 if short else None)
    t.add_column("label", no_wrap=True)
    for lbl in [] if narrow else labels:
        t.add_column(lbl[:3] if short else lbl, justify="right", no_wrap=True)
    if narrow:
        t.add_column("p", justify="right", no_wrap=True)
    for r, name in zip(results, names):
        for row in _row_cells(r, labels, name, narrow):
            t.add_row(*row)
    console.print(t)
    if narrow:
        _note(f"the table needs {TABLE_MIN_WIDTH} columns and only {console.width} are available (COLUMNS or "
              f"the terminal): it shows each face's label and its probability (p), not the {len(labels)} classes' "
              "probabilities; widen it, or use --json")

"""How much an app's own resize changes a model's answers, against fer-edge's preprocessing, side by side.

fer-edge (training, ``predict``, the parity gate) turns a face crop into its 48x48 input with PIL: luma
(``convert("L")``), then a bilinear resize whose filter widens with the downscaling factor
(:func:`fer_edge.preprocess.to_gray48`). An app often does it otherwise. This takes a stratified sample of a
split's faces, makes each a colour crop of another size (upscaled bicubically to a random 80-220 px, each channel
scaled by a random 0.8-1.2: a tinted photo crop), brings it back to 48x48 the fer-edge way and two others, and
counts the images whose top label differs from fer-edge's, with the largest probability differences:

* ``opencv-area``: ``cv2.cvtColor(BGR2GRAY)`` then ``cv2.resize(INTER_AREA)`` (the ONNX Runtime guide's C++ line);
* ``rgb-then-luma``: PIL's bilinear resize of the colour crop, then the luma (the Kotlin code's order);
* ``android-bilinear`` (emulated): Android's ``Bitmap.createScaledBitmap(face, 48, 48, true)``, which samples
  the source bilinearly (Skia's linear filter, no mipmaps: four source pixels per output pixel, however large
  the crop), emulated with ``cv2.resize(INTER_LINEAR)`` of the colour crop, then the luma;
* ``android-halving`` (emulated): the same call after halving the crop while it is at least 96 px
  (``createScaledBitmap(b, b.width / 2, b.height / 2, true)``, an exact 2x2 average), the guide's Kotlin code.

The Android rows are emulations on this machine (no Android device runs here): Skia's rounding of the
sample positions may differ from OpenCV's by a fraction of a pixel.

    python -m fer_edge.benchmarks.resize_parity nano --data ../shared/data/fer2013/images --n-images 210
"""
from __future__ import annotations

import sys

import numpy as np
import typer

from fer_edge.cli.common import existing_path_value, model_value, split_value

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


def crops(images: np.ndarray, seed: int) -> list[np.ndarray]:
    """Each 48x48 gray face as an RGB crop of a random 80-220 px, channels tinted by 0.8-1.2 (seeded)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for gray in images:
        size = int(rng.integers(80, 220))
        big = np.asarray(Image.fromarray(gray).resize((size, size), Image.BICUBIC), dtype=np.float64)
        out.append(np.clip(big[..., None] * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8))
    return out


def resized(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """One RGB crop brought to 48x48 gray five ways: fer-edge's, OpenCV's area filter, resize-then-luma and the two
    Android emulations."""
    import cv2
    from PIL import Image

    from fer_edge.constants import IMAGE_SIZE
    from fer_edge.preprocess import to_gray48

    def luma(small: np.ndarray) -> np.ndarray:  # the Kotlin code's: 0.299 R + 0.587 G + 0.114 B in PIL's integers
        small = small.astype(np.int64)
        return ((small[..., 0] * 19595 + small[..., 1] * 38470 + small[..., 2] * 7471 + 0x8000) >> 16
                ).astype(np.uint8)

    halved = rgb
    while halved.shape[0] >= 2 * IMAGE_SIZE and halved.shape[1] >= 2 * IMAGE_SIZE:
        halved = cv2.resize(halved, (halved.shape[1] // 2, halved.shape[0] // 2), interpolation=cv2.INTER_LINEAR)
    return {
        "fer-edge": to_gray48(Image.fromarray(rgb)),
        "opencv-area": cv2.resize(cv2.cvtColor(np.ascontiguousarray(rgb[..., ::-1]), cv2.COLOR_BGR2GRAY),
                                  (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA),
        "rgb-then-luma": luma(np.asarray(Image.fromarray(rgb).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))),
        "android-bilinear": luma(cv2.resize(rgb, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)),
        "android-halving": luma(cv2.resize(halved, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)),
    }


@cli.command()
def main(
    model: str = typer.Argument("nano", parser=model_value, help="Checkpoint or shipped model name."),
    data: str = typer.Option(..., parser=existing_path_value, metavar="PATH", help="FER2013 CSV or image folder."),
    split: str | None = typer.Option(None, parser=split_value, help="Split of --data (default PublicTest / val)."),
    n_images: int = typer.Option(210, min=1, help="Stratified sample of the split."),
    seed: int = typer.Option(0, help="Seed of the sample, the crop sizes and the tints."),
) -> None:
    """Top-label changes and probability differences of other resizes against fer-edge's, side by side."""
    from fer_edge.errors import FerEdgeError, OptionError
    from fer_edge.utils import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # Ctrl-C or SIGTERM at any stage: one line, exit 130
            try:
                _main(model, data, split, n_images, seed)
            except FerEdgeError as e:  # an OptionError (a value wrong on its own) is a usage error: exit 2
                from rich.markup import escape

                from fer_edge.console import WideConsole as Console

                # (escaped: the message names paths, and a path holding [/x] raised rich's MarkupError)
                Console(stderr=True).print(f"[red]error:[/] {escape(str(e))}", highlight=False)
                raise typer.Exit(2 if isinstance(e, OptionError) else 1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing was measured; no table was printed", err=True)
        raise typer.Exit(130) from None


def _main(model: str, data: str, split: str | None, n_images: int, seed: int) -> None:
    import torch
    from fer_edge.console import WideConsole as Console  # wide off a terminal
    from rich.markup import escape
    from rich.table import Table

    from fer_edge.benchmarks.bench import load_inputs
    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.preprocess import normalize
    from fer_edge.weights import resolve_checkpoint

    ck = load_checkpoint(resolve_checkpoint(model))
    inputs = load_inputs(data, split, n_images, seed=seed)
    if n_images > inputs.split_size:  # as fer-edge bench says it
        typer.echo(f"note: --n-images {n_images} is more than the {inputs.split_size} images of the {inputs.split} "
                   "split: all of them were used", err=True)
    net = ck.build_model().eval()
    probs = {}
    ways = [resized(c) for c in crops(inputs.images, seed)]
    with torch.no_grad():
        for name in ways[0]:
            x = torch.from_numpy(normalize(np.stack([w[name] for w in ways]), ck.normalization))
            probs[name] = torch.softmax(net(x), 1).numpy()
    ref = probs["fer-edge"]
    t = Table(title=escape(f"{ck.model_name} on {len(ref)} {inputs.split} faces as tinted 80-220 px colour crops: "
                           "other resizes against fer-edge's"))
    for col in ("resize", "accuracy", "other top label", "max |prob diff| median", "max |prob diff| max"):
        t.add_column(col, justify="left" if col == "resize" else "right")
    for name, p in probs.items():
        accuracy = f"{(p.argmax(1) == inputs.labels).mean():.1%}"
        if name == "fer-edge":
            t.add_row(name, accuracy, "(reference)", "", "")
            continue
        flips = int((p.argmax(1) != ref.argmax(1)).sum())
        diff = np.abs(p - ref).max(1)
        t.add_row(name, accuracy, f"{flips} ({flips / len(ref):.1%})", f"{np.median(diff):.3f}", f"{diff.max():.3f}")
    Console().print(t)
    typer.echo("accuracy: top-1 against the split's labels on these crops (a stratified sample: compare rows, "
               "not with the model's accuracy on the whole split); the android rows are emulations "
               "(OpenCV's bilinear sampling in place of Skia's)")


if __name__ == "__main__":
    from fer_edge.console import run_script
    from fer_edge.utils import command_environment

    command_environment()  # as the fer-edge command: ONNX Runtime's telemetry off (a user's setting wins)
    sys.exit(run_script(cli))  # a closed stdout (`| head`, also of --help): exit 141 quietly, as fer-edge

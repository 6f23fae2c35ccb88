"""``fer-edge eval``: accuracy, macro-F1, per-class report and confusion matrix of a checkpoint.

Given several checkpoints, it evaluates their ensemble: the mean of the members' softmax probabilities,
each member with its own normalisation (and, with ``tta``, its logits averaged over the image and its
mirror first). That is how to see what a ``fer-edge train --distill A --distill B`` teacher scores.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


@dataclass
class EvalResult:
    checkpoint: str
    model: str
    split: str
    data: str
    tta: bool
    accuracy: float
    macro_f1: float
    n: int
    per_class: dict
    confusion: list
    confusion_png: str | None = None
    members: list[str] | None = None  # the checkpoints of an ensemble (None: one checkpoint)
    notes: list[str] = field(default_factory=list)  # what the figures mean less than they seem to (trained on it)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def data_stem(data: str | Path) -> str:
    """A short name for a data source: the file's name without ``.csv``/``.gz`` (``fer2013.csv.gz`` -> ``fer2013``),
    or the image folder's name; characters other than letters (any script), digits, ``.``, ``_`` and ``-`` become
    ``_``."""
    import re

    p = Path(data)
    name = p.name or p.resolve().name  # "." and "dir/" have no name of their own
    for suffix in (".gz", ".csv"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return re.sub(r"[^\w.-]", "_", name) or "data"


def model_tag(paths: Sequence[str | Path], sha256s: Sequence[str]) -> str:
    """A short name for what is evaluated: ``<stem>-<sha8>`` of a checkpoint file (``small-1a2b3c4d``,
    ``best-9f8e7d6c``), or ``ensemble<N>-<sha8>`` over the members' SHA-256s (in any order: the same ensemble);
    characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``."""
    import hashlib
    import re

    if len(paths) == 1:
        stem = re.sub(r"[^\w.-]", "_", Path(paths[0]).stem) or "model"
        return f"{stem}-{sha256s[0][:8]}"
    joined = hashlib.sha256("+".join(sorted(sha256s)).encode()).hexdigest()  # the mean is the same in any order
    return f"ensemble{len(paths)}-{joined[:8]}"


def confusion_png_name(data: str | Path, split: str, tta: bool, sha256: str = "", first: int | None = None,
                       model: str = "") -> str:
    """``confusion_[<model>_]<data>-<sha8>_<split>[_first<N>][_tta].png``: evaluations of another model (``<model>``,
    :func:`model_tag`), of other data, of part of a split or with TTA do not overwrite it. ``<sha8>``, the start of
    the split's fingerprint (its images and labels), tells apart data sets whose names read the same here
    (``my data`` and ``my_data``, or two ``images`` folders)."""
    import re

    tag = f"-{sha256[:8]}" if sha256 else ""
    split_name = re.sub(r"[^\w.-]", "_", split) or "split"
    part = f"_first{first}" if first else ""
    who = f"{model}_" if model else ""
    return f"confusion_{who}{data_stem(data)}{tag}_{split_name}{part}{'_tta' if tta else ''}.png"


#: What an eval's ``--out`` inside its image-folder ``--data`` would do (:func:`fer_edge.utils.check_not_in_data`).
EVAL_IN_DATA = ("its confusion matrix (a .png) would become part of that data set: in a class folder every later "
                "command on it (this eval again among them) would read it as a face of that class")


def evaluate(checkpoint: str | Path | None | Sequence[str | Path], data: str | Path, split: str | None = None,
             tta: bool = False, device: str = "auto", out_dir: str | Path | None = None, limit: int | None = None,
             progress: bool = True, on_warning: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate a checkpoint (a path or shipped name; None: the shipped default) on a labelled split.

    A list of two or more checkpoints is evaluated as an ensemble (see the module docstring); their labels
    must agree, and be FER2013's classes in FER2013's order (checked before any image is loaded or predicted).
    ``split`` None: the data's validation split, or, for image folders without one, their test split (``test``,
    else ``PrivateTest``: evaluating selects nothing, unlike train and soup, which refuse that default).

    With ``out_dir`` the confusion matrix is drawn there; a plot that cannot be drawn (matplotlib missing or
    broken, a full disk) is a warning (``on_warning``; default: ``warning: ...`` on stderr) and ``confusion_png``
    None: the metrics are kept. A folder where the plot goes is refused before anything is evaluated, as is an
    ``out_dir`` inside an image-folder ``data`` (the plot would be read as one of its images).
    """
    import torch

    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.data import default_val_split, load_split
    from fer_edge.errors import CheckpointError, FerEdgeError
    from fer_edge.metrics import check_label_order, classification_metrics
    from fer_edge.plotting import draw_or_warn
    from fer_edge.training import plots
    from fer_edge.training.trainer import predict_logits, resolve_device
    from fer_edge.utils import check_not_in_data, check_writable_dir
    from fer_edge.weights import resolve_checkpoint

    if out_dir is not None:
        check_writable_dir(out_dir, "--out", FerEdgeError)
        check_not_in_data(out_dir, [("given as --data", data)], FerEdgeError, EVAL_IN_DATA)
    names = [checkpoint] if checkpoint is None or isinstance(checkpoint, (str, Path)) else list(checkpoint)
    if not names:
        raise CheckpointError("no checkpoint to evaluate")
    paths = [resolve_checkpoint(c) for c in names]
    cks = [load_checkpoint(p) for p in paths]
    sha256s = [ck.sha256 for ck in cks]  # of the bytes loaded: a run replacing best.pt meanwhile cannot mislabel
    # members compared by what they compute, as soup does: their weights (a run's best.pt and last.pt, whose resume
    # entry makes other bytes, hold the same model when its best epoch is the last), model, labels and normalisation
    from fer_edge.training.soup import weights_digest

    models = ([repr((weights_digest(ck.state_dict), ck.model_name, ck.model_kwargs, list(ck.labels),
                     ck.normalization.to_dict())) for ck in cks] if len(cks) > 1 else sha256s)
    seen: dict[str, Path] = {}
    for path, digest in zip(paths, models):
        if digest in seen:
            same = "is given twice" if Path(seen[digest]).resolve() == Path(path).resolve() else \
                f"holds the same weights as {seen[digest]} (every tensor, the model, labels and normalisation equal)"
            raise CheckpointError(f"cannot ensemble {path}: it {same}; an ensemble of a model with itself only "
                                  "weights that model twice")
        seen[digest] = path
    for path, ck in zip(paths[1:], cks[1:]):
        if list(ck.labels) != list(cks[0].labels):
            raise CheckpointError(f"cannot ensemble {path} (labels {list(ck.labels)}) with {paths[0]} "
                                  f"(labels {list(cks[0].labels)}): the labels differ")
    # refused now, not after predicting the whole split (classification_metrics checks it again)
    check_label_order(cks[0].labels)
    # eval selects nothing: a folder without a validation split but with a test split (train/ + test/) is evaluated
    # on that test split, the figure a test split is kept for (train and soup refuse to select on it by default)
    split = default_val_split(data, options="fer-edge eval --split", test_ok=True) if split is None else split
    ds = load_split(data, split, progress=progress)
    images, labels = ds.images, ds.labels
    first = None
    if limit and limit < len(labels):
        images, labels, first = images[:limit], labels[:limit], int(limit)
    png_path = None
    if out_dir is not None:
        png_path = Path(out_dir) / confusion_png_name(data, ds.split, tta, (ds.fingerprint or {}).get("sha256", ""),
                                                      first, model=model_tag(paths, sha256s))
        if png_path.is_dir():  # refused now, not after the whole evaluation (it would only be a warning then)
            raise FerEdgeError(f"{png_path} is a folder: the confusion matrix cannot be written there (remove the "
                               "folder, or choose another --out)")
    dev = resolve_device(device)
    member_logits = [predict_logits(ck.build_model().to(dev), images, ck.normalization, dev, tta=tta) for ck in cks]
    for path, z in zip(paths, member_logits):
        bad = int((~torch.isfinite(z).all(1)).sum())
        if bad:
            raise CheckpointError(f"{path}: its outputs are not finite numbers (NaN or inf) on {bad} of {len(z)} "
                                  "images, so no accuracy can be measured: its weights are damaged (e.g. NaN "
                                  "weights, a negative BatchNorm variance)")
    if len(cks) == 1:
        logits, model_name = member_logits[0], cks[0].model_name
    else:
        logits = (sum(torch.softmax(z, 1) for z in member_logits) / len(cks)).log()
        model_name = "ensemble of " + ", ".join(ck.model_name for ck in cks)
    ck = cks[0]
    m = classification_metrics(labels.numpy(), logits.argmax(1).numpy(), ck.labels)
    png = None
    if png_path is not None:  # a plot that cannot be drawn is a warning: the metrics are what was asked for
        title = f"{model_name} on {ds.split}{' (flip TTA)' if tta else ''}: accuracy {m['accuracy']:.4f}"
        drawn = draw_or_warn(lambda: plots.plot_confusion(np.asarray(m["confusion"]), ck.labels, png_path,
                                                          title=title),
                             png_path, on_warning)
        png = None if drawn is None else str(drawn)
    members = [str(p) for p in paths] if len(paths) > 1 else None
    # a split a checkpoint trained on measures how well it learned those images, not how it does on unseen faces
    # (train and soup say the same of their validation split)
    from fer_edge.training.trainer import data_fingerprint, same_images

    now = data_fingerprint(ds)
    trained = [str(p) for p, c in zip(paths, cks) if (c.data or {}).get("train") and same_images(c.data["train"], now)]
    notes = [f"{ds.split} is training data ({', '.join(trained)} trained on it): the accuracy is measured on images "
             "the model learned, not on unseen faces"] if trained else []
    return EvalResult(" + ".join(str(p) for p in paths), model_name, ds.split, str(data), tta, m["accuracy"],
                      m["macro_f1"], m["n"], m["per_class"], m["confusion"], png, members, notes)

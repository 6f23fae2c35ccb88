"""``fer-edge soup``: average the weights of fine-tuned checkpoints ("model soups", Wortsman et al., 2022).

Checkpoints fine-tuned from one starting point usually lie in one loss basin, so their weight average
can predict like an ensemble at the cost of one model. BatchNorm statistics are averaged with the
weights (``bn="average"``) or measured again on the un-augmented training split (``bn="recompute"``,
``torch.optim.swa_utils.update_bn``). Measured on the shipped small model (fine-tuned with the
``strong`` augmentation): re-measuring cost 0.9 points on PublicTest for a single checkpoint (69.69% ->
68.79%; measured as ``fer-edge soup runs/small_ft/best.pt runs/small_ft/best.pt --bn recompute``, a "soup" of
one checkpoint given twice, which the command has since refused), because the later layers were trained on
statistics of augmented images, so ``average`` is the default. The soup is evaluated on the validation split
(PublicTest for the CSV) and written as an
ordinary checkpoint that records its ingredients (as absolute paths) and its data as the trainer does: ``data.val``
the fingerprint of the split it was scored on, ``data.train`` that of the split BatchNorm statistics were measured
again on (``--bn recompute`` on a model with BatchNorm), else the ingredients' own record when they all agree (a
note says when they do not and none is recorded), so ``fer-edge export`` finds the validation data and can tell
when its parity gate runs on training images. A checkpoint given twice, or two files with identical weights (a
run's ``best.pt`` and ``last.pt`` when its best epoch is the last), is refused: it would only weight one model twice.

``greedy`` follows the paper's greedy soup: ingredients sorted by their own validation accuracy are
added one at a time and kept only when the soup's validation accuracy does not drop. This selects on
the validation split, as picking the best epoch does; never pass a test split you report on.

Every model is scored on its logits, and logits that are not finite (NaN or inf: NaN weights, a negative
BatchNorm ``running_var``) are never scored as predictions (``argmax`` of NaN is class 0, which looked like "every
image is angry"). An ingredient with non-finite outputs is an error naming its file (all such files at once), before
any soup is built. A soup whose outputs are not finite is never written: the uniform soup is then an error; in a
greedy soup the candidate that made them so is left out like one that lowered accuracy (recorded in ``tried`` with
``accuracy_with`` None and ``finite`` False, and named in a note), and the greedy search goes on with the next.
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fer_edge.checkpoint import Checkpoint, load_checkpoint, non_finite_tensors, save_checkpoint
from fer_edge.errors import OptionError, TrainingError


class SoupOptionError(OptionError, TrainingError):
    """A soup option wrong on its own (one checkpoint, --out not a .pt, --split without --bn recompute): a
    :class:`TrainingError` of the soup that the CLI reports as a usage error (exit 2)."""


BN_MODES = ("average", "recompute")
#: what ``--out`` may end in: other commands open a checkpoint by these suffixes only
OUT_SUFFIXES = (".pt", ".pth")


@dataclass
class SoupResult:
    path: Path
    ingredients: list[str]
    val_split: str
    accuracy: float
    macro_f1: float
    ingredient_accuracy: dict[str, float] = field(default_factory=dict)
    tried: list[dict] = field(default_factory=list)  # greedy: each candidate and the accuracy with it
    bn_statistics: str | dict = "averaged"  # as recorded in the soup's "data"
    notes: list[str] = field(default_factory=list)  # what the user should know (e.g. nothing was recomputed)


def check_compatible(cks: list[Checkpoint]) -> dict:
    """Every checkpoint must hold the same model, kwargs, labels and normalisation; fail once listing all.

    Every difference of every checkpoint is listed: the model, labels and normalisation against the first
    checkpoint's, the model kwargs against those of the first checkpoint of the same model (kwargs of two
    different models are not comparable), the weight names when model and kwargs match.
    Checkpoints whose weights are identical (every tensor, by :func:`weights_digest`) are listed too, each
    with the earlier one it repeats.
    Returns the model kwargs they share, defaults filled in.
    """
    if len(cks) < 2:
        raise SoupOptionError("a soup needs at least two checkpoints")
    first, problems = cks[0], []
    # compared with defaults filled in: older checkpoints recorded only the kwargs passed on the command line
    kwargs = [ck.resolved_model_kwargs() for ck in cks]
    ref: dict[str, int] = {}  # model name -> index of its first checkpoint
    for i, ck in enumerate(cks):
        r = ref.setdefault(ck.model_name, i)
        if i == 0:
            continue
        own = []
        if ck.model_name != first.model_name:
            own.append(f"model {ck.model_name!r} differs from {first.path}'s {first.model_name!r}")
        if r != i and kwargs[i] != kwargs[r]:
            own.append(f"model_kwargs {kwargs[i]!r} differ from {cks[r].path}'s {kwargs[r]!r}")
        if ck.labels != first.labels:
            own.append(f"labels {ck.labels!r} differ from {first.path}'s {first.labels!r}")
        if ck.normalization != first.normalization:
            own.append(f"normalization {ck.normalization!r} differs from {first.path}'s {first.normalization!r}")
        if r != i and kwargs[i] == kwargs[r] and set(ck.state_dict) != set(cks[r].state_dict):
            own.append(f"its weights have other names than {cks[r].path}'s")
        problems += [f"{ck.path}: {p}" for p in own]
    digests: dict[str, Checkpoint] = {}
    for ck in cks:  # the same weights under two names (best.pt and last.pt of a run whose best epoch is the last)
        earlier = digests.setdefault(weights_digest(ck.state_dict), ck)
        if earlier is not ck:
            problems.append(f"{ck.path}: its weights are identical to {earlier.path}'s (a soup of the two would "
                            f"only weight that model twice): give each ingredient once")
    if problems:
        raise TrainingError("checkpoints cannot be averaged:\n  " + "\n  ".join(problems))
    return kwargs[0]


def weights_digest(state: dict) -> str:
    """SHA-256 of a state dict: every entry's name, dtype, shape and bytes, so equal digests are equal weights."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(f"{k}\0{v.dtype}\0{tuple(v.shape)}\0".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(f"{k}\0{v!r}\0".encode())
    return h.hexdigest()


def average_state_dicts(states: list[dict]) -> dict:
    """Mean of the floating-point tensors; integer buffers (BatchNorm's batch counters) from the first."""
    out = {}
    for k, v in states[0].items():
        if torch.is_floating_point(v):
            out[k] = torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


#: What a soup's ``--out`` inside its image-folder ``--data`` would do (:func:`fer_edge.utils.check_not_in_data`).
SOUP_IN_DATA = ("the soup checkpoint would become part of that data set: in a class folder every later command on "
                "it (this soup again among them) would warn of a file that is not an image, and a folder made for "
                "it would be read as a split or class")


def check_out(out: str | Path) -> Path:
    """Refuse, before any work, an ``--out`` that is a folder, lacks a checkpoint suffix, or exists."""
    from fer_edge.utils import check_writable_dir

    out = Path(out)
    if str(out) in ("", ".") or out.is_dir():
        raise TrainingError(f"--out {str(out)!r} is a folder, not a file: give the soup checkpoint's file path "
                            f"(e.g. {out / 'soup.pt'})")
    if out.suffix not in OUT_SUFFIXES:
        got = f"ends in {out.suffix!r}" if out.suffix else "has no suffix"
        raise SoupOptionError(f"--out {out} {got}: the soup is a PyTorch checkpoint, so its name must end in "
                              f"{' or '.join(OUT_SUFFIXES)} (e.g. {out.with_suffix('.pt')}); other commands open "
                              f"checkpoints by that suffix")
    check_writable_dir(out.parent, "--out's folder", TrainingError)
    if out.exists():
        raise TrainingError(f"{out} exists; choose another --out (a soup never overwrites a file)")
    return out


def _check_split_value(option: str, value: str | None) -> None:
    """None (the option not given) means the default split; an empty value (an unset variable) is refused."""
    if value is not None and not value.strip():
        raise SoupOptionError(f"{option} is empty: name a split, or leave {option} out for the default")


def _weight_problems(state: dict) -> str:
    """Where a state dict is broken (non-finite tensors, a negative BatchNorm running_var), for a message."""
    bad = non_finite_tensors(state)
    neg = [k for k, v in state.items() if k.endswith("running_var") and torch.is_floating_point(v)
           and bool((v < 0).any())]
    parts = []
    for what, names in (("non-finite weights in", bad), ("a negative BatchNorm running_var in", neg)):
        if names:
            parts.append(f"{what} {', '.join(names[:3])}" + (f" and {len(names) - 3} more" if len(names) > 3 else ""))
    return "; ".join(parts)


def _bn_batches(images_u8: torch.Tensor, norm, batch_size: int = 256, on_batch=None):
    for i in range(0, len(images_u8), batch_size):
        x = images_u8[i : i + batch_size].float().unsqueeze(1)
        yield (x / 255.0 - norm.mean) / norm.std
        if on_batch is not None:
            on_batch(len(x))


def _progress_console():
    """Where the progress display goes: stderr, as the data loading bars."""
    from fer_edge.console import WideConsole

    return WideConsole(stderr=True)  # (a COLUMNS of 0, as some containers set, counts as unset: rich drew nothing)


@contextlib.contextmanager
def _eval_progress(enabled: bool, total: int):
    """A transient rich bar over the soup's model evaluations, on a terminal only.

    Yields ``start(label, images)``, which shows evaluation ``k/total`` and its label and returns
    ``advance(n)`` for the images processed; without a terminal both do nothing."""
    console = _progress_console() if enabled else None
    if console is None or not console.is_terminal:
        yield lambda label, images: (lambda n: None)
        return
    from rich.markup import escape
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    done = [0]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("soup", total=None)

        def start(label: str, images: int):
            done[0] += 1
            bar.reset(task, total=images, completed=0,
                      description=f"[bold]soup[/] evaluation {done[0]}/{total}: {escape(label)}")
            return lambda n: bar.advance(task, n)

        yield start


def _agreed_record(cks: list[Checkpoint], key: str) -> tuple[dict | None, str]:
    """The ingredients' ``data[key]`` when every one records the same images (split, count, SHA-256 as
    ``--resume`` compares them), else None and why not."""
    from fer_edge.training.trainer import same_images

    recs = [ck.data.get(key) if isinstance(ck.data, dict) else None for ck in cks]
    missing = [str(ck.path) for ck, r in zip(cks, recs) if not isinstance(r, dict) or not r.get("sha256")]
    if missing:
        return None, f"{', '.join(missing)} record{'s' if len(missing) == 1 else ''} no {key} data fingerprint"
    differ = [f"{ck.path} ({r.get('split')} of {r.get('source')}, sha256 {str(r.get('sha256'))[:12]})"
              for ck, r in zip(cks[1:], recs[1:]) if not same_images(recs[0], r)]
    if differ:
        r0 = recs[0]
        return None, (f"the ingredients were trained on different data: {cks[0].path} on {r0.get('split')} of "
                      f"{r0.get('source')} (sha256 {str(r0.get('sha256'))[:12]}), " + ", ".join(differ))
    return dict(recs[0]), ""


def make_soup(checkpoints: list[str | Path], out: str | Path, data: str | Path, split: str | None = None,
              val_split: str | None = None, greedy: bool = False, bn: str = "average",
              progress: bool = True) -> SoupResult:
    """Average ``checkpoints`` (uniformly, or greedily on the validation split) into the checkpoint ``out``.

    ``out`` must be a new file ending in ``.pt`` or ``.pth``. ``split`` / ``val_split`` None mean the default
    splits; an empty string is refused. Outputs that are not finite are handled as the module docstring says:
    an ingredient's is an error naming it, a soup's is never written (greedy leaves that candidate out).
    """
    from torch.optim.swa_utils import update_bn

    from fer_edge.data import default_train_split, default_val_split, load_split
    from fer_edge.metrics import classification_metrics
    from fer_edge.training.trainer import data_fingerprint, predict_logits, same_images
    from fer_edge.utils import check_not_in_data
    from fer_edge.weights import resolve_checkpoint

    if bn not in BN_MODES:
        raise SoupOptionError(f"--bn {bn!r}: valid: {', '.join(BN_MODES)}")
    _check_split_value("--split", split)
    _check_split_value("--val-split", val_split)
    if split is not None and bn != "recompute":
        raise SoupOptionError(f"--split {split}: it names the split BatchNorm statistics are recomputed on, so it "
                              f"needs --bn recompute (the soup is evaluated on --val-split)")
    out = check_out(out)
    check_not_in_data(out, [("given as --data", data)], TrainingError, SOUP_IN_DATA)
    paths = [resolve_checkpoint(c) for c in checkpoints]
    seen: dict[Path, str] = {}
    for spec, path in zip(checkpoints, paths):
        if path.resolve() in seen:
            raise TrainingError(f"{spec} is the same file as {seen[path.resolve()]}: give each ingredient once")
        seen[path.resolve()] = str(spec)
    cks = [load_checkpoint(p) for p in paths]
    model_kwargs = check_compatible(cks)
    first = cks[0]
    has_bn = any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in first.build_model().modules())
    notes: list[str] = []
    if bn == "recompute" and not has_bn:
        notes.append(f"{first.model_name} has no BatchNorm layers: --bn recompute recomputed nothing"
                     + (f" (--split {split} was not used)" if split is not None else ""))
    # loaded (so --split is checked) even without BatchNorm; used only with it
    train = (load_split(data, split if split is not None else default_train_split(data), progress=progress)
             if bn == "recompute" else None)
    # never a test split by default (train/ + test/ folders are refused): the soup is scored, and chosen, on it
    val = load_split(data, val_split if val_split is not None else
                     default_val_split(data, options="fer-edge soup --val-split"), progress=progress)
    val_fp = data_fingerprint(val)
    trained_on_val = [str(ck.path) for ck in cks
                      if isinstance(ck.data, dict) and isinstance(ck.data.get("train"), dict)
                      and ck.data["train"].get("sha256") and same_images(ck.data["train"], val_fp)]
    remeasure = train is not None and has_bn
    # --bn recompute on the validation images: the soup's statistics come from the images it is scored on
    stats_on_val = remeasure and same_images(data_fingerprint(train), val_fp)
    if trained_on_val or stats_on_val or (val_split is not None and val.split == default_train_split(data)):
        why = ([f"{', '.join(trained_on_val)} trained on it"] if trained_on_val else []) + (
            ["--bn recompute measured the BatchNorm statistics on it"] if stats_on_val else [])
        who = f" ({'; '.join(why)})" if why else ""
        learned = ("its BatchNorm statistics were measured on" if stats_on_val and len(why) == 1 and
                   val.split != default_train_split(data) else "the ingredients trained on")
        notes.append(f"the validation split {val.split} is training data{who}: the soup is scored"
                     + (" and --greedy chooses" if greedy else "") + f" on images {learned}, so "
                     "its accuracy says little about new faces")
    device = torch.device("cpu")
    # every evaluation: each ingredient, then the uniform soup or each greedy candidate
    n_evals = len(cks) + (len(cks) - 1 if greedy else 1)
    images_per_eval = len(val.labels) + (len(train.labels) if remeasure else 0)
    start = advance = None  # the progress display's start(label, images), the running evaluation's advance(n)

    def build(state: dict) -> torch.nn.Module:
        model = Checkpoint(None, first.model_name, first.model_kwargs, state, first.labels,
                           first.normalization).build_model()
        if remeasure:
            update_bn(_bn_batches(train.images, first.normalization, on_batch=advance), model)
        return model.eval()

    def score(model: torch.nn.Module) -> dict | str:
        """The model's metrics on ``val``, or, when its logits are not all finite, a string saying how many not."""
        chunks = []
        for i in range(0, len(val.images), 512):
            chunks.append(predict_logits(model, val.images[i : i + 512], first.normalization, device))
            advance(len(chunks[-1]))
        logits = torch.cat(chunks)
        finite = torch.isfinite(logits).all(1)
        if not bool(finite.all()):  # argmax of NaN is class 0: never score such outputs as predictions
            return (f"its outputs on {val.split} are not finite (NaN or inf) for "
                    f"{int((~finite).sum())} of {_plural(len(finite), 'image')}")
        return classification_metrics(val.labels.numpy(), logits.argmax(1).numpy(), first.labels)

    def evaluate(label: str, make) -> tuple[torch.nn.Module, dict | str]:
        """``make()`` (the model, statistics re-measured under --bn recompute) scored, shown as ``label``."""
        nonlocal advance
        advance = start(label, images_per_eval)
        model = make()
        return model, score(model)

    with _eval_progress(progress, n_evals) as start:
        # each ingredient is scored as a soup of one is: under --bn recompute with its statistics re-measured too,
        # so greedy compares candidates with ingredients measured the same way
        scores = {str(ck.path): evaluate(f"ingredient {ck.path}",
                                         (lambda ck=ck: build(ck.state_dict)) if train is not None
                                         else ck.build_model)[1] for ck in cks}
        broken = []
        for ck in cks:
            if isinstance(scores[str(ck.path)], str):
                where = _weight_problems(ck.state_dict)
                broken.append(f"{ck.path}: {scores[str(ck.path)]}" + (f" ({where})" if where else ""))
        if broken:
            raise TrainingError(f"{_plural(len(broken), 'ingredient')} with non-finite outputs (broken weights or "
                                f"BatchNorm statistics) cannot go into a soup; leave "
                                f"{'it' if len(broken) == 1 else 'them'} out; no soup written:\n  "
                                + "\n  ".join(broken))
        own = {p: sc["accuracy"] for p, sc in scores.items()}
        tried: list[dict] = []
        model = m = None  # the soup kept so far, and its metrics (greedy)
        if greedy:
            order = sorted(range(len(cks)), key=lambda i: -own[str(cks[i].path)])
            chosen = [order[0]]
            best = own[str(cks[order[0]].path)]
            for i in order[1:]:
                candidate, cm = evaluate(
                    f"soup of {len(chosen) + 1} with {cks[i].path}",
                    lambda i=i: build(average_state_dicts([cks[j].state_dict for j in chosen + [i]])))
                if isinstance(cm, str):  # never written: left out like a candidate that lowered accuracy
                    tried.append({"checkpoint": str(cks[i].path), "accuracy_with": None, "kept": False,
                                  "finite": False})
                    notes.append(f"left {cks[i].path} out of the greedy soup: the soup with it was not usable, "
                                 f"{cm}")
                    continue
                kept = cm["accuracy"] >= best
                tried.append({"checkpoint": str(cks[i].path), "accuracy_with": cm["accuracy"], "kept": kept})
                if kept:
                    chosen.append(i)
                    best, model, m = cm["accuracy"], candidate, cm
            if len(chosen) == 1:
                non_finite = any(t["accuracy_with"] is None for t in tried)
                raise TrainingError(
                    f"greedy soup kept only {cks[chosen[0]].path}: adding any other checkpoint lowered "
                    f"{val.split} accuracy" + (" or gave non-finite outputs" if non_finite else "") + " ("
                    + ", ".join("non-finite" if t["accuracy_with"] is None else format(t["accuracy_with"], ".4f")
                                for t in tried) + "); no soup written"
                )
        else:
            chosen = list(range(len(cks)))
            model, m = evaluate(f"soup of {len(chosen)}",
                                lambda: build(average_state_dicts([cks[i].state_dict for i in chosen])))
            if isinstance(m, str):
                raise TrainingError(f"the soup of {', '.join(str(ck.path) for ck in cks)} is not usable: {m}; "
                                    f"no soup written")
    names = [str(cks[i].path) for i in chosen]
    bn_statistics = ("none: the model has no BatchNorm layers" if not has_bn
                     else {"recomputed_on": train.split, "n": len(train.labels)} if train is not None else "averaged")
    # the data record as the trainer writes it: the splits the soup measured on where it loaded them itself
    data_record: dict = {}
    if train is not None and has_bn:
        data_record["train"] = data_fingerprint(train)
    else:
        rec, why = _agreed_record([cks[i] for i in chosen], "train")  # (a greedy soup: those it kept)
        if rec is not None:
            data_record["train"] = rec
        else:
            notes.append(f"the soup records no training data ({why}): `fer-edge export` cannot tell when its "
                         f"parity gate runs on the images the soup was trained on")
    data_record["val"] = val_fp
    data_record["bn_statistics"] = bn_statistics
    resolved = {str(ck.path): str(Path(ck.path).resolve()) for ck in cks}  # recorded as train records paths
    payload = {
        "model": first.model_name, "model_kwargs": model_kwargs, "state_dict": model.state_dict(),
        "labels": first.labels, "normalization": first.normalization.to_dict(),
        "train_config": first.train_config,
        "metrics": {"val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"], "val_split": val.split},
        "data": data_record,
        "epoch": max(cks[i].epoch for i in chosen),
        "soup": {"ingredients": [resolved[n] for n in names], "greedy": greedy, "bn": bn,
                 "ingredient_val_accuracy": {resolved[p]: a for p, a in own.items()},
                 "tried": [{**t, "checkpoint": resolved[t["checkpoint"]]} for t in tried]},
    }
    input_files = [cks[i].raw.get("input_files") for i in chosen]
    if input_files[0] is not None and all(f == input_files[0] for f in input_files):
        payload["input_files"] = input_files[0]  # the --init (and teachers) every ingredient learned from
    try:
        save_checkpoint(out, payload, overwrite=False)
    except FileExistsError:  # made by something else while the soup was cooking: it is not ours to replace
        raise TrainingError(f"{out} appeared while the soup was made; it was left as it is and no soup was "
                            "written: choose another --out") from None
    return SoupResult(out, names, val.split, m["accuracy"], m["macro_f1"], own, tried, bn_statistics, notes)

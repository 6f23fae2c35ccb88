"""Distillation teachers (``fer-edge train --distill``): frozen checkpoints run in PyTorch or ONNX Runtime.

Online (the default), the teachers see every augmented (and mixed) batch the student sees. Offline
(``--distill-targets offline``) they see each training image once, un-augmented (and mirrored with
``--distill-tta``), before the first epoch; the step looks the probabilities up by image and mixes them with
MixUp/CutMix's weights, so the step costs what it costs without a teacher. What offline gives up: the teacher's
answer for the rotated, shifted, erased image the student sees (the augmentations are assumed to keep the
expression). Measured on nano's third distillation round (README): 2.2x the steps per second of the online
ONNX Runtime teacher; the same accuracy as online without MixUp, 1.1 points less with MixUp (mixed clean-image
probabilities are not the teacher's answer for the mixed image). Replayed targets (``--distill-targets replay``,
:mod:`fer_edge.training.replay`) keep offline's step cost and give the teacher's answer for the augmented view
the student sees, from K stored views per image.

A teacher only runs inference, so on a CPU it need not run in PyTorch eager mode: ``--teacher-runtime
onnxruntime`` exports each teacher once (``torch.onnx``, the same FP32 graph ``fer-edge export`` writes)
and runs it in an ONNX Runtime session. ``python -m fer_edge.benchmarks.distill_speed`` measures what that
buys per training step. ``auto`` picks ONNX Runtime on the CPU when it is installed and PyTorch otherwise,
and the trainer says which it picked.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from fer_edge.errors import FerEdgeError, TrainingError

TEACHER_RUNTIMES = ("auto", "torch", "onnxruntime")
#: ``--distill-targets``: the teachers see every augmented batch (online), or each training image once,
#: un-augmented, before training (offline; their probabilities are then looked up and mixed like the labels),
#: or K stored augmented views of each image, which the steps then replay (replay: fer_edge.training.replay).
DISTILL_TARGETS = ("online", "offline", "replay")


def resolve_teacher_runtime(choice: str, device: torch.device) -> str:
    """The runtime ``--teacher-runtime choice`` means on ``device``: ``torch`` or ``onnxruntime``."""
    if choice not in TEACHER_RUNTIMES:
        raise TrainingError(f"--teacher-runtime {choice!r}: valid: {', '.join(TEACHER_RUNTIMES)}")
    has_ort = _onnxruntime_importable()
    if choice == "onnxruntime":
        if device.type != "cpu":
            raise TrainingError(
                f"--teacher-runtime onnxruntime runs teachers on the CPU, but training runs on {device.type}: "
                "use --teacher-runtime torch (or auto) there"
            )
        if not has_ort:
            raise TrainingError("--teacher-runtime onnxruntime: onnxruntime is not installed (pip install onnxruntime)")
        return "onnxruntime"
    if choice == "auto":
        return "onnxruntime" if device.type == "cpu" and has_ort else "torch"
    return "torch"


def _onnxruntime_importable() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class TorchTeacher:
    """A frozen eval-mode module run in PyTorch (inside the training step's autocast, if any)."""

    runtime = "torch"
    name: str | None = None  # the --distill spec it was loaded from (load_teachers), for messages

    def __init__(self, model: torch.nn.Module, normalization, channels_last: bool = False):
        self.model = model.eval()
        self.device = next(iter(model.parameters()), torch.empty(0)).device
        for p in self.model.parameters():
            p.requires_grad_(False)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.normalization = normalization
        self.channels_last = channels_last

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)


class OnnxRuntimeTeacher:
    """A frozen module exported to FP32 ONNX and run in an ONNX Runtime CPU session.

    The session's threads do not spin after a call (``session.intra_op.allow_spinning`` 0): spinning
    threads would take the CPU from the student's backward pass that follows.
    """

    runtime = "onnxruntime"
    name: str | None = None  # the --distill spec it was loaded from (load_teachers), for messages
    device = torch.device("cpu")

    def __init__(self, model: torch.nn.Module, normalization, threads: int = 0):
        import onnxruntime as ort

        from fer_edge.exporters.onnx import INPUT_NAME, fp32_proto

        proto = fp32_proto(model.eval())
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.input_name = INPUT_NAME
        self.normalization = normalization

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])


_JOIN_HINT = ("join the parts into one checkpoint first (`python -m fer_edge.checkpoint join PART0 PART1 ... "
              "--out TEACHER.pt`) and give --distill the joined file")


def _teacher_reason(spec: str, path: Path | None, e: FerEdgeError) -> str:
    """``e``'s message as the reason a teacher failed, without a leading ``<path>: `` (the spec names the file)."""
    text = str(e)
    for prefix in {str(spec), str(path) if path is not None else str(spec)}:
        if text.startswith(prefix + ": "):
            text = text[len(prefix) + 2:]
            break
    if path is None or not path.exists():
        from fer_edge.checkpoint import existing_parts

        parts = existing_parts(spec)
        if parts:
            names = ", ".join(str(p) for p in parts.values())
            text += f". Parts of it exist ({names}): {_JOIN_HINT}"
    return text


@contextmanager
def _as_teacher_error(spec: str, path: Path | None = None, what: str = "") -> Iterator[None]:
    """Any :class:`FerEdgeError` raised inside becomes ``--distill <spec>: [what: ]<reason>`` (the same class), so
    an error in a teacher checkpoint names the option and file and does not read as the student's."""
    try:
        yield
    except FerEdgeError as e:
        reason = _teacher_reason(spec, path, e)
        msg = f"--distill {spec}: {what + ': ' if what else ''}{reason}"
        try:
            err = type(e)(msg)
        except Exception:  # noqa: BLE001 - an error class with another constructor
            err = TrainingError(msg)
        raise err from None


def resolve_teacher(spec: str | os.PathLike) -> Path:
    """The checkpoint file ``--distill spec`` names (a path or a shipped name); errors say ``--distill spec``."""
    from fer_edge.weights import resolve_checkpoint

    spec = str(spec)
    with _as_teacher_error(spec):
        path = resolve_checkpoint(spec)
    if not path.is_file():
        raise TrainingError(f"--distill {spec}: a folder, not a checkpoint file (.pt)")
    return path


def repeated_teachers(specs: list) -> list[str]:
    """Problems for ``--distill`` teachers given more than once: the same name or path, two names of one file, or
    two files with the same bytes (the SHA-256 of the file, as ``fer-edge eval`` compares an ensemble's members).
    Such a teacher would only weigh twice in the teachers' average. A spec that does not resolve to a file is
    passed over here: :func:`load_teachers` refuses it with its own reason."""
    from fer_edge.utils import sha256_path

    by_digest: dict[str, list[tuple[str, Path]]] = {}
    for spec in specs:
        try:
            path = resolve_teacher(spec)
            digest = sha256_path(path)
        except (FerEdgeError, OSError):
            continue
        by_digest.setdefault(digest, []).append((str(spec), path.resolve()))
    problems = []
    for given in by_digest.values():
        if len(given) < 2:
            continue
        names = list(dict.fromkeys(spec for spec, _ in given))
        times = "twice" if len(given) == 2 else f"{len(given)} times"
        what = (f"{names[0]} is given {times}" if len(names) == 1
                else f"{' and '.join(names)} name the same checkpoint" if len({p for _, p in given}) == 1
                else f"{' and '.join(names)} hold the same weights (same SHA-256)")
        problems.append(f"--distill {what}: the teachers' average would only weight that teacher {times}; "
                        "give each teacher once")
    return problems


def _probe_images(n: int = 4) -> torch.Tensor:
    """The images a freshly loaded teacher is tried on (:func:`check_teacher_outputs`): a fixed gradient and
    fixed noise, 0..1, made without touching torch's global random stream."""
    from fer_edge.constants import IMAGE_SIZE

    g = torch.Generator().manual_seed(0)
    noise = torch.rand((n - 1, 1, IMAGE_SIZE, IMAGE_SIZE), generator=g)
    ramp = torch.linspace(0, 1, IMAGE_SIZE).view(1, 1, 1, IMAGE_SIZE).expand(1, 1, IMAGE_SIZE, IMAGE_SIZE)
    return torch.cat([ramp, noise])


def _not_finite_message(names: list[str], where: str, temperature: float | None = None,
                        logits_finite: bool = False) -> str:
    who = ", ".join(f"--distill {n}" for n in names)
    one = len(names) == 1
    if logits_finite and temperature is not None:
        return (f"{who}: the teacher{'' if one else 's'}' probabilities on {where} are not finite (NaN or inf) "
                f"although {'its' if one else 'their'} logits are: --distill-temperature {temperature:g} "
                "under- or overflows the softmax in float32; use one between 0.01 and 100 (1 to 20 is usual)")
    return (f"{who}: the teacher{'' if one else 's'}' outputs on {where} are not finite (NaN or inf): "
            f"{'its' if one else 'their'} weights hold NaN or inf, or overflow; fix or retrain "
            f"{'that teacher' if one else 'those teachers'}, or leave {'it' if one else 'them'} out. "
            "Distilling from it would only make the training loss NaN")


def _teacher_name(teacher, i: int) -> str:
    return getattr(teacher, "name", None) or f"#{i + 1}"


@torch.no_grad()
def check_teacher_outputs(teachers: list, x: torch.Tensor | None = None, where: str = "a probe batch") -> None:
    """Raise :class:`TrainingError` naming every teacher whose logits on ``x`` (0..1 images, N x 1 x H x W; by
    default a small fixed probe batch) are not finite: a teacher with NaN weights, found before any training."""
    if x is None:
        x = _probe_images()
    bad = []
    for i, teacher in enumerate(teachers):
        norm = teacher.normalization
        xt = x.to(teacher.device) if getattr(teacher, "device", None) is not None else x
        logits = teacher.logits((xt - norm.mean) / norm.std)
        if not bool(torch.isfinite(logits).all()):
            bad.append(_teacher_name(teacher, i))
    if bad:
        raise TrainingError(_not_finite_message(bad, where))


def load_teachers(paths: list[str], labels: list[str], device: torch.device, runtime: str,
                  channels_last: bool = False, threads: int = 0, probe: bool = True) -> list:
    """``--distill``: each teacher checkpoint as a frozen teacher in ``runtime`` (already resolved).

    ``paths`` are checkpoint files or shipped names. Every error a teacher causes (missing, corrupt, a part of a
    split checkpoint, a model this fer-edge cannot build) says ``--distill <spec>``. With ``probe`` each teacher
    is tried once on a small probe batch (:func:`check_teacher_outputs`), so a teacher with NaN weights is
    refused now rather than found as a diverged training loss an epoch later.
    """
    from fer_edge.checkpoint import load_checkpoint

    teachers = []
    for spec in paths:
        spec = str(spec)
        path = resolve_teacher(spec)
        with _as_teacher_error(spec, path):
            ck = load_checkpoint(path)
        if ck.labels != labels:
            raise TrainingError(f"--distill {spec}: teacher labels {ck.labels} differ from {labels}")
        with _as_teacher_error(spec, path, f"the teacher's model {ck.model_name!r} (with the model_kwargs its "
                                           "checkpoint records) cannot be built"):
            model = ck.build_model()
        with _as_teacher_error(spec, path, f"cannot run the teacher in {runtime}"):
            if runtime == "onnxruntime":
                teacher = OnnxRuntimeTeacher(model, ck.normalization, threads=threads)
            else:
                teacher = TorchTeacher(model.to(device), ck.normalization, channels_last=channels_last)
        teacher.name = spec
        if probe:
            check_teacher_outputs([teacher])
        teachers.append(teacher)
    return teachers


@torch.no_grad()
def teacher_probs(teachers: list, x: torch.Tensor, temperature: float, tta: bool) -> torch.Tensor:
    """Teachers' softened class probabilities on a batch of 0..1 images, averaged over teachers (and flips).

    With ``tta`` each teacher sees the batch and its mirror image in one call of twice the batch.
    """
    views = torch.cat([x, x.flip(3)]) if tta else x
    n_views = 2 if tta else 1
    total = None
    for teacher in teachers:
        norm = teacher.normalization
        logits = teacher.logits((views - norm.mean) / norm.std).to(x.device).float()
        p = F.softmax(logits / temperature, 1).view(n_views, x.shape[0], -1).sum(0)
        total = p if total is None else total + p
    return total / (len(teachers) * n_views)


@torch.no_grad()
def _raise_not_finite(teachers: list, x: torch.Tensor, temperature: float, tta: bool) -> None:
    """The teachers' probabilities on ``x`` were not finite: raise, naming which teachers and why."""
    bad, logits_finite = [], True
    views = torch.cat([x, x.flip(3)]) if tta else x
    for i, teacher in enumerate(teachers):
        if not bool(torch.isfinite(teacher_probs([teacher], x, temperature, tta)).all()):
            bad.append(_teacher_name(teacher, i))
            norm = teacher.normalization
            logits_finite &= bool(torch.isfinite(teacher.logits((views - norm.mean) / norm.std)).all())
    raise TrainingError(_not_finite_message(bad or [_teacher_name(t, i) for i, t in enumerate(teachers)],
                                            "the training images", temperature, logits_finite))


@torch.no_grad()
def precompute_teacher_probs(teachers: list, images_u8: torch.Tensor, temperature: float, tta: bool,
                             batch_size: int = 512, on_batch: Callable[[int], None] | None = None,
                             rank: int = 0, world: int = 1) -> torch.Tensor:
    """``--distill-targets offline``: :func:`teacher_probs` of every image (N x 48 x 48 uint8), un-augmented.

    Returns N x C float32 on the images' device. ``on_batch(n)`` is called after each batch of ``n`` images.
    Under torchrun each of ``world`` processes labels only its share, the images ``rank``, ``rank + world``,
    ...; the other rows stay zero, so the sum of the processes' results (an all-reduce) holds every image's
    probabilities once. Probabilities that are not finite (a teacher with NaN weights, or a temperature that
    over- or underflows the softmax) raise :class:`TrainingError` naming the teacher(s), right after the batch.
    """
    if world < 1 or not 0 <= rank < world:
        raise TrainingError(f"rank {rank} is not one of a world of {world} processes")
    share = images_u8[rank::world]
    out = None
    for i in range(0, len(share), batch_size):
        x = share[i : i + batch_size].unsqueeze(1).float().div_(255.0)
        p = teacher_probs(teachers, x, temperature, tta)
        if not bool(torch.isfinite(p).all()):
            _raise_not_finite(teachers, x, temperature, tta)
        if out is None:
            out = torch.zeros(len(images_u8), p.shape[1], dtype=torch.float32, device=images_u8.device)
        out[rank::world][i : i + len(x)] = p.to(out.device)
        if on_batch is not None:
            on_batch(len(x))
    if out is None and len(images_u8):  # more processes than images: this one labels none
        probe = teacher_probs(teachers, images_u8[:1].unsqueeze(1).float().div_(255.0), temperature, tta)
        out = torch.zeros(len(images_u8), probe.shape[1], dtype=torch.float32, device=images_u8.device)
    return out if out is not None else torch.empty(0, 0)

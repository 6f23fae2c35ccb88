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

from typing import Callable

import torch
import torch.nn.functional as F

from fer_edge.errors import TrainingError

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

    def __init__(self, model: torch.nn.Module, normalization, channels_last: bool = False):
        self.model = model.eval()
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


def load_teachers(paths: list[str], labels: list[str], device: torch.device, runtime: str,
                  channels_last: bool = False, threads: int = 0) -> list:
    """``--distill``: each teacher checkpoint as a frozen teacher in ``runtime`` (already resolved)."""
    from fer_edge.checkpoint import load_checkpoint

    teachers = []
    for path in paths:
        ck = load_checkpoint(path)
        if ck.labels != labels:
            raise TrainingError(f"--distill {path}: teacher labels {ck.labels} differ from {labels}")
        model = ck.build_model()
        if runtime == "onnxruntime":
            teachers.append(OnnxRuntimeTeacher(model, ck.normalization, threads=threads))
        else:
            teachers.append(TorchTeacher(model.to(device), ck.normalization, channels_last=channels_last))
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
def precompute_teacher_probs(teachers: list, images_u8: torch.Tensor, temperature: float, tta: bool,
                             batch_size: int = 512, on_batch: Callable[[int], None] | None = None,
                             rank: int = 0, world: int = 1) -> torch.Tensor:
    """``--distill-targets offline``: :func:`teacher_probs` of every image (N x 48 x 48 uint8), un-augmented.

    Returns N x C float32 on the images' device. ``on_batch(n)`` is called after each batch of ``n`` images.
    Under torchrun each of ``world`` processes labels only its share, the images ``rank``, ``rank + world``,
    ...; the other rows stay zero, so the sum of the processes' results (an all-reduce) holds every image's
    probabilities once.
    """
    if world < 1 or not 0 <= rank < world:
        raise TrainingError(f"rank {rank} is not one of a world of {world} processes")
    share = images_u8[rank::world]
    out = None
    for i in range(0, len(share), batch_size):
        x = share[i : i + batch_size].unsqueeze(1).float().div_(255.0)
        p = teacher_probs(teachers, x, temperature, tta)
        if out is None:
            out = torch.zeros(len(images_u8), p.shape[1], dtype=torch.float32, device=images_u8.device)
        out[rank::world][i : i + len(x)] = p.to(out.device)
        if on_batch is not None:
            on_batch(len(x))
    if out is None and len(images_u8):  # more processes than images: this one labels none
        probe = teacher_probs(teachers, images_u8[:1].unsqueeze(1).float().div_(255.0), temperature, tta)
        out = torch.zeros(len(images_u8), probe.shape[1], dtype=torch.float32, device=images_u8.device)
    return out if out is not None else torch.empty(0, 0)

"""Quantization-aware fine-tuning (``fer-edge train --qat``).

The training forward pass runs with INT8 rounding simulated the way the exporters'
post-training quantization applies it (``torch.ao.quantization`` fake quantization,
straight-through gradients):

* weights of every Conv and Linear layer: int8, symmetric, one scale per output channel,
  recomputed from the current weights at every step (ONNX Runtime's and NNCF's INT8 weights;
  per-channel scales are unchanged by folding BatchNorm into the conv, so the unfolded weights
  are rounded exactly as the folded ones will be);
* activations: uint8, asymmetric, one range per tensor (a moving-average min/max observer),
  at the model input and where an INT8 graph quantizes a tensor: the output of a Conv or
  Linear unless a BatchNorm or activation follows it (those fuse), of a BatchNorm unless an
  activation follows it, of each activation and of average pooling. Placement is found from
  the modules seen in one forward pass, so activations applied as functions (``F.relu``) are
  not seen; the tensor before them is rounded instead, which errs on the noisy side.

The simulation must run in float32: under bf16 or fp16 autocast a layer casts its rounded input and
weights to 16 bits, which moves them off the INT8 grid (nano under bf16: 46% of a layer's input values
off by up to half a step, 73% of the weights). ``fer-edge train --qat`` therefore trains without
autocast (``--amp auto`` is off with it; ``--amp bf16``/``fp16`` are refused).

The model itself is not changed: weights are rounded through
:func:`torch.func.functional_call` and activations through forward hooks that act only inside
:meth:`QuantSim.forward`. Evaluation, the EMA copy and every checkpoint see the plain FP32
model, so a QAT checkpoint is an ordinary FP32 checkpoint: ``fer-edge export`` quantizes it
with its own calibration as it would any other, starting from weights that have learned to
tolerate the rounding (Intel Neural Compressor's split: QAT for the weights, post-training
calibration for the scales). The observers' ranges travel in ``last.pt``'s resume state, so
``--resume`` continues a QAT run exactly.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

#: Modules whose output an INT8 graph keeps in the quantized domain when one of these follows:
#: conv/linear + BN + activation fuse into one quantized op.
_FUSES_INTO = {
    "conv": (nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.ReLU6, nn.Hardtanh),
    "bn": (nn.ReLU, nn.ReLU6, nn.Hardtanh),
}
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.ELU)
_AVERAGE = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
WEIGHT_QMAX = 127  # symmetric int8: -127..127


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """``w`` rounded to symmetric per-output-channel int8 (gradient passes straight through)."""
    wf = w.float()
    amax = wf.detach().abs().amax(dim=tuple(range(1, w.dim()))).clamp_min(1e-12)
    scale = (amax / WEIGHT_QMAX).to(torch.float32)
    zero = torch.zeros(w.shape[0], dtype=torch.int32, device=w.device)
    return torch.fake_quantize_per_channel_affine(wf, scale, zero, 0, -WEIGHT_QMAX, WEIGHT_QMAX).to(w.dtype)


def _activation_quantizer() -> nn.Module:
    from torch.ao.quantization import FakeQuantize, MovingAverageMinMaxObserver

    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine, reduce_range=False)


def _first_tensor(args) -> torch.Tensor | None:
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def activation_points(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the leaf modules whose output an INT8 graph would round (see the module docstring)."""
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    handles = []
    for name, mod in model.named_modules():
        if next(iter(mod.children()), None) is None:
            def record(m, args, out, name=name):
                x = _first_tensor(args)
                if isinstance(out, torch.Tensor) and x is not None:
                    calls.append((name, m, x, out))
            handles.append(mod.register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    # which calls consume each call's output; an in-place activation returns its input object,
    # so from then on that object is the activation's output
    consumers: list[list[nn.Module]] = [[] for _ in calls]
    producer: dict[int, int] = {}
    for i, (_, m, x, out) in enumerate(calls):
        if id(x) in producer:
            consumers[producer[id(x)]].append(m)
        producer[id(out)] = i
    points = []
    for (name, m, x, out), after in zip(calls, consumers):
        if isinstance(m, _WEIGHTED):
            fused = after and all(isinstance(c, _FUSES_INTO["conv"]) for c in after)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            fused = after and all(isinstance(c, _FUSES_INTO["bn"]) for c in after)
        elif isinstance(m, _ACTIVATIONS + _AVERAGE):
            fused = False
        else:
            continue  # max-pool, dropout, flatten, identity: no new range
        if not fused and name not in points:
            points.append(name)
    return points


class QuantSim:
    """Runs ``module`` (the model, or its DDP wrapper) with INT8 rounding simulated.

    ``model`` is the bare model whose modules get the activation hooks; ``example`` a batch
    (any size) used once to find where activations are rounded.
    """

    def __init__(self, module: nn.Module, model: nn.Module, example: torch.Tensor):
        self.module = module
        self.weights = [f"{n}.weight" for n, m in module.named_modules() if isinstance(m, _WEIGHTED)]
        self.points = activation_points(model, example)
        device = next(model.parameters()).device
        self.input_fq = _activation_quantizer().to(device)
        self.fq = {name: _activation_quantizer().to(device) for name in self.points}
        self.active = False
        mods = dict(model.named_modules())
        self._handles = [mods[name].register_forward_hook(self._hook(fq)) for name, fq in self.fq.items()]

    def _hook(self, fq: nn.Module):
        def hook(_m, _args, out):
            if self.active:
                return fq(out.float()).to(out.dtype)
            return None
        return hook

    @contextmanager
    def _on(self):
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = dict(self.module.named_parameters())
        rounded = {name: fake_quant_weight(params[name]) for name in self.weights}
        xq = self.input_fq(x.float()).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last):
            xq = xq.contiguous(memory_format=torch.channels_last)
        with self._on():
            return torch.func.functional_call(self.module, rounded, (xq,))

    __call__ = forward

    def ranges(self) -> list[torch.Tensor]:
        """The activation observers' running min and max, input first (the buffers themselves)."""
        observers = [fq.activation_post_process for fq in (self.input_fq, *self.fq.values())]
        return [t for o in observers for t in (o.min_val, o.max_val)]

    def average_ranges(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor], world: int) -> None:
        """Under DDP each rank observes its own shard of the batch; averaging the ranges after every step keeps
        every rank rounding alike (as DDP keeps their weights alike), and the checkpoint holds all ranks' view."""
        ranges = self.ranges()
        flat = all_reduce_sum(torch.stack([t.reshape(()) for t in ranges]).float()) / world
        with torch.no_grad():
            for t, v in zip(ranges, flat):
                t.copy_(v.reshape(t.shape))

    def state_dict(self) -> dict:
        """The observers' ranges, for ``--resume`` (the weights' scales need none: they follow the weights)."""
        return {"<input>": self.input_fq.state_dict(), **{n: fq.state_dict() for n, fq in self.fq.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.input_fq.load_state_dict(state["<input>"])
        for name, fq in self.fq.items():
            fq.load_state_dict(state[name])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def describe(self) -> str:
        return (f"QAT: {len(self.weights)} weight tensors int8 per channel, input + {len(self.points)} "
                f"activations uint8 per tensor")

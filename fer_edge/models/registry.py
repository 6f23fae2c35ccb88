"""A timm-style model registry: ``@register_model`` factories, ``create_model``, ``list_models``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from fer_edge.constants import IMAGE_SIZE, NUM_CLASSES
from fer_edge.errors import ModelError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., nn.Module]
    source: str
    module: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, source: str = "fer-edge"):
    """Register a factory ``fn(num_classes=7, **kwargs) -> nn.Module`` under its function name.

    ``source`` says where the architecture comes from (a notebook, a paper, fer-edge).
    """

    def deco(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(f) or not isinstance(getattr(f, "__name__", None), str):  # (f.__name__ raised AttributeError)
            raise ModelError(f"register_model takes a function that builds a model (def my_model(num_classes=7, "
                             f"**kwargs)), got {type(f).__name__} {f!r}")
        if not f.__name__.isidentifier():  # a lambda's "<lambda>": no name a user could type
            raise ModelError(f"register_model needs a named function (def my_model(...)), got {f.__name__!r}")
        if f.__name__ in _REGISTRY:
            raise ModelError(f"model {f.__name__!r} is registered twice")
        _REGISTRY[f.__name__] = ModelEntry(f.__name__, f, source, f.__module__)
        return f

    return deco(fn) if fn is not None else deco


def _ensure_loaded() -> None:
    # Importing the package registers every model file.
    import fer_edge.models  # noqa: F401


def list_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}") from None


def create_model(name: str, num_classes: int = NUM_CLASSES, **kwargs) -> nn.Module:
    """Build a registered model taking N x 1 x 48 x 48 input and returning N x num_classes logits.

    The model records ``num_classes`` as its ``num_classes`` attribute (timm's convention) unless its class
    already has one; :func:`forward_problem` checks the output width against it. Building does not run the
    model: kwargs that build a model which cannot take a 48x48 image (too many pooling stages, a zero
    width) are found by :func:`forward_problem`, not here.
    """
    entry = get_model_entry(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"model {name!r}: num_classes must be a whole number of at least 1, not {num_classes!r}")
    try:
        model = entry.factory(num_classes=num_classes, **kwargs)
    except ModelError:  # the model's own check, which already says what is wrong
        raise
    except Exception as e:  # KeyboardInterrupt and SystemExit are not Exceptions: they pass
        if not kwargs:  # a bug inside the model, not the caller's arguments
            raise
        # an unknown keyword, a value of the wrong type, a value torch refuses: the exception says which
        raise ModelError(f"model {name!r} cannot be built with {kwargs}: {type(e).__name__}: {e}") from None
    if not hasattr(model, "num_classes"):
        model.num_classes = num_classes
    return model


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def forward_problem(model: nn.Module, input_size: tuple[int, ...] = (1, IMAGE_SIZE, IMAGE_SIZE), *,
                    num_classes: int | None = None) -> str:
    """Why ``model`` cannot score images of ``input_size`` (C x H x W), in one line; "" when it can.

    Runs one forward pass of a batch of 2 zero images, in eval mode under ``torch.no_grad`` (each module's
    train/eval mode is restored afterwards), on the device and floating dtype of the model's first parameter.
    The output must be a 2 x ``num_classes`` tensor; ``num_classes`` defaults to the model's ``num_classes``
    attribute (which :func:`create_model` sets), and when neither is known any 2 x K output (K >= 1) passes.
    Meant to be called once before training: model kwargs such as seven pooling stages build a model that
    fails only on its first batch.
    """
    import torch

    if num_classes is None:
        recorded = getattr(model, "num_classes", None)
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            num_classes = recorded
    modes = [(m, m.training) for m in model.modules()]
    first = next(model.parameters(), None)
    if first is None:
        first = next(model.buffers(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    try:
        model.eval()
        with torch.no_grad():
            y = model(torch.zeros((2, *input_size), device=device, dtype=dtype))
    except Exception as e:  # KeyboardInterrupt and SystemExit are not Exceptions: they pass
        return _one_line(f"{type(e).__name__}: {e}")
    finally:
        for m, training in modes:
            m.training = training
    if not isinstance(y, torch.Tensor):
        return f"the model returns a {type(y).__name__}, not a tensor of logits"
    shape = tuple(y.shape)
    want = f"(2, {num_classes})" if num_classes is not None else "(2, number of classes)"
    if len(shape) != 2 or shape[0] != 2 or shape[1] < 1 or (num_classes is not None and shape[1] != num_classes):
        return (f"for a batch of 2 images of size {tuple(input_size)} the model returns shape {shape}, "
                f"not {want}")
    return ""


def resolved_model_kwargs(model: nn.Module, kwargs: dict) -> dict:
    """``kwargs`` plus every constructor default they left alone, as plain JSON-like values.

    Checkpoints store this, so they keep loading after a factory's defaults change. It needs a model class
    whose constructor takes only keyword arguments with plain defaults (fer-edge's own models); for any
    other (torchvision's ResNet takes ``block`` and ``layers``) ``kwargs`` come back unchanged.
    """
    import inspect

    try:
        params = list(inspect.signature(type(model).__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return dict(kwargs)
    params = [p for p in params if p.name != "num_classes"]
    names = {p.name for p in params}
    plain = (bool, int, float, str, type(None), tuple, list)
    if (set(kwargs) - names
            or any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is p.empty for p in params)
            or not all(isinstance(p.default, plain) for p in params)):
        return dict(kwargs)

    def _json(v):
        return [_json(x) for x in v] if isinstance(v, (tuple, list)) else v

    return {p.name: _json(kwargs.get(p.name, p.default)) for p in params}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int = IMAGE_SIZE) -> int:
    """Multiply-accumulates per image, counted by torch's FLOP counter (FLOPs / 2) on one input."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        x = torch.zeros(1, 1, input_size, input_size, device=p.device if p is not None else "cpu")
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops() // 2)
    finally:
        model.train(was_training)

"""Helpers shared by the runtime modules."""
from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from fer_edge.constants import IMAGE_SIZE
from fer_edge.errors import ArtifactError, DataError, OptionError, RuntimeUnavailableError, UnknownDeviceError


def package_available(package: str) -> tuple[bool, str]:
    """(True, "") when ``package`` can be imported, else (False, "package X missing (pip install X)")."""
    try:
        found = importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return True, ""
    return False, f"package {package} missing (pip install {package})"


def require_package(package: str, what: str) -> None:
    ok, why = package_available(package)
    if not ok:
        raise RuntimeUnavailableError(f"{what}: {why}")


def check_artifact(path: Path, is_dir: bool = False) -> Path:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: artifact not found")
    if is_dir and not path.is_dir():
        raise ArtifactError(f"{path}: expected a directory")
    if not is_dir and not path.is_file():
        raise ArtifactError(f"{path}: expected a file")
    return path


def device_or_default(device, default: str, runtime: str) -> str:
    """``device``, or ``default`` for None or "" (every runtime's default device); anything that is no string is an
    :class:`OptionError` (``device=0`` became the default as a runtime class was built directly, and ``device=1``
    failed on ``.lower()``)."""
    if device is not None and not isinstance(device, str):
        raise OptionError(f"{runtime}: the device must be a string such as 'cpu' (or None: the runtime's default), "
                          f"got {type(device).__name__} {device!r}")
    return device or default


def device_name(device: str) -> str:
    """The name of a numbered device, lower case: ``GPU.1`` (OpenVINO's) and ``cuda:1`` (torch's) are ``gpu`` and
    ``cuda``; the runtimes and ``bench --devices`` count a device as known by it."""
    return re.split(r"[.:]", device.lower(), maxsplit=1)[0]


def check_device(device: str, valid: list[str], runtime: str, known: list[str] | None = None,
                 indexed: bool = False) -> str:
    """The runtime's own spelling of ``device`` (matched in any case: ``cpu`` is OpenVINO's ``CPU``, ``CPU`` torch's
    ``cpu``, as ``bench --devices`` takes them), or :class:`RuntimeUnavailableError`: a device of ``known`` (the
    names the runtime takes on some machine) absent here is "not available here"; any other name is unknown
    (:class:`UnknownDeviceError`, a usage error in the CLI). ``indexed``: the runtime takes torch's ``name:N``
    (``cuda:1``, ``cpu:0``) for a device here; elsewhere that form of a device here is refused as unknown, naming
    the devices to use."""
    if not isinstance(device, str):  # (device.lower() raised AttributeError)
        raise OptionError(f"{runtime}: the device must be a string such as 'cpu', got {type(device).__name__} "
                          f"{device!r}")
    for v in valid:
        if device == v or device.lower() == v.lower():
            return v
    here = ", ".join(valid) or "none"
    numbered = re.fullmatch(r"([A-Za-z_]+):(\d+)", device)
    if numbered:
        v = next((v for v in valid if v.lower() == numbered.group(1).lower()), None)
        if v is not None and indexed:
            return f"{v}:{numbered.group(2)}"
        if v is not None:
            raise UnknownDeviceError(f"{runtime}: device {device!r}: {runtime} takes no ':N' index; its devices "
                                     f"here: {here}")
    base = device_name(device)
    if known is not None and not any(device.lower() == k.lower() or base == k.lower() for k in known):
        raise UnknownDeviceError(f"{runtime}: unknown device {device!r} (its devices: {', '.join(known)}); "
                                 f"available here: {here}")
    raise RuntimeUnavailableError(f"{runtime}: device {device!r} is not available here; available: {here}")


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for one call (None or 0: left as they are), then put back:
    torch's setting is the process's, so a runtime that set it when built changed it for the caller, and for a
    runtime built earlier with another count. A caller (bench) that sets the same count pays one comparison."""
    import torch

    before = torch.get_num_threads()
    if not threads or int(threads) == before:
        yield
        return
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _plain_tensor(x):
    """A torch tensor as numpy can read it: detached (numpy() refuses one that requires grad), on the CPU (and
    bfloat16, which numpy has no type for, as float32); anything else as it is. torch is not imported for it: a
    tensor exists only where torch already is."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(x, torch.Tensor):
        return x
    x = x.detach().cpu()
    return x.float() if x.dtype == torch.bfloat16 else x


#: What :func:`as_input` takes, as its errors say.
_EXPECTED_INPUT = "expected float32 N x 1 x {0} x {0} input (or one 1 x {0} x {0} image)".format(IMAGE_SIZE)


def as_input(x) -> np.ndarray:
    """float32, C-contiguous N x 1 x 48 x 48 (a single 1 x 48 x 48 image gets a batch axis). Integer and bool
    arrays are refused (:class:`DataError`): they are raw pixels, not the normalised input every runtime takes.
    A torch tensor is taken as its detached CPU copy (one that requires grad, or lies on a GPU, gives the same
    logits as its plain copy)."""
    import reprlib

    expected = _EXPECTED_INPUT  # (built once: every timed run() of the bench comes through here)
    x = _plain_tensor(x)
    try:
        raw = np.asarray(x)
        if raw.dtype.kind in "biu":  # raw pixels (uint8 0..255): as floats they were classified, wrongly, unscaled
            raise DataError(f"{expected}, got {raw.dtype} values: a runtime takes pixels already normalised; use "
                            "fer_edge.preprocess.normalize(to_gray48(image), normalization) (the artifact's "
                            "metadata()['normalization']), or fer_edge.load(path).predict(image), which does both")
        arr = np.ascontiguousarray(raw.astype(np.float32, copy=False))  # float16/float64: converted
    except (TypeError, ValueError) as e:  # a string, a ragged list, an object numpy cannot read as numbers
        raise DataError(f"{expected}, got {type(x).__name__} {reprlib.repr(x)}, which is no array of numbers "
                        f"({type(e).__name__}: {e})") from None
    given = arr.shape
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1:] != (1, IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{expected}, got shape {given}")
    return arr


def quiet_coremltools() -> None:
    """coremltools logs a wall of 'Failed to load ...' (and version notes) on import off macOS:
    keep its logger at error level."""
    import logging

    logging.getLogger("coremltools").setLevel(logging.ERROR)


@contextlib.contextmanager
def keep_sigaltstack() -> Iterator[None]:
    """Put the calling thread's alternate signal stack back as it was when the block is done (Linux).

    Each ``openvino.Core`` loads a CPU plugin that installs an alternate signal stack on the loading
    thread and, when the Core is freed, restores the one it found (OpenVINO 2026.4, measured). Cores
    freed in another order than created leave the thread on a freed stack, and the next Ctrl-C or
    ``kill`` crashes the process with a segmentation fault. fer-edge's own runtimes share one Core
    (:func:`fer_edge.runtimes.openvino.ov_core`); code that makes Cores of its own (NNCF) runs inside
    this block, so whatever they later restore is the thread's original stack.
    """
    if not sys.platform.startswith("linux"):
        yield
        return
    import ctypes

    class StackT(ctypes.Structure):  # Linux stack_t: void *ss_sp; int ss_flags; size_t ss_size
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    libc = ctypes.CDLL(None)
    saved = StackT()
    if libc.sigaltstack(None, ctypes.byref(saved)) != 0:  # cannot read it: nothing to restore
        yield
        return
    try:
        yield
    finally:
        libc.sigaltstack(ctypes.byref(saved), None)  # with SS_DISABLE set, ss_sp/ss_size are ignored

"""Regression tests for the fifth QA round (each fails without its fix)."""
from __future__ import annotations

import pytest

from fer_edge.errors import OptionError
from fer_edge.runtimes import RUNTIMES


# -- a runtime class built directly checks its device's type ------------------------------------
@pytest.mark.parametrize("name", sorted(RUNTIMES))
@pytest.mark.parametrize("device", [0, 1, ["cpu"]])
def test_runtime_class_refuses_a_device_that_is_no_string(name, device, tmp_path):
    """``PyTorchRuntime(path, device=0)`` ran on the CPU (``device or "cpu"``), ``device=1`` failed on ``.lower()``
    (AttributeError) in ONNX Runtime; the check was only in ``load_runtime``."""
    with pytest.raises(OptionError, match=f"{name}: the device must be a string such as 'cpu'.*got "
                                          f"{type(device).__name__}"):
        RUNTIMES[name](tmp_path / "missing", device=device)

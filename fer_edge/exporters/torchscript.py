"""TorchScript export: ``torch.jit.trace`` to a ``.ts`` file (FP32 only), metadata in ``fer_edge.json``.

(``torch.jit`` is deprecated in recent PyTorch releases but still ships and loads in
LibTorch/C++ deployments; the trace is checked against the eager model at another batch size.)
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from fer_edge.errors import ExportError
from fer_edge.exporters.base import ExportedFile, Exporter, ExportRequest, example_input, quiet, tensor_io
from fer_edge.exporters.metadata import TS_EXTRA_FILE
from fer_edge.targets import TARGETS, Precision
from fer_edge.utils import atomic_path


def _with_image_input(model):
    """``model`` behind a ``forward(image)``: a trace takes its argument names from the Python signature."""
    import torch

    class ImageInput(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

        def forward(self, image):
            return self.model(image)

    return ImageInput(model).eval()


class TorchScriptExporter(Exporter):
    target = TARGETS["torchscript"]
    packages = ("torch",)

    def export(self, req: ExportRequest, precision: Precision, out_path: Path) -> list[ExportedFile]:
        import torch

        precision = Precision(precision)
        if precision is not Precision.fp32:
            raise ExportError(f"torchscript exports fp32 only, not {precision.value}")
        with quiet(), torch.no_grad():
            # torch's own check_trace re-traces (seconds); checking outputs at another batch size is
            # cheaper and also proves the batch axis is not baked in
            # traced through a wrapper whose argument is the manifest's input name: a caller may pass image=...
            traced = torch.jit.trace(_with_image_input(req.model), example_input(2), check_trace=False)
            x = example_input(3)
            diff = float((traced(x) - req.model(x)).abs().max())
        if not diff < 1e-4:
            raise ExportError(f"the traced model differs from the eager model (max |diff| {diff:.3g})")
        extra_files = {TS_EXTRA_FILE: json.dumps(req.metadata)}
        # saved into memory, then written from Python: torch's file writer, on a write error (a full disk), throws
        # from a C++ destructor and the process aborts (SIGABRT) with its temporary file left; a write error here is
        # an OSError like any other, and atomic_path removes the temporary file
        buf = io.BytesIO()
        with quiet():
            torch.jit.save(traced, buf, _extra_files=extra_files)
        with atomic_path(out_path) as tmp:
            try:
                tmp.write_bytes(buf.getbuffer())
            except OSError as e:
                if e.filename is None:  # a write error names no file: name the artifact
                    raise OSError(e.errno, e.strerror or str(e), str(out_path)) from None
                raise
        inputs, outputs = tensor_io(len(req.ckpt.labels))
        return [ExportedFile(out_path, inputs=inputs, outputs=outputs, extra={"exporter": "torch.jit.trace"})]

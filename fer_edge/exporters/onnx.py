"""ONNX export: ``torch.onnx.export`` with the torch.export-based (dynamo) exporter, opset 18.

Why dynamo: with torch 2.9+ it is the default and the TorchScript-based exporter is
deprecated (it warns on every call and leaves Identity nodes); the dynamo exporter here
gives a clean graph (BatchNorm folded into Conv, no warnings) that passes
``onnx.checker.check_model(full_check=True)``.

* FP32: input ``image`` float32 N x 1 x 48 x 48 (dynamic batch), output ``logits`` N x C.
* FP16: ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``
  (a graph conversion: weights and compute in float16, Cast nodes at the float32 input
  and output), then a topological re-sort (the converter appends the input Casts at the end).
* INT8: static QDQ quantization with ``onnxruntime.quantization``: ``quant_pre_process``
  (ONNX shape inference + graph optimisation; its symbolic shape inference, meant for
  transformers, is skipped: it failed on ``cbam_cnn``'s channel pooling with "Incomplete
  symbolic shape inference", and skipping it left small's INT8 agreement at 98.7%), then ``quantize_static`` with per-channel int8
  weights, uint8 activations (ONNX Runtime's recommended U8S8 for CPUs), calibrated on the
  calibration images with the chosen method (see :data:`CALIB_METHODS`). A weight used by two
  nodes (``cbam_cnn``'s channel-attention MLP runs on the average- and the max-pooled features)
  gets one copy per node before quantization (:func:`unshare_weights`): ONNX Runtime 1.32 cannot
  load a QDQ graph whose one int8 weight feeds two Gemm/Conv nodes when
  ``session.x64quantprecision`` is on ("Attempt to replace the existing tensor"), and fer-edge's
  runtime turns it on (exact U8S8 arithmetic on x86-64). The copies compute the same thing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_edge.errors import ExportError
from fer_edge.exporters.base import ExportedFile, Exporter, ExportRequest, example_input, quiet, scratch_dir, tensor_io
from fer_edge.targets import TARGETS, Precision
from fer_edge.utils import atomic_path

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
#: ``--calib-method`` values and the onnxruntime CalibrationMethod they select.
CALIB_METHODS: dict[str, str] = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
#: Chosen by measurement on FER2013 (see the README: MinMax vs Entropy vs Percentile).
DEFAULT_CALIB_METHOD = "minmax"
#: Most images per calibration batch fed to onnxruntime's calibrator.
CALIB_BATCH = 64


def calib_batch_size(n: int, most: int = CALIB_BATCH) -> int:
    """The largest batch size <= ``most`` that divides ``n``: onnxruntime's histogram calibrators
    (Entropy, Percentile) stack per-batch outputs and fail on a shorter last batch."""
    return next(b for b in range(min(most, max(n, 1)), 0, -1) if n % b == 0)


def strip_debug_metadata(proto) -> None:
    """Drop the exporter's per-node/value debug metadata (stack traces, module paths): size only."""
    g = proto.graph
    for coll in (g.node, g.input, g.output, g.value_info, g.initializer):
        for item in coll:
            if hasattr(item, "metadata_props"):
                del item.metadata_props[:]
    del g.metadata_props[:]
    del proto.metadata_props[:]


def topological_sort(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ExportError("ONNX graph has a cycle or an input no node produces")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def set_metadata(proto, metadata: dict[str, str]) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in metadata.items():
        if k in existing:
            existing[k].value = str(v)
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, str(v)


def _onnxscript_mismatch(e: ModuleNotFoundError) -> str:
    """Why torch's ONNX exporter could not import a part of onnxscript it calls."""
    import torch

    try:
        from importlib.metadata import version

        have = f"onnxscript {version('onnxscript')}"
    except Exception:  # noqa: BLE001 - only for the message
        have = "no onnxscript"
    return (f"torch {torch.__version__}'s ONNX exporter needs {e.name}, which {have} lacks: each torch release "
            "calls the onnxscript API of its own version; upgrade onnxscript (pip install -U onnxscript, or "
            "pip install -c constraints.txt -e . in a checkout)")


def fp32_proto(model):
    """The FP32 ONNX ModelProto of ``model`` (dynamic batch, checked), without fer-edge metadata."""
    import onnx
    import torch

    from fer_edge.utils import interrupts_deferred

    # deferred: a Ctrl-C inside the exporter can land in a weakref callback, which swallows it
    with interrupts_deferred(), quiet(), torch.no_grad():
        try:
            program = torch.onnx.export(
                model,
                (example_input(2),),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                opset_version=OPSET,
                optimize=True,
                verbose=False,
            )
        except ModuleNotFoundError as e:
            if not (e.name or "").startswith("onnxscript"):
                raise
            raise ExportError(_onnxscript_mismatch(e)) from e
    proto = program.model_proto
    strip_debug_metadata(proto)
    proto.producer_name = "fer-edge (torch.onnx dynamo)"
    onnx.checker.check_model(proto, full_check=True)
    return proto


class CalibrationReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over preprocessed calibration images."""

    def __init__(self, inputs: np.ndarray, input_name: str = INPUT_NAME, batch: int | None = None):
        self.inputs = inputs
        self.input_name = input_name
        self.batch = batch or calib_batch_size(len(inputs))
        self.rewind()

    def rewind(self) -> None:
        self._it = iter(range(0, len(self.inputs), self.batch))

    def get_next(self):
        i = next(self._it, None)
        if i is None:
            return None
        return {self.input_name: np.ascontiguousarray(self.inputs[i : i + self.batch], dtype=np.float32)}

    def __len__(self) -> int:
        return (len(self.inputs) + self.batch - 1) // self.batch


def make_reader(inputs: np.ndarray):
    """A CalibrationReader that is also a subclass of onnxruntime's CalibrationDataReader."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationReader, CalibrationDataReader):
        pass

    return _Reader(inputs)


#: onnxruntime calibrator settings per ``--calib-method``. ``quantize_static`` passes no bin
#: counts, and its Entropy default (128 bins, 128 quantized bins) leaves a single candidate
#: threshold, i.e. the MinMax range; here Entropy gets TensorRT's 2048 bins / 128 levels and
#: Percentile (99.999%) is two-sided (uint8 activations are asymmetric).
CALIB_SETTINGS: dict[str, dict] = {
    "minmax": {},
    "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
    "percentile": {"num_bins": 2048, "percentile": 99.999, "symmetric": False},
}


def _calibrate(pre: Path, inputs: np.ndarray, method: str, workdir: Path):
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(
        pre, None, augmented_model_path=str(workdir / f"augmented_{method}.onnx"),
        calibrate_method=getattr(CalibrationMethod, CALIB_METHODS[method]), extra_options=CALIB_SETTINGS[method],
    )
    calibrator.collect_data(make_reader(inputs))
    ranges = calibrator.compute_data()
    del calibrator
    return ranges


def calibration_ranges(pre: Path, inputs: np.ndarray, method: str, workdir: Path):
    """Activation ranges (onnxruntime ``TensorsData``) of the pre-processed model on ``inputs``.

    Histogram methods (entropy, percentile) are clamped to the observed min/max: ORT's entropy
    thresholds are symmetric around zero, which would waste half of the uint8 range on the
    non-negative outputs of ReLU layers.
    """
    from onnxruntime.quantization.calibrate import TensorData, TensorsData

    observed = _calibrate(pre, inputs, "minmax", workdir)
    if method == "minmax":
        return observed
    ranges = _calibrate(pre, inputs, method, workdir)
    clamped = {}
    for name, td in ranges.items():
        lo, hi = td.range_value
        if name in observed:
            olo, ohi = observed[name].range_value
            lo, hi = np.maximum(lo, olo).astype(lo.dtype), np.minimum(hi, ohi).astype(hi.dtype)
        clamped[name] = TensorData(lowest=lo, highest=hi)
    return TensorsData(ranges.calibration_method, clamped)


#: Operators whose weight (input 1) and bias (input 2) ``quantize_static`` quantizes.
WEIGHT_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def unshare_weights(model) -> int:
    """Give every weight/bias initializer of :data:`WEIGHT_OPS` used by several nodes one copy per
    further node (``<name>__use<k>``), in place; returns how many copies were added."""
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type in WEIGHT_OPS:
            for k in (1, 2):
                if k < len(node.input) and node.input[k] in inits:
                    uses.setdefault(node.input[k], []).append((node, k))
    added = 0
    for name, users in uses.items():
        for copy_no, (node, k) in enumerate(users[1:], start=1):
            dup = model.graph.initializer.add()
            dup.CopyFrom(inits[name])
            dup.name = f"{name}__use{copy_no}"
            node.input[k] = dup.name
            added += 1
    return added


def quantize_int8(fp32, calib_inputs: np.ndarray, method: str, workdir: Path):
    """Static QDQ INT8 ModelProto of the FP32 proto, calibrated on ``calib_inputs`` (shared weights
    unshared first, see :func:`unshare_weights`)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIB_METHODS:
        raise ExportError(f"unknown calibration method {method!r}; valid: {', '.join(CALIB_METHODS)}")
    src, pre, out = workdir / "fp32.onnx", workdir / "pre.onnx", workdir / "int8.onnx"
    cache = workdir / "ranges.json"
    onnx.save(fp32, str(src))
    with quiet(stderr=True):
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        pre_proto = onnx.load(str(pre))
        if unshare_weights(pre_proto):
            onnx.save(pre_proto, str(pre))
        save_tensors_data(calibration_ranges(pre, calib_inputs, method, workdir), cache)
        quantize_static(
            str(pre),
            str(out),
            None,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, CALIB_METHODS[method]),
            calibration_cache_path=str(cache),
        )
    proto = onnx.load(str(out))
    drop_unused_opset_imports(proto)
    return proto


def _node_domains(nodes, into: set[str]) -> None:
    """The domains of ``nodes`` and of the nodes in their subgraphs (If/Loop/Scan bodies)."""
    for n in nodes:
        into.add(n.domain)
        for a in n.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                _node_domains(g.node, into)


def drop_unused_opset_imports(proto) -> list[str]:
    """Remove the model's ``opset_import`` entries of domains no node uses (``quant_pre_process`` leaves about ten:
    ``ai.onnx.training``, ``com.microsoft.nchwc``, ``org.pytorch.aten``, ...); the default domain always stays.
    Returns the domains removed."""
    used: set[str] = {"", "ai.onnx"}
    _node_domains(proto.graph.node, used)
    for f in proto.functions:
        used.add(f.domain)
        _node_domains(f.node, used)
    keep = [o for o in proto.opset_import if o.domain in used]
    gone = [o.domain for o in proto.opset_import if o.domain not in used]
    if gone:
        del proto.opset_import[:]
        proto.opset_import.extend(keep)
    return gone


def save_proto(proto, path: Path) -> None:
    """Check, then write the ModelProto atomically, all weights embedded in the one file."""
    import onnx

    onnx.checker.check_model(proto, full_check=True)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)


class OnnxExporter(Exporter):
    target = TARGETS["onnx"]
    packages = ("onnx", "onnxscript", "onnxruntime")

    def _fp32(self, model):
        key = ("fp32", id(model))
        if key not in self._cache:
            self._cache[key] = fp32_proto(model)
        return self._cache[key]

    def export(self, req: ExportRequest, precision: Precision, out_path: Path) -> list[ExportedFile]:
        import onnx

        precision = Precision(precision)
        base = self._fp32(req.model)
        extra: dict = {"exporter": "torch.onnx.export(dynamo=True)", "opset": OPSET}
        if precision is Precision.fp32:
            proto = onnx.ModelProto()
            proto.CopyFrom(base)
        elif precision is Precision.fp16:
            from onnxruntime.transformers.float16 import convert_float_to_float16

            with quiet():
                proto = convert_float_to_float16(base, keep_io_types=True)
            topological_sort(proto.graph)
            extra["conversion"] = "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)"
        else:
            if req.calib is None:
                raise ExportError("int8 export needs calibration images (--calib-data)")
            method = str(req.options.get("calib_method") or DEFAULT_CALIB_METHOD)
            with scratch_dir(out_path) as work:
                proto = quantize_int8(base, req.calib.inputs, method, work)
            extra["quantization"] = {
                "tool": "onnxruntime.quantization.quantize_static",
                "format": "QDQ",
                "per_channel": True,
                "weights": "int8 (symmetric)",
                "activations": "uint8 (asymmetric)",
                "calibration_method": method,
                "calibrator_options": CALIB_SETTINGS.get(method, {}),
                "preprocess": "onnxruntime.quantization.shape_inference.quant_pre_process, then one copy of each "
                              "weight per node that uses it (unshare_weights)",
            }
        set_metadata(proto, req.metadata)
        save_proto(proto, out_path)
        inputs, outputs = tensor_io(len(req.ckpt.labels))
        return [ExportedFile(out_path, inputs=inputs, outputs=outputs, extra=extra)]

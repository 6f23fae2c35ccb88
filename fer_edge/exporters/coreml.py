"""Core ML export (``.mlpackage``, mlprogram) with coremltools.

Two packages per precision:

* ``<stem>_<precision>.mlpackage``: the app model. Input ``image``: a grayscale
  ``ct.ImageType`` 48x48 with ``scale = 1/(255*std)`` and ``bias = -mean/std`` (the training
  normalisation, so an iOS/macOS app hands a camera crop straight to Vision); a
  ``ct.ClassifierConfig`` over the labels, with softmax probabilities in
  ``classLabel_probs`` and the top class in ``classLabel``.
* ``<stem>_<precision>_logits.mlpackage``: float32 tensor ``image`` 1 x 1 x 48 x 48 (already
  normalised) -> float32 ``logits`` 1 x C at every precision (float16 programs cast inside; left to
  coremltools, FP16 and INT8 packages took and gave float16), for parity checks (what the ``coreml``
  runtime runs).

Precisions: FP32 (compute precision float32); FP16 (compute precision float16);
INT8 = FP16 compute with per-channel symmetric int8 weights
(``coremltools.optimize.coreml.linear_quantize_weights``). On macOS, INT8 also quantizes
activations (W8A8) with ``coremltools.optimize.coreml.experimental.linear_quantize_activations``
on the calibration images (deployment target iOS17/macOS14); that function calibrates by
running ``MLModel.predict``, which needs macOS, so on other systems INT8 is weights-only
(W8) and the manifest says so.

Conversion works on Linux; prediction needs macOS.
"""
from __future__ import annotations

import platform
import sys
from pathlib import Path

from fer_edge.constants import IMAGE_SIZE
from fer_edge.errors import ExportError
from fer_edge.exporters.base import (ExportedFile, Exporter, ExportRequest, example_input, quiet, replace_group,
                                     scratch_dir, tensor_io)
from fer_edge.runtimes._common import quiet_coremltools as _quiet_coremltools
from fer_edge.runtimes.coreml import LOGITS_SUFFIX
from fer_edge.targets import TARGETS, Precision
from fer_edge.utils import apply_umask_modes, interrupts_deferred

AUTHOR = "fer-edge developers"
LICENSE = "MIT (fer-edge); weights trained on FER2013, research use only"
#: Deployment targets: iOS16/macOS13 for float and weight-only int8, iOS17/macOS14 with int8 activations.
DEPLOYMENT = "iOS16"
DEPLOYMENT_W8A8 = "iOS17"


def logits_path(path: Path) -> Path:
    return path.with_name(path.stem + LOGITS_SUFFIX + path.suffix)


def activations_quantized_here() -> bool:
    """Whether INT8 here quantizes activations (W8A8, calibrated on images): only on macOS (see the module doc)."""
    return sys.platform == "darwin"


def _compiled_parts_missing(e: ImportError) -> str:
    """Why Core ML export cannot run without coremltools' compiled extensions, and what to do."""
    why = " ".join(f"{type(e).__name__}: {e}".split())
    if sys.platform in ("darwin", "linux"):
        fix = "reinstall coremltools (pip install --force-reinstall coremltools)"
    else:  # Windows: pip builds coremltools' source package, which leaves them out
        fix = (f"coremltools publishes no build for this platform ({platform.system() or sys.platform}) and its "
               "source package lacks them; export Core ML on macOS or Linux")
    return (f"Core ML export needs coremltools' compiled parts (libmilstoragepython, libmodelpackage), which are "
            f"missing here ({why}): {fix}")


def _import_coremltools(w8a8: bool = False):
    """``coremltools`` (with ``coremltools.optimize``, and its experimental API for W8A8), imported with Ctrl-C and
    SIGTERM held: coremltools wraps its own imports in bare ``except:`` clauses that swallow a KeyboardInterrupt
    (the export then ran to the end, exit status 0), and one landing in a lazy import of torch's (sympy) left that
    module half-initialised (a fake ``AttributeError`` later). The interrupt is raised once the imports are done.

    Its compiled extensions are imported too, so that a coremltools without them (the sdist pip builds where it has
    no wheel, e.g. Windows) is an :class:`ExportError` saying so before any work: coremltools swallows their
    absence and the conversion then failed at saving with ``RuntimeError: BlobWriter not loaded``."""
    _quiet_coremltools()
    with interrupts_deferred(), quiet():
        import coremltools as ct
        import coremltools.optimize  # noqa: F401
        import coremltools.optimize.coreml  # noqa: F401

        if w8a8:
            import coremltools.optimize.coreml.experimental  # noqa: F401
        try:
            import coremltools.libmilstoragepython  # noqa: F401  (the weights' BlobWriter)
            import coremltools.libmodelpackage  # noqa: F401  (.mlpackage writing)
        except ImportError as e:
            raise ExportError(_compiled_parts_missing(e)) from None
    return ct


class _Probabilities:
    """A torch module wrapping the classifier: softmax of the logits (built lazily: torch import)."""

    @staticmethod
    def wrap(model):
        import torch

        class Probabilities(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return torch.softmax(self.inner(x), dim=1)

        return Probabilities(model).eval()


def _describe(ml, req: ExportRequest, precision: Precision, variant: str) -> None:
    from fer_edge import __version__

    labels = ", ".join(req.ckpt.labels)
    ml.author = AUTHOR
    ml.license = LICENSE
    ml.version = __version__
    what = "class probabilities" if variant == "classifier" else "raw logits (for parity checks)"
    ml.short_description = (
        f"Facial-expression recognition ({req.ckpt.model_name}, {precision.value}) on a 48x48 grayscale "
        f"face crop; {what} over: {labels}."
    )
    ml.user_defined_metadata.update({k: str(v) for k, v in req.metadata.items()})
    ml.user_defined_metadata["variant"] = variant
    norm = req.ckpt.normalization
    if variant == "classifier":
        ml.input_description["image"] = (
            f"48x48 grayscale face crop (pixels are normalised inside: (p/255 - {norm.mean:.6g}) / {norm.std:.6g})"
        )
        ml.output_description["classLabel"] = "the most likely expression"
        ml.output_description["classLabel_probs"] = "softmax probability of every expression"
    else:
        ml.input_description["image"] = (
            f"float32 1x1x48x48, already normalised: (p/255 - {norm.mean:.6g}) / {norm.std:.6g}"
        )
        ml.output_description["logits"] = "logits, one per expression, in label order (no softmax)"


def _array_dtype(feature) -> dict:
    """``{"dtype": "float32"}`` for a multi-array feature (the manifest's spelling), nothing for others."""
    import coremltools as ct

    if feature.type.WhichOneof("Type") != "multiArrayType":
        return {}
    name = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(feature.type.multiArrayType.dataType)
    return {"dtype": name.lower()}


def inspect_package(path: str | Path) -> dict:
    """What a ``.mlpackage`` declares (readable on any OS): input kind, image format, labels, outputs, metadata."""
    _quiet_coremltools()
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    desc = spec.description
    inp = desc.input[0]
    kind = inp.type.WhichOneof("Type")
    info: dict = {
        "model_type": spec.WhichOneof("Type"),
        "specification_version": int(spec.specificationVersion),
        "input_name": inp.name,
        "input_kind": kind,
        "outputs": [{"name": o.name, "kind": o.type.WhichOneof("Type"), **_array_dtype(o)} for o in desc.output],
        "metadata": dict(desc.metadata.userDefined),
        "author": desc.metadata.author,
        "license": desc.metadata.license,
        "description": desc.metadata.shortDescription,
        "version": desc.metadata.versionString,
        "predicted_feature": desc.predictedFeatureName or None,
        "class_labels": None,
        "scale": None,
        "bias": None,
    }
    if kind == "imageType":
        it = inp.type.imageType
        space = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(it.colorSpace)
        info.update(color_space=space, width=int(it.width), height=int(it.height))
    elif kind == "multiArrayType":
        info["shape"] = [int(s) for s in inp.type.multiArrayType.shape]
        info.update(_array_dtype(inp))
    if info["model_type"] == "mlProgram":
        fn = spec.mlProgram.functions["main"]
        ops = list(fn.block_specializations[fn.opset].operations)
        consts = {}
        for op in ops:
            if op.type == "const" and "val" in op.attributes:
                consts[op.outputs[0].name] = op.attributes["val"]
        for op in ops:
            if op.type == "classify":
                vals = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                info["class_labels"] = [v.immediateValue.tensor.strings.values[0] for v in vals]
            if op.type in ("mul", "add") and op.outputs[0].name.startswith(inp.name + "__"):
                y = op.inputs["y"].arguments[0].name
                if y in consts:
                    t = consts[y].immediateValue.tensor
                    vals = list(t.floats.values) or list(t.doubles.values)
                    if vals:
                        info["scale" if op.type == "mul" else "bias"] = float(vals[0])
    return info


class CoreMLExporter(Exporter):
    target = TARGETS["coreml"]
    packages = ("coremltools",)

    def _traced(self, model, variant: str):
        key = (variant, id(model))
        if key not in self._cache:
            import torch

            net = _Probabilities.wrap(model) if variant == "classifier" else model
            # held like the conversion: torch imports sympy lazily while tracing, and an interrupt there left
            # sympy half-imported ("module 'sympy' has no attribute 'logic'") instead of stopping the export
            with interrupts_deferred(), quiet(), torch.no_grad():
                self._cache[key] = torch.jit.trace(net, example_input(1), check_trace=False)
        return self._cache[key]

    def _convert(self, req: ExportRequest, precision: Precision, variant: str, deployment: str):
        """The converted model; float16 conversions are cached (INT8 weights start from them)."""
        key = ("ml", variant, precision is Precision.fp32, deployment, id(req.model))
        if key not in self._cache:
            self._cache[key] = self._convert_uncached(req, precision, variant, deployment)
        return self._cache[key]

    def _convert_uncached(self, req: ExportRequest, precision: Precision, variant: str, deployment: str):
        import coremltools as ct

        norm = req.ckpt.normalization
        shape = (1, 1, IMAGE_SIZE, IMAGE_SIZE)
        if variant == "classifier":
            inputs = [ct.ImageType(
                name="image", shape=shape, color_layout=ct.colorlayout.GRAYSCALE,
                scale=1.0 / (255.0 * norm.std), bias=-norm.mean / norm.std,
            )]
            kwargs = {"classifier_config": ct.ClassifierConfig(list(req.ckpt.labels))}
        else:
            import numpy as np

            # float32 in and out at every precision, as the manifest says: left unset, a float16 program's
            # tensors became float16 (an app reading float32 from its output would read garbage)
            inputs = [ct.TensorType(name="image", shape=shape, dtype=np.float32)]
            kwargs = {"outputs": [ct.TensorType(name="logits", dtype=np.float32)]}
        compute = ct.precision.FLOAT32 if precision is Precision.fp32 else ct.precision.FLOAT16
        # Ctrl-C is held for the conversion, as for ONNX and OpenVINO: one landing inside ct.convert was lost
        with interrupts_deferred(), quiet(stderr=True):
            return ct.convert(
                self._traced(req.model, variant),
                inputs=inputs,
                convert_to="mlprogram",
                compute_precision=compute,
                minimum_deployment_target=getattr(ct.target, deployment),
                skip_model_load=sys.platform != "darwin",
                **kwargs,
            )

    def _activations(self, ml, req: ExportRequest, variant: str):
        """W8A8 on macOS: calibrate activation ranges on the calibration images."""
        import coremltools.optimize as cto
        from coremltools.optimize.coreml.experimental import OpActivationLinearQuantizerConfig, linear_quantize_activations

        if variant == "classifier":
            from PIL import Image

            samples = [{"image": Image.fromarray(img, mode="L")} for img in req.calib.images]
        else:
            samples = [{"image": req.calib.inputs[i : i + 1]} for i in range(len(req.calib))]
        config = cto.coreml.OptimizationConfig(global_config=OpActivationLinearQuantizerConfig(mode="linear_symmetric"))
        with interrupts_deferred(), quiet(stderr=True):
            return linear_quantize_activations(ml, config, samples)

    def _weights(self, ml):
        import coremltools.optimize as cto

        config = cto.coreml.OptimizationConfig(
            global_config=cto.coreml.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0
            )
        )
        with interrupts_deferred(), quiet(stderr=True):
            return cto.coreml.linear_quantize_weights(ml, config)

    @classmethod
    def output_paths(cls, out_path: Path) -> list[Path]:
        return [out_path, logits_path(out_path)]

    @classmethod
    def calibrates(cls, precision: Precision | str) -> bool:
        """INT8 uses calibration images only where activations are quantized (macOS); elsewhere it is W8."""
        return Precision(precision) is Precision.int8 and activations_quantized_here()

    def export(self, req: ExportRequest, precision: Precision, out_path: Path) -> list[ExportedFile]:
        precision = Precision(precision)
        w8a8 = precision is Precision.int8 and activations_quantized_here()
        if w8a8 and req.calib is None:  # weights-only int8 (off macOS) uses no calibration image
            raise ExportError("int8 export needs calibration images (--calib-data)")
        ct = _import_coremltools(w8a8)
        extra: dict = {
            "converter": f"coremltools {ct.__version__} (mlprogram, from torch.jit.trace)",
            "compute_precision": "float32" if precision is Precision.fp32 else "float16",
        }
        files: list[ExportedFile] = []
        moves: list[tuple[Path, Path]] = []
        fell_back: list[tuple[str, str]] = []  # (package, why) where activation quantization failed
        # Both packages are saved into a scratch folder and renamed into place together once both exist (the app
        # model last): an export stopped (Ctrl-C, a failed conversion) before the app model is written leaves no
        # `_logits` package behind, and an earlier export's pair is untouched until then.
        with scratch_dir(out_path) as work:
            for variant in ("logits", "classifier"):
                deployment = DEPLOYMENT
                ml = None
                notes = dict(extra)
                calibrated = False
                if w8a8:
                    try:
                        base = self._convert(req, precision, variant, DEPLOYMENT_W8A8)
                        ml = self._activations(base, req, variant)
                        deployment = DEPLOYMENT_W8A8
                        calibrated = True
                        notes["activation_quantization"] = ("int8 (linear_quantize_activations on the calibration "
                                                            "images)")
                    except Exception as e:  # experimental API: fall back to weights-only, recorded and warned about
                        why = " ".join(f"{type(e).__name__}: {e}".split())
                        notes["activation_quantization"] = f"failed, weights-only int8 instead: {why}"
                        fell_back.append((logits_path(out_path).name if variant == "logits" else out_path.name,
                                          why if len(why) <= 300 else why[:297] + "..."))
                elif precision is Precision.int8:
                    notes["activation_quantization"] = (
                        "not applied: coremltools' linear_quantize_activations calibrates by running MLModel.predict, "
                        "which needs macOS; this int8 model is weights-only (W8, float16 activations)"
                    )
                if ml is None:
                    ml = self._convert(req, precision, variant, deployment)
                if precision is Precision.int8:
                    ml = self._weights(ml)
                    notes["weight_quantization"] = "int8 per-channel symmetric (linear_quantize_weights)"
                    if not calibrated:
                        notes["calibration"] = ("none: weights-only int8 takes its scales from the weights; no "
                                                "calibration image was used")
                notes["minimum_deployment_target"] = deployment
                _describe(ml, req, precision, variant)
                path = out_path if variant == "classifier" else logits_path(out_path)
                tmp = work / path.name
                with quiet(stderr=True):
                    ml.save(str(tmp))
                apply_umask_modes(tmp)  # coremltools saves owner-only files: others could not open the package
                spec = self._spec(path, variant, req, notes)
                spec.uses_calibration = calibrated
                files.append(spec)
                moves.append((tmp, path))
            replace_group(moves)  # the logits package, then the app model (the artifact) last
        if fell_back:  # asked for W8A8 and got W8: never silent
            names = " and ".join(n for n, _ in fell_back)
            whys = "; ".join(dict.fromkeys(w for _, w in fell_back))
            files[1].warnings.append(
                f"coreml int8: quantizing the activations failed ({whys}), so {names} "
                f"{'is' if len(fell_back) == 1 else 'are'} weights-only int8 (W8, float16 activations; no calibration "
                "image used) instead of W8A8; export.activation_quantization in the manifest records why"
            )
        # the app model first in the list: it is the artifact; the logits package is its companion
        return [files[1], files[0]]

    @staticmethod
    def _spec(path: Path, variant: str, req: ExportRequest, extra: dict) -> ExportedFile:
        n = len(req.ckpt.labels)
        norm = req.ckpt.normalization
        if variant == "classifier":
            inputs = [{
                "name": "image", "type": "image", "color_layout": "GRAYSCALE",
                "shape": [1, 1, IMAGE_SIZE, IMAGE_SIZE],
                "scale": 1.0 / (255.0 * norm.std), "bias": -norm.mean / norm.std,
                "preprocessing": "built in: pixel * scale + bias",
            }]
            outputs = [
                {"name": "classLabel", "type": "string"},
                {"name": "classLabel_probs", "type": "dict[string, double]", "meaning": "softmax probabilities"},
            ]
            return ExportedFile(path, "main", inputs, outputs, extra)
        inputs, outputs = tensor_io(n, batch=1)
        return ExportedFile(path, "logits", inputs, outputs, extra)

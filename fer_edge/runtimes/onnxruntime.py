"""Run an ``.onnx`` artifact with ONNX Runtime, on any available execution provider."""
from __future__ import annotations

import numpy as np

from fer_edge.runtimes._common import as_input, check_artifact, device_name, device_or_default, package_available
from fer_edge.runtimes.base import Runtime

#: Providers listed by onnxruntime that are not local compute devices.
_NOT_DEVICES = ("AzureExecutionProvider",)
#: Session option that makes ONNX Runtime multiply quantized weights with exact U8U8 kernels instead of
#: U8S8 ones. On x86-64 CPUs without VNNI (SSE4.1, AVX2, AVX-512 without VNNI) the U8S8 kernels add
#: products in pairs into 16 bits, which saturate: measured on an AVX2 EPYC without VNNI, the shipped
#: small model's (71.11%) INT8 agreed with FP32 on 91.5% of PublicTest without the option and 99.0% with it
#: (nano's: 94.3% and 97.0%), the figures a VNNI CPU gives. ONNX Runtime's header names the overflow on those
#: CPUs but says the option is effective on every AVX2/AVX-512 CPU, and it does take effect on a VNNI CPU, where
#: U8S8 is exact anyway: on an AVX-512 VNNI Zen 5 it made the INT8 models 1.6x (nano) and 2.4x (small) slower
#: for bit-identical logits (``python -m fer_edge.benchmarks.ort_int8``). Hence ``exact_int8="auto"``: on only
#: where needed.
X64_QUANT_PRECISION = "session.x64quantprecision"


def _short(provider: str) -> str:
    return provider.removesuffix("ExecutionProvider").lower()


def session_config(exact_int8: bool | str = "auto") -> dict[str, str]:
    """The session config entries fer-edge sets for ``exact_int8`` (see :class:`OnnxRuntime`) on this CPU."""
    from fer_edge.cpu import int8_can_saturate_here
    from fer_edge.errors import ArtifactError

    if exact_int8 == "auto":
        exact = int8_can_saturate_here()
    elif isinstance(exact_int8, bool):
        exact = exact_int8
    else:
        raise ArtifactError(f"onnxruntime: exact_int8 must be 'auto', True or False, got {exact_int8!r}")
    return {X64_QUANT_PRECISION: "1" if exact else "0"}


class OnnxRuntime(Runtime):
    """``device``: an execution provider name (``CPUExecutionProvider``) or its short form (``cpu``, ``cuda``).

    Options: ``graph_optimization_level`` (``all``, ``extended``, ``basic``, ``disable``; default ``all``),
    ``provider_options`` (dict for the chosen provider), ``exact_int8``: ``"auto"`` (default) sets
    :data:`X64_QUANT_PRECISION` only where ONNX Runtime's fast INT8 kernels can saturate (x86 CPUs without
    VNNI, :func:`fer_edge.cpu.int8_can_saturate_here`), so INT8 models give the same answers on every CPU at
    the fastest exact speed; ``True`` sets it everywhere, ``False`` nowhere.
    """

    OPTIONS = frozenset(("exact_int8", "graph_optimization_level", "provider_options"))
    name = "onnxruntime"
    package = "onnxruntime"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return package_available("onnxruntime")

    @classmethod
    def devices(cls) -> list[str]:
        import onnxruntime as ort

        return [p for p in ort.get_available_providers() if p not in _NOT_DEVICES]

    @classmethod
    def known_devices(cls) -> list[str]:
        try:
            import onnxruntime as ort
        except ImportError:  # not installed: every name is only absent
            return []
        return [p for p in ort.get_all_providers() if p not in _NOT_DEVICES]

    @classmethod
    def resolve_device(cls, device: str | None) -> str:
        from fer_edge.errors import RuntimeUnavailableError, UnknownDeviceError

        device = device_or_default(device, "", cls.name)
        if not device:  # None or "": the default, as every runtime takes it
            return "CPUExecutionProvider"
        valid = cls.devices()
        for p in valid:
            if device.lower() in (p.lower(), _short(p)):  # the full name or its short form, in any case
                return p
        known = cls.known_devices()
        base = device_name(device)  # cuda:0: cuda's
        here = next((p for p in valid if base in (p.lower(), _short(p))), None)
        if here is not None:  # cuda:0 with CUDA here: ONNX Runtime names no device index (a provider option does)
            raise UnknownDeviceError(
                f"onnxruntime: device {device!r}: ONNX Runtime names its devices by execution provider, without an "
                f"index: use {_short(here)!r} ({here}; the GPU's number is its provider option device_id)")
        if known and not any(name in (p.lower(), _short(p)) for p in known for name in (device.lower(), base)):
            # a provider of no build: a typo
            raise UnknownDeviceError(
                f"onnxruntime: unknown execution provider {device!r} (its providers: "
                + ", ".join(_short(p) for p in known) + "); available here: "
                + ", ".join(f"{p} ({_short(p)})" for p in valid))
        raise RuntimeUnavailableError(
            f"onnxruntime: execution provider {device!r} is not available here; available: "
            + ", ".join(f"{p} ({_short(p)})" for p in valid)
        )

    @classmethod
    def settings_now(cls, **options) -> dict:
        return {"session_config": session_config(options.get("exact_int8", "auto"))}

    def __init__(self, path, device=None, threads=None, batch_hint=1, **options):
        super().__init__(path, None, threads, batch_hint, **options)
        import onnxruntime as ort

        from fer_edge.errors import ArtifactError

        self.device = self.resolve_device(device)
        check_artifact(self.path)
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = str(options.get("graph_optimization_level", "all")).lower()
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        if level not in levels:
            raise ArtifactError(f"onnxruntime: unknown graph_optimization_level {level!r}; valid: {', '.join(levels)}")
        so.graph_optimization_level = levels[level]
        self._level = level
        self._exact_int8 = options.get("exact_int8", "auto")
        self._session_config = session_config(self._exact_int8)
        for key, value in self._session_config.items():
            so.add_session_config_entry(key, value)
        providers: list = [(self.device, dict(options.get("provider_options") or {}))]
        if self.device != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ArtifactError(f"{self.path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from None
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run([self._output], {self._input: as_input(x)})[0], dtype=np.float32)

    def metadata(self) -> dict[str, str]:
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def describe(self) -> dict:
        import onnxruntime as ort

        return {
            **super().describe(),
            "providers": self.session.get_providers(),
            "graph_optimization_level": self._level,
            "session_config": dict(self._session_config),
            "exact_int8": self._exact_int8,
            "precision": self.metadata().get("precision"),
            "versions": {"onnxruntime": ort.__version__},
        }

"""Run an OpenVINO IR (``.xml`` + ``.bin``) artifact on any ``ov.Core().available_devices`` device."""
from __future__ import annotations

import functools
import threading

import numpy as np

from fer_edge.runtimes._common import as_input, check_artifact, check_device, device_or_default, package_available
from fer_edge.runtimes.base import Runtime

#: The inference precision hint pinned on CPU unless ``precision_hint`` says otherwise. On CPUs
#: with AVX-512-BF16/AMX the plugin's default is bf16, which changes FP32/FP16 numerics and can fail
#: to compile NNCF INT8 models ("No suitable implementations").
DEFAULT_CPU_PRECISION_HINT = "f32"


@functools.lru_cache(maxsize=1)
def ov_core():
    """The process's one ``openvino.Core``, created on first use and kept for the life of the process.

    Each Core loads its own CPU plugin, which gives the loading thread a new alternate signal stack
    and, when that Core is freed, restores the one it found. Cores freed in another order than created
    left the thread on a freed stack, and the next Ctrl-C or ``kill`` crashed the process with a
    segmentation fault (OpenVINO 2026.4, measured). One Core that is never freed cannot do that.
    """
    import openvino as ov

    return ov.Core()


class OpenVINORuntime(Runtime):
    """Options: ``precision_hint`` (``INFERENCE_PRECISION_HINT``: ``f32``, ``bf16``, ``f16`` or ``default``
    for the plugin's own choice; default ``f32`` on CPU, the plugin's choice elsewhere),
    ``performance_hint`` (``LATENCY``/``THROUGHPUT``; default LATENCY for ``batch_hint`` 1 else THROUGHPUT),
    ``config`` (extra compile properties)."""

    OPTIONS = frozenset(("performance_hint", "precision_hint", "config"))

    name = "openvino"
    package = "openvino"

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return package_available("openvino")

    @classmethod
    def devices(cls) -> list[str]:
        return list(ov_core().available_devices)

    @classmethod
    def known_devices(cls) -> list[str]:
        # OpenVINO's device plugins (GPU.1, NPU.0: a numbered one of several is the name before the dot)
        return ["CPU", "GPU", "NPU", "AUTO", "HETERO", "MULTI", "BATCH"]

    def __init__(self, path, device=None, threads=None, batch_hint=1, **options):
        super().__init__(path, device_or_default(device, "CPU", self.name), threads, batch_hint, **options)
        from fer_edge.errors import ArtifactError

        check_artifact(self.path)
        if not self.path.with_suffix(".bin").is_file():
            raise ArtifactError(f"{self.path}: its weights file {self.path.with_suffix('.bin').name} is missing")
        core = ov_core()
        self.device = check_device(self.device, list(core.available_devices), self.name, self.known_devices())
        try:
            self.model = core.read_model(str(self.path))
        except Exception as e:  # openvino raises RuntimeError subclasses
            raise ArtifactError(f"{self.path}: OpenVINO cannot read it ({type(e).__name__}: {e})") from None
        config: dict = {}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        config["PERFORMANCE_HINT"] = str(
            options.get("performance_hint") or ("LATENCY" if self.batch_hint <= 1 else "THROUGHPUT")
        ).upper()
        # run() makes one synchronous request at a time: THROUGHPUT's streams would split the threads between
        # requests never made, and each call would get one thread of --threads 2 (measured: one busy thread)
        config["NUM_STREAMS"] = 1
        hint = options.get("precision_hint")
        if hint is None and self.device.split(".")[0] == "CPU":
            hint = DEFAULT_CPU_PRECISION_HINT
        if hint and str(hint).lower() != "default":
            config["INFERENCE_PRECISION_HINT"] = str(hint).lower()
        config.update(options.get("config") or {})
        self.config = config
        try:
            self.compiled = core.compile_model(self.model, self.device, config)
            self._local = threading.local()  # each thread's infer request (_thread_request)
            self._local.request = self.compiled.create_infer_request()  # this thread's, made now: errors show here
        except Exception as e:
            raise ArtifactError(
                f"{self.path}: OpenVINO cannot compile it on {self.device} with {config} ({type(e).__name__}: {e})"
            ) from None
        self._output = self.compiled.outputs[0]
        self._core = core

    @property
    def precision_hint(self) -> str:
        """The ``INFERENCE_PRECISION_HINT`` in effect (read back from the compiled model)."""
        try:
            value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
            return value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        except Exception:  # not every device reports it
            return str(self.config.get("INFERENCE_PRECISION_HINT", "default"))

    def run(self, x: np.ndarray) -> np.ndarray:
        x = as_input(x)
        if not len(x):  # the CPU plugin refuses an empty batch; the other runtimes return 0 rows
            return np.zeros((0, int(self.compiled.outputs[0].get_partial_shape()[1].get_length())), np.float32)
        res = self._thread_request().infer({0: x})
        return np.array(res[self._output], dtype=np.float32, copy=True)

    def _thread_request(self):
        """This thread's infer request: one request is not thread-safe (a second thread's call failed with "Infer
        Request is busy", or overwrote the first's output before it was copied: wrong answers without a word)."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def metadata(self) -> dict[str, str]:
        from fer_edge.exporters.metadata import META_KEYS, OV_RT_SECTION

        out: dict[str, str] = {}
        for key in META_KEYS:
            if self.model.has_rt_info([OV_RT_SECTION, key]):
                out[key] = self.model.get_rt_info([OV_RT_SECTION, key]).astype(str)
        return out

    def describe(self) -> dict:
        import openvino as ov

        try:
            device_name = str(self._core.get_property(self.device, "FULL_DEVICE_NAME"))
        except Exception:
            device_name = self.device
        def compiled(key):  # what the compiled model uses, else what was asked
            try:
                return str(self.compiled.get_property(key))
            except Exception:
                return self.config.get(key)

        return {
            **super().describe(),
            "device_name": device_name,
            "precision_hint": self.precision_hint,
            "performance_hint": compiled("PERFORMANCE_HINT"),
            "inference_num_threads": compiled("INFERENCE_NUM_THREADS"),
            "num_streams": compiled("NUM_STREAMS"),
            "precision": self.metadata().get("precision"),
            "versions": {"openvino": ov.__version__},
        }

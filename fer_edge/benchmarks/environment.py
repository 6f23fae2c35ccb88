"""What this machine can run, and the environment fingerprint stored in every bench report.

:func:`describe_environment` never raises for a missing package or device: each probe
records what it found or why it found nothing. Heavy packages are imported only for
the runtimes being probed, and library versions are read from the installed
distributions' metadata (no import).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import sys

from fer_edge.cpu import _X86, VNNI_FLAGS, cpu_flags, proc_cpuinfo

#: Distributions whose versions a report records.
LIBRARIES = ("fer-edge", "torch", "torchvision", "numpy", "onnx", "onnxruntime", "openvino", "nncf",
             "coremltools", "psutil")

#: The runtimes ``fer-edge devices`` lists, in order (TorchScript shares PyTorch's devices).
PROBED_RUNTIMES = ("pytorch", "torchscript", "onnxruntime", "openvino", "coreml")

#: Core ML compute units (``coremltools.ComputeUnit`` member names), in the order rows use.
COREML_COMPUTE_UNITS = ("CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE", "ALL")


# --- CPU ----------------------------------------------------------------------
def _sysctl(name: str) -> str:
    import subprocess

    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        return ""


def cpu_model() -> str:
    info = proc_cpuinfo()
    for key in ("model name", "Hardware", "Processor", "cpu model"):
        if info.get(key):
            return info[key]
    if sys.platform == "darwin":
        brand = _sysctl("machdep.cpu.brand_string")
        if brand:
            return brand
    return platform.processor() or platform.machine() or "unknown"


def cpu_clock_mhz() -> tuple[float | None, str]:
    """(clock in MHz, where it came from): psutil's max frequency, else /proc/cpuinfo's ``cpu MHz``."""
    try:
        import psutil

        f = psutil.cpu_freq()
        if f is not None and f.max:
            return float(f.max), "psutil.cpu_freq().max"
        if f is not None and f.current:
            return float(f.current), "psutil.cpu_freq().current"
    except Exception:
        pass
    info = proc_cpuinfo()
    if info.get("cpu MHz"):
        try:
            return float(info["cpu MHz"]), "/proc/cpuinfo cpu MHz"
        except ValueError:
            pass
    if sys.platform == "darwin":
        hz = _sysctl("hw.cpufrequency_max") or _sysctl("hw.cpufrequency")
        if hz.isdigit():
            return int(hz) / 1e6, "sysctl hw.cpufrequency"
    return None, "unknown"


def simd_isa(flags: set[str] | None = None) -> str:
    flags = cpu_flags() if flags is None else flags
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2+fma"
    if "avx" in flags:
        return "avx"
    if "asimd" in flags or "neon" in flags:
        return "neon"
    if "sse2" in flags:
        return "sse2"
    return "unknown"


def physical_cores() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
        if n:
            return int(n)
    except Exception:
        pass
    return os.cpu_count() or 1


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, e.g. a container's CPU set)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(cpu: dict | None = None) -> int:
    """Threads a bench gives each runtime by default: the physical cores this process may use (of ``cpu``, a
    report's ``environment.cpu`` with ``physical_cores`` and ``usable_cores``; None: this machine)."""
    if cpu is None:
        return max(1, min(physical_cores(), usable_cores()))
    cores = [c for c in (cpu.get("physical_cores"), cpu.get("usable_cores")) if isinstance(c, int)]
    return max(1, min(cores)) if cores else 0


def memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        return None


# --- libraries and runtimes ----------------------------------------------------
def library_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _registry_availability(name: str) -> tuple[bool, str] | None:
    """The runtime registry's own verdict when that runtime is registered, else None."""
    try:
        from fer_edge.runtimes import get_runtime

        return tuple(get_runtime(name).available())  # type: ignore[return-value]
    except Exception:
        return None


def _probe_pytorch() -> dict:
    try:
        import torch
    except ImportError:
        return {"available": False, "reason": "package torch missing", "devices": []}
    n_threads = torch.get_num_threads()
    devices = [{"name": "cpu", "full_name": cpu_model(),
                "detail": f"{n_threads} thread{'s' if n_threads != 1 else ''}, {torch.backends.cpu.get_cpu_capability()}"}]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            devices.append({"name": "cuda" if i == 0 else f"cuda:{i}", "full_name": p.name,
                            "detail": f"{p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}"})
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append({"name": "mps", "full_name": "Apple Metal (MPS)", "detail": ""})
    return {"available": True, "reason": "", "devices": devices}


def _probe_onnxruntime() -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"available": False, "reason": "package onnxruntime missing", "devices": []}
    from fer_edge.runtimes.onnxruntime import X64_QUANT_PRECISION, session_config

    exact = session_config("auto")[X64_QUANT_PRECISION] == "1"
    cpu_detail = (f"INT8: exact U8U8 kernels ({X64_QUANT_PRECISION}=1; x86 without VNNI)" if exact
                  else "INT8: fast U8S8 kernels, exact on this CPU (VNNI or not x86)")
    devices = []
    for p in ort.get_available_providers():
        detail = {"AzureExecutionProvider": "remote (Azure) endpoint provider, not a local device",
                  "CPUExecutionProvider": cpu_detail}.get(p, "")
        devices.append({"name": p, "full_name": cpu_model() if p == "CPUExecutionProvider" else p, "detail": detail})
    return {"available": True, "reason": "", "devices": devices, "build_device": ort.get_device()}


def _probe_openvino() -> dict:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return {"available": False, "reason": "package openvino missing", "devices": []}
    from fer_edge.runtimes.openvino import ov_core

    core = ov_core()
    devices = []
    for d in core.available_devices:
        try:
            full = str(core.get_property(d, "FULL_DEVICE_NAME"))
        except Exception as e:  # a plugin that cannot be queried
            full = f"? ({type(e).__name__})"
        detail = ""
        try:
            detail = "capabilities: " + ", ".join(map(str, core.get_property(d, "OPTIMIZATION_CAPABILITIES")))
        except Exception:
            pass
        devices.append({"name": d, "full_name": full, "detail": detail})
    return {"available": True, "reason": "", "devices": devices}


def _probe_coreml() -> dict:
    if sys.platform != "darwin":
        return {"available": False, "reason": "needs macOS", "devices": []}
    try:
        import coremltools as ct
    except ImportError:
        return {"available": False, "reason": "package coremltools missing", "devices": []}
    names = [u for u in COREML_COMPUTE_UNITS if u in ct.ComputeUnit.__members__]
    return {"available": True, "reason": "", "devices": [{"name": u, "full_name": f"Core ML compute units {u}",
                                                          "detail": platform.mac_ver()[0]} for u in names]}


_PROBES = {
    "pytorch": _probe_pytorch,
    "torchscript": _probe_pytorch,
    "onnxruntime": _probe_onnxruntime,
    "openvino": _probe_openvino,
    "coreml": _probe_coreml,
}


def probe_runtime(name: str) -> dict:
    """``{"available", "reason", "devices": [{"name", "full_name", "detail"}]}`` for one runtime."""
    try:
        out = _PROBES[name]()
    except Exception as e:  # a probe must never take the listing down
        out = {"available": False, "reason": f"probe failed: {type(e).__name__}: {e}", "devices": []}
    verdict = _registry_availability(name)
    if verdict is not None and not verdict[0]:
        out = {**out, "available": False, "reason": verdict[1] or out.get("reason", ""), "devices": []}
    return out


def describe_environment(runtimes: tuple[str, ...] | list[str] = PROBED_RUNTIMES) -> dict:
    """This machine: host, OS, CPU, memory, library versions and every runtime's devices.

    Also the bench report's environment fingerprint: ``fingerprint`` hashes the fields
    that make timings comparable (host, CPU, core count, OS, library versions).
    """
    flags = cpu_flags()
    mhz, mhz_source = cpu_clock_mhz()
    mem = memory_bytes()
    env = {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "system": platform.system(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "cpu": {
            "model": cpu_model(),
            "physical_cores": physical_cores(),
            "logical_cores": os.cpu_count() or 1,
            "usable_cores": usable_cores(),
            "clock_mhz": mhz,
            "clock_source": mhz_source,
            "isa": simd_isa(flags),
            "flags": recorded_flags(flags),
        },
        "memory_gb": round(mem / 2**30, 2) if mem else None,
        "libraries": library_versions(),
        "runtimes": {name: probe_runtime(name) for name in runtimes},
    }
    key = {k: env[k] for k in ("hostname", "os", "arch", "libraries")}
    key["cpu"] = {k: env["cpu"][k] for k in ("model", "physical_cores", "logical_cores", "usable_cores")}
    env["fingerprint"] = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return env


#: The /proc/cpuinfo flags an environment records (``cpu.flags``): the SIMD ones that choose kernels.
RECORDED_FLAGS = r"avx.*|fma|f16c|sse4_2|asimd.*|neon|amx.*|sve.*|.*vnni.*"


def recorded_flags(flags) -> list[str]:
    """The flags of ``flags`` an environment records (:data:`RECORDED_FLAGS`), sorted."""
    return sorted(f for f in flags if re.fullmatch(RECORDED_FLAGS, f))


def int8_saturates(env: dict) -> bool | None:
    """Whether INT8 u8 x s8 sums can saturate on the CPU an environment (``describe_environment``'s, or a
    report's ``environment``) describes: True on x86 without VNNI, False with VNNI or off x86, None when it records
    neither its architecture nor flags (as :func:`fer_edge.cpu.int8_can_saturate_here` decides for this CPU)."""
    cpu = env.get("cpu") or {}
    arch = str(env.get("arch") or "").lower()
    flags = set(cpu.get("flags") or [])
    if arch and arch not in _X86:
        return False
    if flags & VNNI_FLAGS:
        return False
    if not arch or not flags:
        return None
    return True


def isa_text(env: dict) -> str:
    """``avx2+fma, no VNNI`` / ``avx512, VNNI`` / ``neon``: a CPU's SIMD level, and (on x86) whether INT8 sums can
    saturate there (no VNNI), from an environment's ``cpu``."""
    isa = (env.get("cpu") or {}).get("isa") or "unknown ISA"
    sat = int8_saturates(env)
    if sat is None or str(env.get("arch") or "").lower() not in _X86:
        return isa
    return f"{isa}, {'no VNNI' if sat else 'VNNI'}"


def cpu_identity(env: dict) -> tuple:
    """What tells two machines' CPUs apart in their environments: host, architecture, CPU model, recorded flags and
    core counts (not the clock, which psutil reads as the current one, nor library versions: a machine whose
    onnxruntime was upgraded between two reports is still the same machine)."""
    cpu = env.get("cpu") or {}
    return (env.get("hostname"), env.get("arch"), cpu.get("model"), tuple(sorted(cpu.get("flags") or [])),
            cpu.get("physical_cores"), cpu.get("logical_cores"))


def machine_label(env: dict, earlier: list[dict] | tuple = ()) -> str:
    """``hostname (CPU model)``: how a merged report names the machine a report came from.

    ``earlier``: the environments of the reports merged before this one. A virtual machine may name its CPU by a
    family only ("AMD EPYC"), so two different CPUs can read alike: when the first of ``earlier`` with this label
    has another CPU (:func:`cpu_identity`: other flags or cores), the label also names the ISA (``vm (AMD EPYC;
    avx512, VNNI)``), and where that reads alike too, a short hash of the CPU's identity (``, CPU 1a2b3c``), so two
    CPUs are never taken for one machine's two reports (``#2``)."""
    cpu = (env.get("cpu") or {}).get("model") or "unknown CPU"
    host = env.get("hostname") or "unknown host"
    label = f"{host} ({cpu})"
    me = cpu_identity(env)
    first = next((e for e in earlier if machine_label(e) == label), None)
    if first is None or cpu_identity(first) == me:
        return label
    label = f"{host} ({cpu}; {isa_text(env)})"
    if isa_text(first) == isa_text(env):
        label = f"{label[:-1]}, CPU {hashlib.sha256(json.dumps(me, default=str).encode()).hexdigest()[:6]})"
    return label


#: Per runtime, the keys of a row's ``runtime_info`` that choose its kernels (what it computes, not how fast it is
#: asked to go), and the precisions they matter for (None: all).
KERNEL_SETTINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "onnxruntime": (("session_config",), ("int8",)),
    "openvino": (("precision_hint",), None),
}


def _kernel_text(runtime: str, info: dict) -> str:
    """How a row's kernel settings (:data:`KERNEL_SETTINGS`) read in a warning."""
    if runtime == "onnxruntime":
        from fer_edge.runtimes.onnxruntime import X64_QUANT_PRECISION

        value = (info.get("session_config") or {}).get(X64_QUANT_PRECISION)
        if value == "1":
            return f"the exact U8U8 kernels ({X64_QUANT_PRECISION}=1: x86 without VNNI)"
        if value == "0":
            return f"the fast U8S8 kernels ({X64_QUANT_PRECISION}=0)"
        return "ONNX Runtime's default kernels (no session config recorded)"
    if runtime == "openvino" and "precision_hint" in info:
        return f"INFERENCE_PRECISION_HINT {info.get('precision_hint')}"
    return ", ".join(f"{k} {info.get(k)!r}" for k in KERNEL_SETTINGS.get(runtime, ((), None))[0])


def kernel_warnings(machines: list[dict], rows: list[dict]) -> list[str]:
    """Warnings for a merge of several machines' reports whose rows of one runtime and precision ran other
    arithmetic on different machines, so their latencies (and answers) are not the same computation:

    * ONNX Runtime INT8 rows whose ``runtime_info.session_config`` differs (``session.x64quantprecision`` 1: the
      exact U8U8 kernels fer-edge picks on x86 without VNNI; 0: the fast U8S8 ones);
    * OpenVINO rows whose ``precision_hint`` differs (f32 against bf16);
    * OpenVINO INT8 rows of machines of which one's INT8 sums can saturate (x86 without VNNI) and another's cannot:
      OpenVINO has no switch for it, its kernels differ with the CPU.

    ``machines``: ``{"machine", "environment"}`` in merge order (named M1, M2, ...); ``rows``: rows with
    ``machine``, ``runtime``, ``precision`` and ``runtime_info``. One line per runtime and precision; [] when none
    differ (or one machine)."""
    names = {m["machine"]: f"M{i}" for i, m in enumerate(machines, 1)}
    envs = {m["machine"]: m.get("environment") or {} for m in machines}
    seen: dict[tuple[str, str], dict[str, str]] = {}  # (runtime, precision) -> machine -> text
    for r in rows:
        runtime, precision, machine = r.get("runtime"), str(r.get("precision") or ""), r.get("machine")
        if runtime not in KERNEL_SETTINGS or machine not in names:
            continue
        keys, precisions = KERNEL_SETTINGS[runtime]
        info = r.get("runtime_info") or {}
        if precisions is not None and precision not in precisions:
            continue
        if not isinstance(info, dict) or not any(k in info for k in keys):
            continue
        seen.setdefault((runtime, precision), {}).setdefault(machine, _kernel_text(runtime, info))
    out = []
    for (runtime, precision), texts in seen.items():
        if len(set(texts.values())) > 1:
            listed = "; ".join(f"{names[m]}'s ran {t}" for m, t in sorted(texts.items(), key=lambda x: names[x[0]]))
            out.append(f"{runtime} {precision}: {listed}: their latencies are not the same computation (and their "
                       "answers may differ)")
    ov = sorted({r["machine"] for r in rows if r.get("runtime") == "openvino" and r.get("precision") == "int8"
                 and r.get("machine") in names}, key=lambda m: names[m])
    sat = {m: int8_saturates(envs[m]) for m in ov}
    if len({v for v in sat.values() if v is not None}) > 1:
        listed = "; ".join(f"{names[m]}'s on " + ("x86 without VNNI (its INT8 sums can saturate)" if v
                                                 else "a CPU with VNNI or not x86") for m, v in sat.items()
                           if v is not None)
        out.append(f"openvino int8: {listed}: OpenVINO runs other INT8 kernels on each, so their latencies are not "
                   "the same computation (and their answers may differ)")
    return out


def cpu_record() -> dict:
    """This machine's CPU as an export manifest's validation entries record it (the machine class a parity gate's
    pass or fail belongs to): ``model``, ``arch``, ``isa``, ``flags`` (the SIMD ones), ``vnni`` and
    ``int8_can_saturate`` (x86 without VNNI: ONNX Runtime then runs its exact INT8 kernels, OpenVINO's INT8 sums
    can saturate; :func:`fer_edge.cpu.int8_can_saturate_here`)."""
    from fer_edge.cpu import int8_can_saturate_here

    flags = cpu_flags()
    return {"model": cpu_model(), "arch": platform.machine(), "isa": simd_isa(flags), "flags": recorded_flags(flags),
            "vnni": bool(flags & VNNI_FLAGS), "int8_can_saturate": int8_can_saturate_here()}


if __name__ == "__main__":
    from fer_edge.benchmarks import not_a_script

    raise SystemExit(not_a_script("environment"))

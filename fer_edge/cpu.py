"""The host CPU's feature flags, and what they mean for INT8 arithmetic on it.

Shared by the environment fingerprint (:mod:`fer_edge.benchmarks.environment`), OpenVINO's export
(NNCF's overflow fix) and ONNX Runtime's sessions (``session.x64quantprecision``).
"""
from __future__ import annotations

import platform
import sys
from functools import lru_cache
from pathlib import Path

#: /proc/cpuinfo flags of the x86 dot-product instructions (AVX-512 VNNI, AVX-VNNI) that multiply
#: u8 x s8 into 32-bit sums, so INT8 kernels built on them cannot saturate.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx512vnni", "avx_vnni"})
_X86 = ("x86_64", "amd64", "i386", "i686")


def proc_cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo (empty off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        k, _, v = line.partition(":")
        out.setdefault(k.strip(), v.strip())
    return out


#: ``torch.cpu.get_capabilities()`` keys whose /proc/cpuinfo name differs (the rest are spelt alike).
_TORCH_FLAG_NAMES = {"avx512_f": "avx512f", "avx512_cd": "avx512cd", "avx512_dq": "avx512dq", "avx512_bw": "avx512bw",
                     "avx512_vl": "avx512vl", "avx512_ifma": "avx512ifma", "avx512_vbmi": "avx512vbmi",
                     "fma3": "fma", "neon": "asimd"}


@lru_cache(maxsize=None)
def torch_cpu_flags() -> frozenset[str]:
    """The CPU's flags as PyTorch's cpuinfo reads them (CPUID, so also where there is no /proc/cpuinfo: Windows,
    macOS), in /proc/cpuinfo's names; empty where torch cannot tell. ``torch.cpu.get_capabilities()`` (torch 2.9 on)
    lists every flag; older torch only answers for VNNI, AVX-512 and AVX2 (private helpers, hence the guards)."""
    try:
        import torch
    except Exception:
        return frozenset()
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            return frozenset(_TORCH_FLAG_NAMES.get(k, k) for k, v in caps().items() if v is True)
        except Exception:
            pass
    flags: set[str] = set()
    for helper, names in (("_is_vnni_supported", {"avx512_vnni"}), ("_is_avx512_supported", {"avx512f"}),
                          ("_is_avx2_supported", {"avx2"})):
        try:
            if getattr(torch.cpu, helper)():
                flags |= names
        except Exception:
            pass
    if not flags & {"avx512f", "avx2"}:  # ATen's kernel level: AVX2 and AVX512 both need FMA3
        try:
            level = torch.backends.cpu.get_cpu_capability()
        except Exception:
            level = ""
        flags |= {"AVX512": {"avx512f", "avx2", "fma"}, "AVX2": {"avx2", "fma"}}.get(level, set())
    return frozenset(flags)


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo names them. Where /proc/cpuinfo gives none (Windows, macOS), those
    PyTorch reads (:func:`torch_cpu_flags`); empty where neither can tell."""
    info = proc_cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    if sys.platform == "darwin" and platform.machine() == "arm64":
        flags.update({"neon", "asimd", "fma"})
    elif not flags:
        flags = set(torch_cpu_flags())
    return flags


def int8_can_saturate_here() -> bool:
    """True on an x86 CPU not known to have VNNI: there the u8 x s8 INT8 kernels of ONNX Runtime and
    OpenVINO add products in pairs into 16 bits, which can saturate. An x86 CPU whose flags neither /proc/cpuinfo
    nor PyTorch can read counts as one without VNNI (the safe side: exact but slower arithmetic)."""
    if platform.machine().lower() not in _X86:
        return False
    return not cpu_flags() & VNNI_FLAGS

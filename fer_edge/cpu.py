"""The host CPU's feature flags, and what they mean for INT8 arithmetic on it.

Shared by the environment fingerprint (:mod:`fer_edge.benchmarks.environment`), OpenVINO's export
(NNCF's overflow fix) and ONNX Runtime's sessions (``session.x64quantprecision``).
"""
from __future__ import annotations

import platform
import sys
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


def cpu_flags() -> set[str]:
    """The CPU's feature flags as /proc/cpuinfo names them (empty where unknown, e.g. x86 macOS or Windows)."""
    info = proc_cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    if sys.platform == "darwin" and platform.machine() == "arm64":
        flags.update({"neon", "asimd", "fma"})
    return flags


def int8_can_saturate_here() -> bool:
    """True on an x86 CPU not known to have VNNI: there the u8 x s8 INT8 kernels of ONNX Runtime and
    OpenVINO add products in pairs into 16 bits, which can saturate. An x86 CPU whose flags cannot be
    read counts as one without VNNI (the safe side: exact but slower arithmetic)."""
    if platform.machine().lower() not in _X86:
        return False
    return not cpu_flags() & VNNI_FLAGS

"""Latency statistics, the Pareto front, and the compute-limit (roofline-style) estimate."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fer_edge.benchmarks.schema import LATENCY_KEYS


def latency_summary(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """mean, std, min, p50, p90, p99, max in milliseconds of per-call times in nanoseconds."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    out = {
        "mean": float(ms.mean()),
        "std": float(ms.std(ddof=1)) if ms.size > 1 else 0.0,
        "min": float(ms.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "max": float(ms.max()),
    }
    return out


def p50_spread_pct(rounds_ns: Sequence[Sequence[int]]) -> float | None:
    """Largest relative deviation (%) of a round's median from the median of all samples.

    A small value says the p50 is stable: the rounds, taken at different times in the
    interleaved order, agree. None with fewer than two non-empty rounds.
    """
    rounds = [np.asarray(r, dtype=np.float64) for r in rounds_ns if len(r)]
    if len(rounds) < 2:
        return None
    overall = float(np.median(np.concatenate(rounds)))
    if overall <= 0:
        return None
    return float(max(abs(float(np.median(r)) - overall) for r in rounds) / overall * 100.0)


def pareto_front(latency: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower latency, higher accuracy).

    Sorted by latency. Ties: of equal points the first is kept.
    """
    pts = sorted(range(len(latency)), key=lambda i: (latency[i], -accuracy[i], i))
    front: list[int] = []
    best = -np.inf
    for i in pts:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front


def pareto_eligible(row: dict) -> bool:
    """Whether a bench row may be on a latency/accuracy Pareto front: the one rule every front of bench rows uses.

    Only rows that passed the parity gate, or have no gate verdict (the PyTorch reference
    rows, rows of reports that predate the gate), can be on it. A row that failed the gate
    (status ``parity-failed``, or ``parity_failures`` recorded, even with ``--no-parity-gate``)
    gives other answers than its checkpoint: its speed is not a trade-off to offer, so it is
    drawn but never on the front.
    """
    return row.get("status") != "parity-failed" and not row.get("parity_failures")


# --- compute limit --------------------------------------------------------------
#: Peak fp32 FLOP per cycle per core for each SIMD level, and the assumption behind it.
PEAK_FLOP_PER_CYCLE: dict[str, tuple[int, str]] = {
    "avx512": (64, "AVX-512 FMA fp32: 2 FMA units x 16 lanes x 2 FLOP = 64 FLOP/cycle/core "
                   "(cores that split 512-bit ops into two 256-bit halves reach half of that)"),
    "avx2+fma": (32, "AVX2 FMA fp32: 2 FMA units x 8 lanes x 2 FLOP = 32 FLOP/cycle/core"),
    "avx": (16, "AVX fp32 without FMA: 1 add + 1 mul unit x 8 lanes = 16 FLOP/cycle/core"),
    "neon": (16, "NEON fp32: 2 FMA units x 4 lanes x 2 FLOP = 16 FLOP/cycle/core "
                 "(Apple performance cores have 4 FMA units: 32)"),
    "sse2": (8, "SSE2 fp32: 1 add + 1 mul unit x 4 lanes = 8 FLOP/cycle/core"),
}


def int8_speedup(flags) -> tuple[int, str]:
    """Peak int8 ops per cycle relative to fp32 FLOP per cycle, and why."""
    flags = set(flags or ())
    if flags & {"avx512_vnni", "avx512vnni", "avx_vnni"}:
        return 4, "int8 with VNNI (VPDPBUSD: 4 byte-MACs per 32-bit lane per instruction) = 4x the fp32 rate"
    return 2, "int8 without VNNI (VPMADDUBSW/VPMADDWD pairs) = 2x the fp32 rate"


def compute_limit(macs_per_image: int, ips: float, cores: int, env: dict, precision: str = "fp32") -> dict | None:
    """How far a measured throughput is from the CPU's peak arithmetic rate at the row's precision.

    achieved = 2 x MACs per image x images/s; peak = cores x op/cycle x clock, where the
    op/cycle is the fp32 FMA rate, times the int8 factor of :func:`int8_speedup` for
    ``int8`` rows (fp16 runs at the fp32 rate on CPUs without native fp16 arithmetic).
    None when the clock or the SIMD level is unknown.

    The clock is the environment's ``clock_mhz``: psutil's maximum frequency where the OS
    reports one, else the current one (``clock_source`` says which). Many VMs report no maximum,
    and their current clock is the base clock, below the boost clock the cores really run at: the
    peak is then too low, and the measured rate can exceed it. That is never given as a fraction
    over 100%: ``fraction_of_peak`` is None, ``peak_too_low`` is True and ``clock_needed_mhz`` is the
    clock at which the assumed op/cycle would give the measured rate (see :func:`peak_text`).
    """
    cpu = env.get("cpu") or {}
    isa = cpu.get("isa") or "unknown"
    mhz = cpu.get("clock_mhz")
    if isa not in PEAK_FLOP_PER_CYCLE or not mhz or not macs_per_image or not ips:
        return None
    per_cycle, assumption = PEAK_FLOP_PER_CYCLE[isa]
    if precision == "int8" and isa.startswith("avx"):
        factor, why = int8_speedup(cpu.get("flags"))
        per_cycle, assumption = per_cycle * factor, f"{assumption}; {why}"
    cores = max(1, int(cores))
    peak = cores * per_cycle * float(mhz) * 1e6
    achieved = 2.0 * macs_per_image * ips
    too_low = achieved > peak
    return {
        "macs_per_image": int(macs_per_image),
        "throughput_ips": float(ips),
        "achieved_gflops": achieved / 1e9,
        "peak_gflops": peak / 1e9,
        "fraction_of_peak": None if too_low else achieved / peak,
        "peak_too_low": too_low,
        "clock_needed_mhz": achieved / (cores * per_cycle) / 1e6,
        "cores": cores,
        "clock_mhz": float(mhz),
        "clock_source": cpu.get("clock_source", ""),
        "isa": isa,
        "flop_per_cycle_per_core": per_cycle,
        "assumption": f"{assumption}; {cores} core(s) at {float(mhz):.0f} MHz ({cpu.get('clock_source', '?')})",
        "min_time_per_image_us": 2.0 * macs_per_image / peak * 1e6,
    }


def peak_text(cl: dict) -> str:
    """``"41.2% of a 166.2 GFLOP/s peak"``, or, when the measured rate is above the assumed peak (a report of
    any version), why that peak is too low instead of a percentage over 100%."""
    achieved, peak = float(cl["achieved_gflops"]), float(cl["peak_gflops"])
    if achieved <= peak and peak > 0:
        return f"{100 * achieved / peak:.1f}% of a {peak:.1f} GFLOP/s peak"
    mhz = cl.get("clock_mhz")
    needed = cl.get("clock_needed_mhz")
    if needed is None and mhz:
        needed = float(mhz) * achieved / peak
    clock = (f"{float(mhz):.0f} MHz" + (f" from {cl['clock_source']}" if cl.get("clock_source") else "")
             if mhz else "the reported clock")
    per_cycle = cl.get("flop_per_cycle_per_core")
    need = (f"; the measured rate needs at least {float(needed):.0f} MHz"
            + (f" at {per_cycle} FLOP/cycle/core" if per_cycle else "")) if needed else ""
    return (f"above the assumed {peak:.1f} GFLOP/s peak, so that peak estimate is too low ({clock} is probably "
            f"below the boost clock the cores run at{need}): no fraction of peak is given")


if __name__ == "__main__":
    from fer_edge.benchmarks import not_a_script

    raise SystemExit(not_a_script("stats"))

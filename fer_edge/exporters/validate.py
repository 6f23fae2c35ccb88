"""Validation: run an artifact in its runtime on held-out images and gate it against PyTorch FP32."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_edge import parity
from fer_edge.targets import Precision, Target

PASSED = "passed"
FAILED = "failed"
NOT_VALIDATED = "not validated"
#: Images per runtime call during validation.
VAL_BATCH = 256
#: Threads the artifact's runtime gets during validation, by (runtime, precision); the others get the runtime's
#: default (all cores). OpenVINO INT8 runs on one thread: with several, on an x86 CPU without VNNI, OpenVINO's CPU
#: plugin gave nano's INT8 IRs other answers from run to run (a 2-core AVX2 EPYC, batch 256, 2 threads: the shipped
#: nano's default INT8 IR gave logits up to 0.13 apart and 9 other top-1 answers on one session run twice, and its
#: gate read 96.18-96.32% agreement, 0.59-0.67 points of accuracy drop: pass or fail by chance; its
#: --overflow-fix enable IR varied too). One thread was bit-identical at any batch; so were batch 1, every FP32 and
#: FP16 IR, small's INT8 IR, every ONNX Runtime and TorchScript session, and every IR on 16 threads of a Xeon with
#: VNNI. The cost is small: on that 16-core Xeon one thread took 0.7-1.5 s longer per INT8 IR of the shipped weights
#: (on the 2-core EPYC nothing), where one thread for every artifact would have cost 1.3-14 s each (TorchScript the
#: most). Recorded in every validation entry (``threads``: null is the runtime's default; ``batch``).
VAL_THREADS: dict[tuple[str, str], int] = {("openvino", "int8"): 1}
#: Runtime options used for validation, per runtime (OpenVINO on CPU pins f32: the
#: bf16 default of AVX-512-BF16/AMX CPUs changes numerics and can fail on NNCF INT8 models;
#: ONNX Runtime's default, exact INT8 on x86 CPUs without VNNI, is recorded as ``session_config``).
VALIDATION_OPTIONS: dict[str, dict] = {"openvino": {"precision_hint": "f32"}}


def validation_threads(runtime: str, precision: Precision | str) -> int | None:
    """The threads the parity gate gives ``runtime`` for an artifact of ``precision`` (:data:`VAL_THREADS`; None:
    the runtime's default)."""
    return VAL_THREADS.get((runtime, Precision(precision).value))


def run_batched(run, inputs: np.ndarray, batch: int = VAL_BATCH) -> np.ndarray:
    outs = [np.asarray(run(np.ascontiguousarray(inputs[i : i + batch])), dtype=np.float32)
            for i in range(0, len(inputs), batch)]
    return np.concatenate(outs)


def reference_logits(model, inputs: np.ndarray) -> np.ndarray:
    """PyTorch FP32 logits of the reference model on the validation inputs."""
    import torch

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return run_batched(run, inputs)


def check_reference_finite(logits: np.ndarray, checkpoint, what: str) -> None:
    """Refuse a checkpoint whose own (PyTorch FP32) logits on ``what`` are not all finite: its weights are damaged,
    every artifact would be as broken, and a gate against NaN reference logits judges nothing."""
    from fer_edge.errors import CheckpointError

    out = np.asarray(logits)
    finite = np.isfinite(out)
    if finite.all():
        return
    bad = int((~finite).any(axis=1).sum())
    kinds = " and ".join(k for k, hit in (("NaN", np.isnan(out).any()), ("inf", np.isinf(out).any())) if hit)
    raise CheckpointError(
        f"{checkpoint}: the checkpoint's own outputs (logits) are not finite numbers ({kinds}) for {bad} of "
        f"{len(out)} {what}, so nothing is exported: the model is broken (NaN or inf weights? a failed training "
        "run?), and its artifacts would be too"
    )


def not_validated(reason: str, **extra) -> dict:
    return {"status": NOT_VALIDATED, "reason": reason, **extra}


def runtime_unavailable(target: Target) -> str | None:
    """``"not validated: <why>"`` when the target's runtime cannot run here (Core ML off macOS, a missing
    package); None when it can."""
    from fer_edge.runtimes import get_runtime

    ok, why = get_runtime(target.runtime).available()
    return None if ok else f"not validated: {why}"


def validate_artifact(path: Path, target: Target, precision: Precision | str, vset, ref_logits: np.ndarray,
                      thresholds=None) -> dict:
    """Run ``path`` in the target's runtime (:func:`validation_threads`, :data:`VAL_BATCH` images per call) on
    ``vset.inputs``; compare with ``ref_logits``; check thresholds. The entry records the threads, batch and this
    machine's CPU (:func:`fer_edge.benchmarks.environment.cpu_record`)."""
    from fer_edge.benchmarks.environment import cpu_record
    from fer_edge.runtimes import get_runtime

    precision = Precision(precision)
    cls = get_runtime(target.runtime)
    ok, why = cls.available()
    if not ok:
        return not_validated(f"not validated: {why}", runtime=cls.name)
    options = dict(VALIDATION_OPTIONS.get(cls.name, {}))
    threads = validation_threads(cls.name, precision)
    try:
        rt = cls(path, threads=threads, batch_hint=VAL_BATCH, **options)
        logits = run_batched(rt.run, vset.inputs)
        info = rt.describe()
    except Exception as e:  # any runtime failure fails this artifact only
        return {"status": FAILED, "reason": f"{cls.name} could not run it: {type(e).__name__}: {e}",
                "runtime": cls.name, "failures": [f"{cls.name} could not run it: {e}"]}
    stats = parity.compare(ref_logits, logits, vset.labels)
    t = parity.resolve_thresholds(thresholds, precision)
    failures = parity.check(stats, precision, t)
    out = {
        "status": FAILED if failures else PASSED,
        "reason": "; ".join(failures) if failures else "",
        "agreement": stats.agreement,
        "max_abs_diff": stats.max_abs_diff,
        "kl": stats.kl,
        "flips": stats.flips,
        "accuracy": stats.accuracy,
        "reference_accuracy": stats.ref_accuracy,
        "accuracy_drop": stats.accuracy_drop,
        "n": stats.n,
        "thresholds": t.to_dict(),
        "failures": failures,
        "runtime": cls.name,
        "device": info.get("device"),
        # how it ran, so that a rerun can reproduce the figures: threads (None: the runtime's default) and images
        # per call; and the CPU it ran on, the machine class its pass or fail belongs to (an INT8 artifact can pass
        # on a CPU with VNNI and fail on one without, where its sums can saturate)
        "threads": threads,
        "batch": VAL_BATCH,
        "cpu": cpu_record(),
    }
    if "precision_hint" in info:
        out["precision_hint"] = info["precision_hint"]
    for key in ("providers", "session_config"):
        if key in info:
            out[key] = info[key]
    return out

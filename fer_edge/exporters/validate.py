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
#: Runtime options used for validation, per runtime (OpenVINO on CPU pins f32: the
#: bf16 default of AVX-512-BF16/AMX CPUs changes numerics and can fail on NNCF INT8 models;
#: ONNX Runtime's default, exact INT8 on x86 CPUs without VNNI, is recorded as ``session_config``).
VALIDATION_OPTIONS: dict[str, dict] = {"openvino": {"precision_hint": "f32"}}


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
    """Run ``path`` in the target's runtime on ``vset.inputs``; compare with ``ref_logits``; check thresholds."""
    from fer_edge.runtimes import get_runtime

    precision = Precision(precision)
    cls = get_runtime(target.runtime)
    ok, why = cls.available()
    if not ok:
        return not_validated(f"not validated: {why}", runtime=cls.name)
    options = dict(VALIDATION_OPTIONS.get(cls.name, {}))
    try:
        rt = cls(path, batch_hint=VAL_BATCH, **options)
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
    }
    if "precision_hint" in info:
        out["precision_hint"] = info["precision_hint"]
    for key in ("providers", "session_config"):
        if key in info:
            out[key] = info[key]
    return out

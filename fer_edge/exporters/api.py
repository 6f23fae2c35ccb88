"""The library entry point: :func:`export` a checkpoint to every requested target and precision.

    from fer_edge.exporters import export
    result = export("runs/x/best.pt", targets=["onnx", "openvino"], precisions=["fp32", "int8"],
                    out_dir="exports", calib_data="fer2013.csv.gz")
    result.manifest_path, [a.status for a in result.artifacts]

A target that fails does not stop the others. After writing the manifest, ``export``
raises :class:`~fer_edge.errors.ExportError` (a target failed) or
:class:`~fer_edge.errors.ParityError` (an artifact failed the parity gate) unless
``raise_on_failure=False``; the exception's ``result`` attribute holds the result.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from fer_edge.errors import ExportError, FerEdgeError, ParityError
from fer_edge.exporters import calibration as _cal
from fer_edge.exporters import validate as _val
from fer_edge.exporters.base import ExportRequest
from fer_edge.exporters.manifest import MANIFEST_NAME, carry_over, file_record, now_iso, tool_versions, write_manifest
from fer_edge.exporters.metadata import build_metadata
from fer_edge.exporters.registry import get_exporter
from fer_edge.targets import TARGETS, Precision, Target, get_target

#: Longest failure reason kept (converter errors can be pages long).
MAX_REASON = 600


@dataclass
class ProgressEvent:
    """Sent to the ``progress`` callback before each step; ``index`` counts steps from 0 of ``total``."""

    stage: str  # "export" | "validate" | "done"
    target: str
    precision: str
    index: int
    total: int


@dataclass
class ArtifactResult:
    target: str
    precision: str
    variant: str
    path: Path
    size_bytes: int
    sha256: str
    export_seconds: float
    validation: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return str(self.validation.get("status", _val.NOT_VALIDATED))


@dataclass
class ExportResult:
    out_dir: Path
    manifest_path: Path
    manifest: dict
    artifacts: list[ArtifactResult]
    failed: list[dict]  # {"target", "precision", "reason"}
    skipped: list[dict]
    warnings: list[str]

    @property
    def parity_failures(self) -> list[ArtifactResult]:
        return [a for a in self.artifacts if a.status == _val.FAILED]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.parity_failures

    def raise_for_failures(self) -> None:
        msgs = [f"{f['target']} {f['precision']}: export failed: {f['reason']}" for f in self.failed]
        msgs += [f"{a.path.name}: parity gate failed: {a.validation.get('reason')}" for a in self.parity_failures]
        if not msgs:
            return
        err_cls = ExportError if self.failed else ParityError
        err = err_cls(
            f"{len(msgs)} problem(s) (manifest {self.manifest_path} marks them):\n  " + "\n  ".join(msgs)
        )
        err.result = self  # type: ignore[attr-defined]
        raise err


def _short(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}" if not isinstance(e, FerEdgeError) else str(e)
    msg = " ".join(msg.split())
    return msg if len(msg) <= MAX_REASON else msg[: MAX_REASON - 3] + "..."


def _resolve_targets(targets) -> list[Target]:
    if targets is None:
        return list(TARGETS.values())
    names = [targets] if isinstance(targets, str) else list(targets)
    if "all" in names:
        return list(TARGETS.values())
    out: list[Target] = []
    for n in names:
        t = n if isinstance(n, Target) else get_target(str(n))
        if t not in out:
            out.append(t)
    return out


#: Why a default export (no ``--precision``) leaves int8 out when it has no calibration images.
INT8_NEEDS_CALIBRATION = "int8 needs calibration images: add --calib-data PATH (a FER2013 CSV or image folder)"
#: A skipped (target, precision)'s ``code`` in the manifest: what callers branch on (``reason`` is for people).
SKIP_NEEDS_CALIBRATION = "needs-calibration"
SKIP_UNSUPPORTED = "unsupported-precision"


def _resolve_precisions(precisions) -> list[Precision]:
    if precisions is None:
        return list(Precision)
    items = [precisions] if isinstance(precisions, (str, Precision)) else list(precisions)
    out: list[Precision] = []
    for p in items:
        try:
            pr = Precision(p)
        except ValueError:
            raise FerEdgeError(f"unknown precision {p!r}; valid: {', '.join(x.value for x in Precision)}") from None
        if pr not in out:
            out.append(pr)
    return out


def _validation_source(val_data, calib_data, ckpt) -> tuple[Path | None, str]:
    if val_data is not None:
        return Path(val_data), "--val-data"
    if calib_data is not None:
        return Path(calib_data), "the calibration data"
    src = (ckpt.data or {}).get("source")
    if src and Path(src).exists():
        return Path(src), "the checkpoint's training data"
    return None, ""


def export(
    checkpoint: str | Path | None = None,
    targets: Sequence[str | Target] | str | None = None,
    precisions: Sequence[str | Precision] | str | None = None,
    out_dir: str | Path = "exports",
    *,
    calib_data: str | Path | None = None,
    calib_split: str | None = None,
    calib_size: int = _cal.DEFAULT_CALIB_SIZE,
    calib_seed: int = _cal.DEFAULT_SEED,
    calib_method: str | None = None,
    overflow_fix: str | None = None,
    val_data: str | Path | None = None,
    val_split: str | None = None,
    val_size: int | None = _cal.DEFAULT_VAL_SIZE,
    val_seed: int = _cal.DEFAULT_SEED,
    validate: bool = True,
    thresholds: Mapping[Precision | str, object] | None = None,
    threshold_overrides: Mapping[str, Mapping[Precision | str, float | None]] | None = None,
    name: str | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    data_progress: bool = True,
    raise_on_failure: bool = True,
) -> ExportResult:
    """Export ``checkpoint`` (path, shipped name, or None for the default model) to ``out_dir``.

    targets: target names or ``"all"`` (None: all). precisions: ``fp32``/``fp16``/``int8``
    (None: all three, except int8 without ``calib_data``: then it is listed in ``skipped`` with
    the reason); a target skips precisions it does not support (TorchScript: fp32 only).
    INT8 needs ``calib_data`` (a FER2013 CSV or image folder): ``calib_size`` images of
    ``calib_split`` (default: its training split), stratified by class with ``calib_seed``.
    ``calib_method``: ONNX calibration, ``minmax``/``entropy``/``percentile``.
    ``overflow_fix``: OpenVINO INT8 weights, ``first-layer`` (NNCF's default: 7 bits in the first
    layer), ``enable`` (7 bits everywhere, for x86 CPUs without VNNI) or ``disable``.
    Validation (``validate``) runs each artifact that can run here on ``val_size`` images
    (None: all) of ``val_split`` of ``val_data`` (default: the calibration data, else the
    checkpoint's recorded data; default split: its validation split) and checks it against
    the PyTorch FP32 model with ``thresholds`` (``{precision: parity.Thresholds}``, used as
    given; gaps take :data:`fer_edge.parity.DEFAULT_THRESHOLDS`). Without ``thresholds`` the gate
    is the defaults, then a shipped weight's own gate (``WeightMeta.parity_gate``, found by the
    checkpoint's SHA-256), then ``threshold_overrides`` (``{threshold: {precision: value}}``, as
    the CLI's ``--min-agreement`` etc.); the manifest's ``thresholds_source`` says which applied. ``name``: the artifacts' file stem
    (default: the model name), e.g. ``fer_nano_int8.onnx``. ``progress`` gets a
    :class:`ProgressEvent` before each step; ``on_warning`` each warning as it happens (all
    warnings are also in ``result.warnings`` and the manifest).
    """
    import json

    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.exporters.onnx import CALIB_METHODS, DEFAULT_CALIB_METHOD
    from fer_edge.parity import resolve_gate
    from fer_edge.weights import resolve_checkpoint

    ckpt_path = resolve_checkpoint(checkpoint)
    tlist = _resolve_targets(targets)
    plist = _resolve_precisions(precisions)
    calib_method = calib_method or DEFAULT_CALIB_METHOD
    if calib_method not in CALIB_METHODS:
        raise FerEdgeError(f"unknown calibration method {calib_method!r}; valid: {', '.join(CALIB_METHODS)}")
    from fer_edge.exporters.openvino import DEFAULT_OVERFLOW_FIX, OVERFLOW_FIX

    overflow_fix = overflow_fix or DEFAULT_OVERFLOW_FIX
    if overflow_fix not in OVERFLOW_FIX:
        raise FerEdgeError(f"unknown overflow fix {overflow_fix!r}; valid: {', '.join(OVERFLOW_FIX)}")
    if calib_size is None or calib_size < 1:
        raise FerEdgeError(f"--calib-size must be at least 1 (got {calib_size})")

    plan: list[tuple[Target, Precision]] = []
    skipped: list[dict] = []
    # no precision asked for and no calibration images: the float precisions, and every int8 skip listed
    int8_by_default_only = precisions is None and calib_data is None
    for t in tlist:
        for p in plist:
            if p is Precision.int8 and int8_by_default_only and p in t.precisions:
                skipped.append({"target": t.name, "precision": p.value, "code": SKIP_NEEDS_CALIBRATION,
                                "reason": INT8_NEEDS_CALIBRATION})
            elif p in t.precisions:
                plan.append((t, p))
            else:
                skipped.append({"target": t.name, "precision": p.value, "code": SKIP_UNSUPPORTED,
                                "reason": f"{t.name} supports {', '.join(x.value for x in t.precisions)} only"})
    if not plan:
        raise FerEdgeError(
            "nothing to export: "
            + "; ".join(f"{s['target']} {s['precision']}: {s['reason']}" for s in skipped)
        )
    if any(p is Precision.int8 for _, p in plan) and calib_data is None:
        raise FerEdgeError(
            "int8 export needs calibration images: pass --calib-data PATH (a FER2013 CSV or image folder; "
            "the training split is sampled), or leave int8 out (--precision fp32,fp16)"
        )

    ckpt = load_checkpoint(ckpt_path)
    model = ckpt.build_model()
    source_sha = ckpt.sha256
    thresholds, thresholds_source = resolve_gate(source_sha, thresholds, threshold_overrides)
    stem = name or ckpt.model_name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        if on_warning is not None:
            on_warning(msg)

    calib = None
    if any(p is Precision.int8 for _, p in plan):
        calib, w = _cal.load_calibration(calib_data, calib_split, calib_size, calib_seed,
                                         ckpt.normalization, progress=data_progress)
        for msg in w:
            warn(msg)

    vset = ref = None
    val_record = None
    if validate:
        vdata, vwhy = _validation_source(val_data, calib_data, ckpt)
        if vdata is None:
            warn("no validation data (pass --val-data or --calib-data): artifacts are not validated")
        else:
            vset = _cal.load_validation(vdata, val_split, val_size, val_seed, ckpt.normalization,
                                        progress=data_progress)
            val_record = {**vset.record, "chosen_from": vwhy}
            if calib is not None and (calib.record["file"], calib.record["split"]) == (
                vset.record["file"], vset.record["split"]
            ):
                warn(
                    f"calibration and validation both sample {vset.record['split']} of {vset.record['file']}: "
                    "the parity figures are not on held-out images"
                )
            ref = _val.reference_logits(model, vset.inputs)

    exporters: dict[str, object] = {}
    results: list[ArtifactResult] = []
    entries: list[dict] = []
    failed: list[dict] = []
    versions = tool_versions()
    total = len(plan) * (2 if validate else 1)
    step = 0

    def emit(stage, t, p):
        if progress is not None:
            progress(ProgressEvent(stage, t.name, p.value, step, total))

    from fer_edge.parity import DEFAULT_THRESHOLDS, resolve_thresholds

    for t, p in plan:
        emit("export", t, p)
        step += 1
        path = out / t.filename(stem, p)
        meta = build_metadata(ckpt, p, t.name, source_sha)
        try:
            if t.name not in exporters:
                exporters[t.name] = get_exporter(t.name)()
            exp = exporters[t.name]
            exp.check_available()
            req = ExportRequest(model=model, ckpt=ckpt, metadata=meta,
                                calib=calib if p is Precision.int8 else None,
                                options={"calib_method": calib_method, "overflow_fix": overflow_fix})
            t0 = time.perf_counter()
            files = exp.export(req, p, path)
            seconds = time.perf_counter() - t0
        except Exception as e:  # one target's failure does not stop the others
            failed.append({"target": t.name, "precision": p.value, "reason": _short(e)})
            if validate:
                step += 1
            continue

        validation: dict
        if not validate:
            validation = _val.not_validated("not validated: --no-validate")
        elif vset is None:
            validation = _val.not_validated("not validated: no validation data")
        else:
            emit("validate", t, p)
            # the artifact that runs: the main file, or a companion built for parity (Core ML's logits)
            runnable = next((f for f in files if f.variant == "logits"), files[0])
            validation = _val.validate_artifact(runnable.path, t, p, vset, ref, thresholds)
            if runnable is not files[0] and validation["status"] != _val.NOT_VALIDATED:
                validation["note"] = f"validated through {runnable.path.name}"
        if validate:
            step += 1

        for f in files:
            recs = [file_record(f.path, out)] + [file_record(c, out) for c in f.companions]
            size = sum(r["size_bytes"] for r in recs)
            entry = {
                "file": recs[0]["file"],
                "target": t.name,
                "precision": p.value,
                "variant": f.variant,
                "runtime": t.runtime,
                "size_bytes": size,
                "sha256": recs[0]["sha256"],
                "files": recs,
                "inputs": f.inputs,
                "outputs": f.outputs,
                "labels": list(ckpt.labels),
                "normalization": ckpt.normalization.to_dict(),
                "metadata": {**meta, **({"variant": "classifier" if f.variant == "main" else f.variant}
                                        if t.name == "coreml" else {})},
                "calibration": calib.record if (p is Precision.int8 and calib is not None) else None,
                "export_seconds": round(seconds, 3) if f is files[0] else 0.0,
                "export": f.extra,
                "tool_versions": versions,
                "source": {"path": str(Path(ckpt_path).resolve()), "sha256": source_sha, "model": ckpt.model_name},
                "validation": dict(validation),
            }
            entries.append(entry)
            results.append(ArtifactResult(t.name, p.value, f.variant, f.path, size, recs[0]["sha256"],
                                          entry["export_seconds"], entry["validation"]))

    source = {"path": str(Path(ckpt_path).resolve()), "sha256": source_sha, "model": ckpt.model_name}
    old = None
    mpath = out / MANIFEST_NAME
    if mpath.is_file():
        try:
            old = json.loads(mpath.read_text())
        except (OSError, ValueError):
            old = None
    new_keys = {(t.name, p.value, v) for t, p in plan for v in ("main", "logits")}
    kept = carry_over(old, new_keys, source_sha, out)
    manifest = {
        "format": "fer-edge-export-manifest/1",
        "created": now_iso(),
        "fer_edge_version": versions["fer_edge"],
        "source": source,
        "labels": list(ckpt.labels),
        "normalization": ckpt.normalization.to_dict(),
        "tool_versions": versions,
        "calibration": calib.record if calib is not None else None,
        "calibration_method": calib_method if calib is not None else None,
        "validation_data": val_record,
        "thresholds": {pr.value: resolve_thresholds(thresholds, pr).to_dict() for pr in DEFAULT_THRESHOLDS},
        "thresholds_source": thresholds_source,
        "artifacts": kept + entries,
        "failed": failed,
        "skipped": skipped,
        "warnings": warnings,
    }
    manifest_path = write_manifest(out, manifest)
    if progress is not None:
        progress(ProgressEvent("done", "", "", total, total))
    result = ExportResult(out, manifest_path, manifest, results, failed, skipped, warnings)
    if raise_on_failure:
        result.raise_for_failures()
    return result


def export_artifacts(checkpoint: str | Path | None, out_dir: str | Path, **kwargs) -> ExportResult:
    """Every target at every precision it supports (int8 only with ``calib_data``): the bench's default set."""
    return export(checkpoint, out_dir=out_dir, **kwargs)

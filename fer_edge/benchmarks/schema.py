"""The published JSON schema of ``report.json`` (written by ``fer-edge bench``), and a small checker.

``REPORT_SCHEMA`` is a JSON Schema (draft 2020-12) dict; any JSON Schema validator can
use it (``jsonschema.validate(report, REPORT_SCHEMA)``). :func:`validate` checks the
subset of keywords this schema uses without needing the ``jsonschema`` package.
"""
from __future__ import annotations

from typing import Any

SCHEMA_ID = "fer-edge-bench-report/1"

#: Row statuses: measured and within the parity thresholds / measured but outside them /
#: could not load or run (``reason`` holds the error) / not attempted (``reason`` says why).
STATUSES = ("ok", "parity-failed", "failed", "skipped")

#: The latency distribution keys, in milliseconds.
LATENCY_KEYS = ("mean", "std", "min", "p50", "p90", "p99", "max")

_num = {"type": ["number", "null"]}
_nonneg = {"type": ["number", "null"], "minimum": 0}
_int = {"type": ["integer", "null"], "minimum": 0}
_str = {"type": ["string", "null"]}

LATENCY_SCHEMA: dict[str, Any] = {
    "type": ["object", "null"],
    "required": list(LATENCY_KEYS),
    "properties": {k: {"type": "number", "minimum": 0} for k in LATENCY_KEYS},
    "additionalProperties": False,
}

#: One row: one artifact x runtime x device x batch size.
ROW_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "target", "precision", "runtime", "device", "batch", "status", "reason", "threads",
        "load_ms", "first_inference_ms", "latency_ms", "throughput_ips", "peak_rss_mb",
        "accuracy", "macro_f1", "agreement", "max_abs_diff", "kl", "flips", "artifact", "size_bytes",
    ],
    "properties": {
        "target": {"type": "string", "description": "export target (onnx, openvino, coreml, torchscript) or "
                                                    "'checkpoint' for the PyTorch reference"},
        "precision": {"type": "string", "enum": ["fp32", "fp16", "int8"]},
        "runtime": {"type": "string"},
        "device": {"type": ["string", "null"], "description": "runtime device (cpu, cuda, CPUExecutionProvider, "
                                                              "CPU, CPU_AND_NE...); null when none applies"},
        "batch": {"type": "integer", "minimum": 1},
        "status": {"type": "string", "enum": list(STATUSES)},
        "reason": {"type": "string", "description": "empty when ok; the failed threshold, the error or the "
                                                    "reason for skipping otherwise"},
        "threads": _int,
        "load_ms": _nonneg,
        "first_inference_ms": _nonneg,
        "latency_ms": LATENCY_SCHEMA,
        "throughput_ips": _nonneg,
        "peak_rss_mb": _nonneg,
        "accuracy": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "macro_f1": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "agreement": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "max_abs_diff": _nonneg,
        "kl": _num,
        "flips": _int,
        "artifact": {"type": "string"},
        "size_bytes": _int,
        # informative extras
        "reference": {"type": "boolean", "description": "the PyTorch FP32 checkpoint row"},
        "model": {**_str, "description": "architecture of the checkpoint the artifact came from"},
        "source_sha256": {**_str, "description": "SHA-256 of the checkpoint the artifact came from (rows of "
                                                 "several models differ by it)"},
        "sha256": _str,
        "iters": _int,
        "p50_spread_pct": {**_nonneg, "description": "largest deviation of a round's p50 from the overall p50"},
        "rss_delta_mb": _num,
        "parity_failures": {"type": "array", "items": {"type": "string"}},
        "runtime_info": {"type": ["object", "null"]},
        "export_validation": {"type": ["string", "null"], "description": "the export's parity-gate outcome its "
                              "manifest records (passed, failed, not validated ...); null when no manifest lists "
                              "the artifact (or for the reference)"},
    },
    "additionalProperties": False,
}

ENVIRONMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["hostname", "os", "cpu", "libraries", "runtimes", "fingerprint"],
    "properties": {
        "hostname": {"type": "string"},
        "os": {"type": "string"},
        "cpu": {"type": "object", "required": ["model", "physical_cores", "logical_cores"],
                "properties": {"model": {"type": "string"}, "physical_cores": {"type": "integer"},
                               "logical_cores": {"type": "integer"}, "clock_mhz": _num}},
        "memory_gb": _num,
        "libraries": {"type": "object"},
        "runtimes": {"type": "object"},
        "fingerprint": {"type": "string"},
    },
}

REFERENCE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["path", "sha256", "model"],
    "properties": {"path": {"type": "string"}, "sha256": {"type": "string"}, "model": {"type": "string"},
                   "macs_per_image": _int, "params": _int, "accuracy": _num, "macro_f1": _num},
}

REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    "title": "fer-edge bench report",
    "type": "object",
    "required": ["schema", "created_at", "fer_edge_version", "environment", "settings", "reference", "rows"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "created_at": {"type": "string"},
        "fer_edge_version": {"type": "string"},
        "environment": ENVIRONMENT_SCHEMA,
        "settings": {
            "type": "object",
            "required": ["data", "split", "n_images", "batches", "threads", "warmup", "rounds", "seed"],
            "properties": {
                "data": {"type": "string"}, "split": {"type": "string"}, "n_images": {"type": "integer"},
                "batches": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                "threads": {"type": "integer", "minimum": 1}, "warmup": {"type": "integer", "minimum": 0},
                "iters": _int, "seconds": _nonneg, "rounds": {"type": "integer", "minimum": 1},
                "seed": {"type": "integer"}, "parity_gate": {"type": "boolean"},
                "thresholds": {"type": "object"},
            },
        },
        "reference": REFERENCE_SCHEMA,
        "references": {"type": "array", "items": REFERENCE_SCHEMA,
                       "description": "every reference checkpoint: each artifact is compared with the one it "
                                      "came from (rows' source_sha256); 'reference' is the first"},
        "compute_limit": {"type": ["object", "null"]},
        "notes": {"type": "array", "items": {"type": "string"}},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "rows": {"type": "array", "items": ROW_SCHEMA},
    },
}

_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, t: str) -> bool:
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[t])


def validate(instance: Any, schema: dict = REPORT_SCHEMA, path: str = "$") -> list[str]:
    """Errors (``"$.rows[3].batch: ..."``) of ``instance`` against ``schema``; empty when valid.

    Supports the keywords used here: type, const, enum, required, properties,
    additionalProperties (boolean), items, minimum, maximum.
    """
    errors: list[str] = []
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: expected {schema['const']!r}, got {instance!r}")
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else list(types)
        if not any(_is_type(instance, t) for t in types):
            return errors + [f"{path}: expected {' or '.join(types)}, got {type(instance).__name__}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} is not one of {schema['enum']}")
    if _is_type(instance, "number"):
        if "minimum" in schema and instance < schema["minimum"]:
            errors.append(f"{path}: {instance} < minimum {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            errors.append(f"{path}: {instance} > maximum {schema['maximum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{path}: missing required field {key!r}")
        props = schema.get("properties", {})
        for key, value in instance.items():
            if key in props:
                errors.extend(validate(value, props[key], f"{path}.{key}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}: unexpected field {key!r}")
    if isinstance(instance, list) and "items" in schema:
        for i, item in enumerate(instance):
            errors.extend(validate(item, schema["items"], f"{path}[{i}]"))
    return errors


if __name__ == "__main__":
    from fer_edge.benchmarks import not_a_script

    raise SystemExit(not_a_script("schema"))

"""``DIR/manifest.json``: what an export wrote, from what, with which tools, and whether it passed.

Schema (``format`` ``fer-edge-export-manifest/1``)::

    {
      "format", "run_id", "created", "fer_edge_version",   # run_id: this export run's id (random)
      "complete": true | false,                        # false while the export runs: an interrupted one
                                                       # leaves false and lists what it finished
      "source": {"path", "sha256", "model"},          # the checkpoint
      "labels": [...], "normalization": {"mean", "std"},
      "tool_versions": {"torch", "onnx", ...},
      "calibration": {file, split, count, requested, split_size, sampling, seed, index_hash, ...} | null,
      "validation_data": {file, split, count, requested (null: all), split_size, sampling, index_hash, ...,
                          chosen_from ("--val-data", "--calib-data" or "the checkpoint's recorded validation
                          data")} | null,
      "thresholds": {"fp32": {...}, "fp16": {...}, "int8": {...}},
      "artifacts": [                                   # every file written (and still valid)
        {"file": "fer_nano_int8.onnx",                 # relative to the manifest's folder
         "target", "precision", "variant" ("main" | "logits"), "runtime",
         "size_bytes", "sha256",                       # sha256 of "file" (utils.sha256_path)
         "files": [{"file", "size_bytes", "sha256"}],  # every file it is made of (OpenVINO: .xml + .bin)
         "inputs": [...], "outputs": [...], "labels", "normalization", "metadata": {...},
         "calibration": {...} | null, "export_seconds", "export": {...target facts...},
         "tool_versions", "source",
         "run",                                        # run_id of the export run that wrote it
         "being_replaced"?: {"run", "validation"},     # while the run being_replaced.run re-exports it: it is
                                                       # listed "not validated" (its file may already be the new
                                                       # one), its own result kept here; an export reading it with
                                                       # the files unchanged restores that result
         "validation": {"status": "passed" | "failed" | "not validated", "reason",
                        "agreement", "max_abs_diff", "kl", "flips", "accuracy",
                        "reference_accuracy", "accuracy_drop", "n", "thresholds",
                        "runtime", "device", "precision_hint"? (OpenVINO),
                        "providers"?, "session_config"? (ONNX Runtime),
                        "threads" (1 for OpenVINO INT8, whose answers moved from run to run on
                                   several threads of an x86 CPU without VNNI; null: the runtime's default),
                        "batch" (images per call, 256),
                        "cpu": {"model", "arch", "isa", "flags", "vnni", "int8_can_saturate"}}}
                                                       # the CPU the gate ran on: an INT8 artifact's pass or
                                                       # fail belongs to its class (int8_can_saturate: x86
                                                       # without VNNI, where INT8 sums can saturate)
      ],
      "failed": [{"target", "precision", "reason"}],   # exports that did not produce a file
      "skipped": [{"target", "precision", "code", "reason"}],   # code: "needs-calibration" | "unsupported-precision"
      "warnings": [...],
      "earlier_runs": [{"run_id", "created", "complete", "calibration", "calibration_method", "validation_data",
                        "thresholds", "thresholds_source", "warnings"}]   # runs whose entries are still listed
    }

The top level describes the latest run; entries kept from earlier runs into the same folder (same
checkpoint, files unchanged) name their ``run``, and ``earlier_runs`` keeps those runs' top levels.

The manifest is rewritten after every artifact (listed with ``validation.status`` "not validated" until its
validation finishes), so it always lists what is on disk. Artifact entries carry no top-level
``status``: the gate result is ``validation.status``.
``export_seconds`` is the conversion time of the (target, precision), on its main entry (a
companion such as Core ML's ``_logits`` package shows 0); work shared between precisions (one
FP32 conversion per target) counts towards the first precision exported.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from fer_edge.errors import ArtifactError
from fer_edge.utils import path_size, sha256_path, write_json_atomic

MANIFEST_NAME = "manifest.json"
FORMAT = "fer-edge-export-manifest/1"
#: Distributions whose versions every manifest records.
TOOLS = ("torch", "onnx", "onnxscript", "onnxruntime", "openvino", "nncf", "coremltools", "fer-edge")


def tool_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in TOOLS:
        try:
            out[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:
            out[dist.replace("-", "_")] = None
    from fer_edge import __version__

    out["fer_edge"] = __version__
    return out


def file_record(path: Path, root: Path) -> dict:
    return {"file": str(path.relative_to(root)), "size_bytes": path_size(path), "sha256": sha256_path(path)}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    write_json_atomic(path, manifest)
    return path


def load_manifest(path: str | Path) -> dict:
    from fer_edge.utils import read_json_file

    p, data = read_json_file(path, MANIFEST_NAME, "manifest", ArtifactError)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ArtifactError(f"{p}: not a fer-edge export manifest (expected format {FORMAT!r})")
    return data


def record_problem(rec) -> str | None:
    """What is wrong with a manifest's file record (``{"file", "sha256", ...}``) as written by hand or damaged: no
    file name, no SHA-256; None when it has both."""
    if not isinstance(rec, dict):
        return f"a file record is a {type(rec).__name__}, not an object"
    name = rec.get("file")
    if not isinstance(name, str) or not name:
        return f"a file record has no file name ({rec!r})"
    sha = rec.get("sha256")
    if not isinstance(sha, str) or not sha:
        return f"the record of {name} has no sha256"
    return None


def file_records(art) -> list:
    """A manifest entry's file records: its ``files``, or (older manifests) the entry itself."""
    if not isinstance(art, dict):
        return [art]
    recs = art.get("files")
    if not recs:
        return [{"file": art.get("file"), "sha256": art.get("sha256")}]
    return recs if isinstance(recs, list) else [recs]


def verify_manifest(path: str | Path) -> list[str]:
    """Problems with the files a manifest lists (missing, size or SHA-256 changed, a record with no file name or
    SHA-256); [] when all match."""
    p = Path(path)
    root = p if p.is_dir() else p.parent
    data = load_manifest(p)
    problems = []
    arts = data.get("artifacts")
    if not isinstance(arts, list):
        return [f"its artifacts are a {type(arts).__name__}, not a list"] if arts is not None else []
    for art in arts:
        for rec in file_records(art):
            if (why := record_problem(rec)) is not None:
                problems.append(f"{why} (the manifest was edited or damaged)")
                continue
            f = root / rec["file"]
            if not f.exists():
                problems.append(f"{rec['file']}: missing")
            elif sha256_path(f) != rec["sha256"]:
                problems.append(f"{rec['file']}: SHA-256 differs from the manifest (modified after export)")
    return problems


def files_unchanged(art: dict, root: Path) -> str | None:
    """Why the files of a manifest entry no longer match it ("missing", "changed since it was exported", a record
    with no file name or SHA-256), or None when every file is there with its recorded SHA-256."""
    recs = art.get("files") or []
    if not recs:
        return "no files recorded"
    if not isinstance(recs, list):
        return f"its files are a {type(recs).__name__}, not a list"
    for r in recs:
        if (why := record_problem(r)) is not None:
            return f"{why} (the manifest was edited or damaged)"
        f = root / r["file"]
        if not (f.exists() or f.is_symlink()):
            return f"{r['file']} is missing"
        if sha256_path(f) != r["sha256"]:
            return f"{r['file']} changed since it was exported (SHA-256 differs)"
    return None


def carry_over(old: dict | None, source_sha: str, root: Path) -> tuple[list[dict], list[tuple[list[str], str]]]:
    """Entries of a previous manifest in the same folder worth keeping (same source checkpoint, files
    unchanged), each tagged with the ``run`` (id) that exported it; and, for each (target, precision)
    dropped because a file of it changed or went missing, its files and a message. The entries of one
    (target, precision) (Core ML's package and its ``_logits`` companion) are kept or dropped together.
    (Exporting ``--target onnx`` then ``--target openvino`` into one folder gives one manifest listing both.)"""
    if not old or old.get("format") != FORMAT or (old.get("source") or {}).get("sha256") != source_sha:
        return [], []
    listed = old.get("artifacts")
    arts = [a for a in listed if isinstance(a, dict)] if isinstance(listed, list) else []
    whys: dict[tuple, list[str]] = {}
    for art in arts:
        why = files_unchanged(art, root)
        whys.setdefault(group_key(art), []).extend([why] if why else [])
    kept, dropped = [], []
    for g, reasons in whys.items():
        if reasons:
            files = [r["file"] for a in arts if group_key(a) == g for r in _listed_records(a)]
            named = ", ".join(files) or "an entry"
            dropped.append((files, f"{named} ({g[0]} {g[1]}) no longer listed in the manifest: "
                                   f"{'; '.join(reasons)}; export it again, or remove it"))
    for art in arts:
        if not whys[group_key(art)]:
            kept.append({**art, "run": art.get("run") or old.get("run_id") or old.get("created")})
    return kept, dropped


def _listed_records(art: dict) -> list[dict]:
    """The file records of an entry that name a file (a damaged entry's others left out)."""
    recs = art.get("files")
    return [r for r in recs if isinstance(r, dict) and isinstance(r.get("file"), str) and r["file"]] \
        if isinstance(recs, list) else []


def group_key(art: dict) -> tuple:
    """(target, precision) of a manifest entry: the entries one export of it writes (main and companions)."""
    return art.get("target"), art.get("precision")


def run_record(manifest: dict) -> dict:
    """The settings of the export run that wrote ``manifest`` (its top level), to keep beside the
    entries it made once a later run into the same folder writes the top level."""
    record = {k: manifest.get(k) for k in RUN_KEYS}
    record["run_id"] = record["run_id"] or manifest.get("created")  # manifests written before run ids
    return record


#: Top-level manifest fields that describe one export run.
RUN_KEYS = ("run_id", "created", "complete", "calibration", "calibration_method", "validation_data", "thresholds", "thresholds_source",
            "warnings")

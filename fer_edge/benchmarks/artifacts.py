"""Which files a bench measures: artifact directories, manifests, single files, and the reference.

An *artifact* here is one file (or ``.mlpackage`` directory) with its target, precision,
the runtime that runs it, and what its manifest says about it. A manifest's SHA-256 of
every file is checked before anything is loaded: a mismatch is an :class:`ArtifactError`
naming the file.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from fer_edge.errors import ArtifactError, FerEdgeError
from fer_edge.preprocess import Normalization
from fer_edge.targets import TARGETS, Precision, Target, find_target, target_for_path
from fer_edge.runtimes import CHECKPOINT_SUFFIXES
from fer_edge.runtimes.coreml import LOGITS_SUFFIX

MANIFEST_NAME = "manifest.json"
#: The pseudo-target of PyTorch checkpoints (the reference rows).
CHECKPOINT_TARGET = "checkpoint"
CHECKPOINT_RUNTIME = "pytorch"
#: What ``fer-edge bench`` accepts as an artifact file, for error messages.
ARTIFACT_SUFFIXES = ", ".join([*(t.suffix for t in TARGETS.values()), *CHECKPOINT_SUFFIXES])


@dataclass
class Artifact:
    path: Path
    target: str
    precision: str
    runtime: str
    size_bytes: int | None = None
    sha256: str | None = None
    labels: list[str] | None = None
    normalization: Normalization | None = None
    model: str | None = None
    source: dict = field(default_factory=dict)  # {"path", "sha256", "model"} of the checkpoint it came from
    manifest: Path | None = None
    #: the manifest's ``complete`` (False: written by an export that did not finish); None when it has none
    export_complete: bool | None = None
    #: the export's parity-gate outcome from its manifest (``passed``, ``failed``, ``not validated``...) and the
    #: reason given; None when no manifest lists it
    export_validation: str | None = None
    export_validation_reason: str | None = None
    #: why its runtime could not read it (``"InvalidProtobuf: ..."``) when looking for its source in its metadata
    read_error: str | None = None
    #: the fer-edge metadata embedded in the file, once read (files no manifest lists); None: not read
    embedded: dict | None = None
    #: what reading it found worth saying (its precision taken from its metadata over its name)
    notes: list[str] = field(default_factory=list)
    #: ``{file: sha256}`` of every file it is made of (OpenVINO: ``.xml`` and ``.bin``; Core ML: its ``_logits``
    #: companion too) as it was verified (a manifest's records) or hashed when collected (a file no manifest lists):
    #: :func:`check_unchanged` compares them again once the bench has loaded it
    files: dict[str, str] = field(default_factory=dict)

    @property
    def is_checkpoint(self) -> bool:
        return self.target == CHECKPOINT_TARGET

    @property
    def key(self) -> str:
        return str(self.path.resolve())


def _name_precision(path: Path, target: Target) -> str | None:
    """The precision a file name says (``fer_nano_fp16.onnx``), or None when it says none."""
    stem = path.name[: -len(target.suffix)] if path.name.endswith(target.suffix) else path.stem
    m = re.search(r"_(fp32|fp16|int8)$", stem)
    return m.group(1) if m else None


def _precision_from_name(path: Path, target: Target) -> str:
    return _name_precision(path, target) or Precision.fp32.value


def _norm(value) -> Normalization | None:
    if value is None or value == "":
        return None
    if isinstance(value, Normalization):
        return value
    if isinstance(value, str):
        value = json.loads(value)
    return Normalization.from_dict(value)


def metadata_normalization(md: dict) -> Normalization | None:
    """The normalisation a runtime's embedded fer-edge metadata gives (a JSON string or a dict), or None."""
    return _norm(md.get("normalization"))


def _labels(value) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = json.loads(value)
    return [str(v) for v in value]


def artifact_from_file(path: str | Path) -> Artifact:
    """An artifact no manifest lists: target from the suffix; precision from its embedded metadata (every export
    records ``precision`` there), the file name (``_fp16``...) only when the metadata cannot be read or has none.
    When the two disagree (a renamed copy), the metadata wins and ``notes`` says so."""
    from fer_edge.utils import path_size

    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p}: artifact not found")
    if p.suffix.lower() in CHECKPOINT_SUFFIXES:  # in any case, as predict and eval take them (BEST.PT)
        return Artifact(p, CHECKPOINT_TARGET, Precision.fp32.value, CHECKPOINT_RUNTIME, size_bytes=path_size(p),
                        files=_hashes(p, CHECKPOINT_RUNTIME))
    target = find_target(p)
    if target is None:
        raise ArtifactError(f"cannot tell the target of {p}: expected one of the suffixes {ARTIFACT_SUFFIXES}")
    # hashed before its metadata is read: what the bench measures is checked against these bytes
    art = Artifact(p, target.name, _precision_from_name(p, target), target.runtime, size_bytes=path_size(p),
                   files=_hashes(p, target.runtime))
    embedded = str(_embedded_metadata(art).get("precision") or "")
    if embedded in {x.value for x in Precision}:
        named = _name_precision(p, target)
        if named is not None and named != embedded:
            art.notes.append(f"{p}: its name says {named} but its embedded metadata says {embedded}: "
                             f"benchmarked (and parity-gated) as {embedded}")
        art.precision = embedded
    return art


def _hashes(p: Path, runtime: str) -> dict[str, str]:
    """``{file: sha256}`` of the files the ``runtime`` reads for ``p``, a file no manifest lists: ``p``, OpenVINO's
    ``.bin`` beside its ``.xml``, Core ML's ``_logits`` package beside its own (those that exist)."""
    from fer_edge.runtimes.coreml import logits_variant
    from fer_edge.utils import sha256_path

    files = [p]
    if runtime == "openvino":
        files.append(p.with_suffix(".bin"))
    elif runtime == "coreml":
        files.append(logits_variant(p))  # (p itself when it is the _logits package)
    return {str(f): sha256_path(f) for f in dict.fromkeys(files) if f.exists()}


def check_unchanged(art: Artifact) -> None:
    """Refuse (:class:`ArtifactError` naming the file) an artifact a file of which no longer holds the bytes it was
    verified (or hashed) as when the bench collected it: written over while being benchmarked, its rows would give
    the SHA-256 and size of bytes that were not measured. A checkpoint without ``files`` is checked against its
    ``sha256`` (the hash its reference logits were computed from)."""
    from fer_edge.utils import sha256_path

    files = art.files or ({str(art.path): art.sha256} if art.sha256 else {})
    for f, want in files.items():
        try:
            got = sha256_path(f)
        except OSError as e:
            raise ArtifactError(f"{f}: changed while being benchmarked (it can no longer be read: "
                                f"{e.strerror or e}); benchmark it again once it is written") from None
        if got != want:
            raise ArtifactError(
                f"{f}: changed while being benchmarked (SHA-256 {want[:12]}... when checked, {got[:12]}... after it "
                "was loaded): its rows would name bytes that were not measured; benchmark it again once it is written"
            )


def verify_entry(entry: dict, root: Path, manifest: Path) -> None:
    """Check every file of one manifest entry (OpenVINO: ``.xml`` and ``.bin``; Core ML: both packages'
    companions are their own entries) against its recorded SHA-256; ArtifactError naming the file."""
    from fer_edge.utils import sha256_path

    for rec in entry.get("files") or [{"file": entry.get("file"), "sha256": entry.get("sha256")}]:
        f = root / str(rec.get("file"))
        if not f.exists():
            raise ArtifactError(f"{f}: listed in {manifest} but missing -- re-export with `fer-edge export`")
        want = rec.get("sha256")
        if not want:
            raise ArtifactError(f"{f}: {manifest} records no SHA-256 for it; cannot verify it")
        got = sha256_path(f)
        if got != want:
            raise ArtifactError(
                f"{f}: SHA-256 does not match {manifest} (manifest {want[:12]}..., file {got[:12]}...): "
                "the file was modified after export; refusing to benchmark it -- re-export with `fer-edge export`"
            )


def read_manifest(path: str | Path, verify: bool = True, only: set[str] | None = None) -> list[Artifact]:
    """The artifacts a ``manifest.json`` lists (``only``: those file names), each verified first.

    Every file of every selected entry must match its SHA-256 in the manifest, else an
    :class:`ArtifactError` names it. Companion entries (Core ML's ``_logits`` package,
    which the coreml runtime picks itself) are left out: each artifact is benchmarked once.
    """
    from fer_edge.exporters.manifest import load_manifest
    from fer_edge.utils import path_size

    mpath = Path(path)
    if mpath.is_dir():
        mpath = mpath / MANIFEST_NAME
    data = load_manifest(mpath)
    top_source = data.get("source") if isinstance(data.get("source"), dict) else {}
    entries = [e for e in data.get("artifacts") or [] if isinstance(e, dict) and e.get("file")]
    # the (target, precision) groups selected: a file given alone is verified with its companions (Core ML's
    # `_logits` package, which the coreml runtime runs for it), as a whole folder's bench verifies them
    groups = {_group(e) for e in entries if only is not None and e["file"] in only and e.get("target")}
    # every file of each (target, precision) group as its manifest records it: an artifact's own files and its
    # companions' (the coreml runtime runs the `_logits` package too), checked again once the bench has loaded it
    recorded: dict[tuple, dict[str, str]] = {}
    mains: dict[tuple, int] = {}  # main entries per (target, precision) group
    for e in entries:
        recorded.setdefault(_group(e), {}).update(_recorded_hashes(e, mpath.parent))
        if e.get("variant", "main") == "main":
            mains[_group(e)] = mains.get(_group(e), 0) + 1
    out: list[Artifact] = []
    for e in entries:
        selected = only is None or e["file"] in only
        if not (selected or _group(e) in groups):
            continue
        if verify:
            verify_entry(e, mpath.parent, mpath)
        if not selected or e.get("variant", "main") != "main":
            continue
        p = mpath.parent / e["file"]
        target_name = e.get("target")
        if target_name not in TARGETS:
            try:
                target_name = target_for_path(p).name
            except FerEdgeError as err:
                raise ArtifactError(f"{mpath}: entry {e['file']}: {err}") from None
        target = TARGETS[target_name]
        src = e.get("source") if isinstance(e.get("source"), dict) else top_source
        try:
            norm = _norm(e.get("normalization") or data.get("normalization"))
            labels = _labels(e.get("labels") or data.get("labels"))
        except (ValueError, KeyError, TypeError) as err:
            raise ArtifactError(f"{mpath}: entry {e['file']}: bad labels/normalization ({err})") from None
        out.append(Artifact(
            path=p,
            target=target.name,
            precision=str(e.get("precision") or _precision_from_name(p, target)),
            runtime=target.runtime,
            size_bytes=int(e["size_bytes"]) if e.get("size_bytes") is not None else path_size(p),
            sha256=e.get("sha256"),
            labels=labels,
            normalization=norm,
            model=(src or {}).get("model"),
            source=dict(src or {}),
            manifest=mpath,
            export_complete=_run_complete(data, e),
            # its own files, and its companions' when it is the only main entry of its (target, precision) group
            files=(dict(recorded.get(_group(e), {})) if mains.get(_group(e)) == 1
                   else _recorded_hashes(e, mpath.parent)),
            **_validation(e),
        ))
    if not out:
        raise ArtifactError(f"{mpath}: lists no exported artifact")
    return out


def _group(entry: dict) -> tuple:
    return entry.get("target"), entry.get("precision")


def _recorded_hashes(entry: dict, root: Path) -> dict[str, str]:
    """``{file: sha256}`` of the files a manifest entry records (:func:`fer_edge.exporters.manifest.file_records`),
    those with a name and a hash."""
    from fer_edge.exporters.manifest import file_records

    return {str(root / str(rec["file"])): str(rec["sha256"]) for rec in file_records(entry)
            if isinstance(rec, dict) and rec.get("file") and rec.get("sha256")}


def _companion_of(p: Path, entries: list[dict]) -> str | None:
    """The main artifact a companion entry (``variant`` other than main) of ``p`` belongs to, or None."""
    mine = next((e for e in entries if str(e.get("file")) == p.name), None)
    if mine is None or mine.get("variant", "main") == "main":
        return None
    main = next((e for e in entries if _group(e) == _group(mine) and e.get("variant", "main") == "main"), None)
    return str(main["file"]) if main else _main_name(p)


def _main_name(p: Path) -> str:
    """``x_fp32.mlpackage`` for ``x_fp32_logits.mlpackage``."""
    tail = f"{LOGITS_SUFFIX}.mlpackage"
    return p.name[: -len(tail)] + ".mlpackage" if p.name.endswith(tail) else p.name


def _refuse_companion(p: Path, main: str, where: str) -> None:
    raise ArtifactError(
        f"{p}: this is the parity companion (raw logits, tensor input) of {main}{where}, not an artifact of its "
        f"own: the coreml runtime runs it when benchmarking {main}. Bench {p.parent / main} (or the folder) instead"
    )


def _manifest_for(path: Path) -> Path | None:
    m = path.parent / MANIFEST_NAME
    return m if m.is_file() else None


def collect_artifacts(specs: list[str | Path]) -> list[Artifact]:
    """Artifact dirs (their manifest, plus any artifact file it does not list; or every file with a known
    suffix), manifests, files, and shipped model names (``nano``: its checkpoint, as ``--reference`` resolves it,
    unless a file or folder of that name exists here: the path wins, with a note on the first artifact).

    A single file that a manifest beside it lists is verified against that manifest; an unreadable manifest
    beside it is an :class:`ArtifactError`, as it is for its folder. Files no manifest lists have ``manifest``
    None (the bench warns that they are unverified). Duplicates are dropped, order is kept.
    """
    out: list[Artifact] = []
    notes: list[str] = []
    for spec in specs:
        p = Path(spec)
        shipped = _shipped_name(spec)
        if shipped is not None:
            if p.exists():  # a path in the current folder wins over the shipped model of that name
                notes.append(f"{spec}: benchmarked the {'folder' if p.is_dir() else 'file'} ./{spec}, not the "
                             f"shipped model {spec} ({shipped}; pass that path to bench it)")
            else:
                out.append(artifact_from_file(shipped))
                continue
        if not p.exists():
            raise ArtifactError(f"{p}: no such artifact, directory or manifest"
                                + (f", nor a shipped model name ({', '.join(_shipped_names())})"
                                   if _shipped_names() else ""))
        if p.is_dir() and find_target(p) is None:
            found = sorted(q for q in p.iterdir() if not q.name.startswith(".")
                           and not q.name.endswith("_logits.mlpackage")  # Core ML's companion
                           and find_target(q) is not None)
            if (p / MANIFEST_NAME).is_file():
                out += read_manifest(p / MANIFEST_NAME)
                # artifact files the manifest does not list (copied in, or left by an interrupted later export):
                # benchmarked too, as files no manifest lists (unverified: the bench warns about them)
                listed = _manifest_files(p / MANIFEST_NAME)
                out += [artifact_from_file(q) for q in found if q.name not in listed]
            else:
                if not found:
                    raise ArtifactError(f"{p}: no manifest.json and no exported artifact "
                                        f"({', '.join(t.suffix for t in TARGETS.values())}): export into it first "
                                        f"(fer-edge export MODEL --out {shlex.quote(str(p))}), or bench a checkpoint "
                                        "or a shipped model by name (fer-edge bench small --data DATA)")
                out += [artifact_from_file(q) for q in found]
        elif p.name == MANIFEST_NAME or (p.suffix == ".json" and p.is_file()):
            out += read_manifest(p)
        else:
            manifest = _manifest_for(p)
            listed = None
            if manifest is not None and p.suffix.lower() not in CHECKPOINT_SUFFIXES:
                from fer_edge.exporters.manifest import load_manifest

                # an unreadable manifest beside the file is refused as it is when benching the folder: the file
                # may be one it was meant to verify
                data = load_manifest(manifest)
                entries = [e for e in data.get("artifacts") or [] if isinstance(e, dict)]
                files = {str(e.get("file")) for e in entries}
                if p.name in files:
                    main = _companion_of(p, entries)
                    if main is not None:
                        _refuse_companion(p, main, f" (as {manifest} records)")
                    listed = read_manifest(manifest, only={p.name})
            if not listed and p.name.endswith(f"{LOGITS_SUFFIX}.mlpackage") and (p.parent / _main_name(p)).exists():
                _refuse_companion(p, _main_name(p), "")
            out += listed if listed else [artifact_from_file(p)]
    seen: set[str] = set()
    unique = []
    for a in out:
        if a.key not in seen:
            seen.add(a.key)
            unique.append(a)
    if notes and unique:
        unique[0].notes[:0] = notes  # reference_groups passes every artifact's notes on to the report
    return unique


def _shipped_names() -> list[str]:
    from fer_edge.weights import PRETRAINED  # an unreadable table is empty here (fer_edge.weights.TABLE_PROBLEM)

    return list(PRETRAINED)


def _shipped_name(spec) -> Path | None:
    """The checkpoint of the shipped model ``spec`` names (``nano``), as ``--reference`` resolves it; None when
    ``spec`` is no shipped model's name."""
    if str(spec) not in _shipped_names():
        return None
    from fer_edge.weights import resolve_checkpoint

    try:
        return Path(resolve_checkpoint(str(spec)))
    except FerEdgeError as e:
        raise ArtifactError(f"{spec}: {e}") from None


def _manifest_files(manifest: Path) -> set[str]:
    """Every file name a manifest records (its entries' ``file`` and each entry's ``files``)."""
    from fer_edge.exporters.manifest import load_manifest

    names: set[str] = set()
    for e in load_manifest(manifest).get("artifacts") or []:
        if isinstance(e, dict):
            names.add(str(e.get("file")))
            names.update(str(r.get("file")) for r in e.get("files") or [] if isinstance(r, dict))
    return names


# --- the reference checkpoint -------------------------------------------------------
def _shipped_with_sha(sha: str) -> Path | None:
    from fer_edge.weights import shipped_with_sha

    meta = shipped_with_sha(sha)
    return meta.path if meta is not None else None


def error_text(e: BaseException) -> str:
    """``"InvalidProtobuf: first line of the message"``: how a bench names an error, in one line."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}"[:500] if msg else type(e).__name__


def _embedded_metadata(art: Artifact) -> dict:
    """The fer-edge metadata embedded in the artifact (read once, then kept in ``art.embedded``).

    {} when its runtime is not available here (its rows are skipped), except Core ML, whose metadata
    ``coremltools`` reads on every OS (only running the model needs macOS). When the runtime cannot read the file
    at all (a truncated ``.onnx``), {} too, and ``art.read_error`` says why.
    """
    from fer_edge.runtimes import get_runtime

    if art.embedded is not None:
        return art.embedded
    if art.read_error:
        return {}
    try:
        cls = get_runtime(art.runtime)
        if art.runtime == "coreml":
            from fer_edge.runtimes._common import package_available

            readable = package_available("coremltools")[0]
        else:
            readable = cls.available()[0]
        if not readable:
            return {}
    except Exception:  # the runtime itself is missing: its rows say so (skipped)
        return {}
    try:
        if art.runtime == "coreml":  # the package's own metadata, without compiling it (any OS)
            from fer_edge.runtimes.coreml import read_metadata

            md = dict(read_metadata(art.path) or {})
        else:
            md = dict(cls(art.path).metadata() or {})
    except Exception as e:  # the file cannot be read: keep the reader's error for the user
        if isinstance(e, FerEdgeError):  # already worded for a user, often naming the file
            text = (str(e).strip().splitlines() or [type(e).__name__])[0]
            art.read_error = text.removeprefix(f"{art.path}: ")[:500]
        else:
            art.read_error = error_text(e)
        return {}
    art.embedded = md
    return md


def _metadata_source(art: Artifact) -> dict:
    """``{"sha256", "model"}`` of the source checkpoint from the artifact's embedded metadata
    (:func:`_embedded_metadata`); {} when it cannot be read or names no source."""
    md = _embedded_metadata(art)
    out = {}
    if md.get("source_sha256"):
        out["sha256"] = str(md["source_sha256"])
    if md.get("model"):
        out["model"] = str(md["model"])
    return out


@dataclass
class ReferenceGroup:
    """Artifacts that came from one checkpoint, and that checkpoint (their PyTorch FP32 reference)."""

    path: Path
    artifacts: list[Artifact]
    source: str  # what the group was formed by: the source checkpoint's sha256, or its path


def _source_key(a: Artifact) -> str | None:
    """What identifies the checkpoint ``a`` came from: its sha256 (a checkpoint: its own), else its path."""
    if a.is_checkpoint:
        from fer_edge.utils import sha256_path

        if not a.sha256:
            a.sha256 = a.files.get(str(a.path)) or sha256_path(a.path)  # (hashed when collected)
        return a.sha256
    return a.source.get("sha256") or (f"path:{a.source['path']}" if a.source.get("path") else None)


def _short(path: Path) -> str:
    """``export_dir/file``: enough to tell two exports' files of the same name apart."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _describe_source(arts: list[Artifact]) -> str:
    a = arts[0]
    if a.is_checkpoint:
        return f"checkpoint {a.path.name} (sha256 {str(a.sha256)[:12]})"
    src = a.source
    what = f"{src.get('model') or 'a checkpoint'}"
    if src.get("path"):
        what += f" {Path(str(src['path'])).name}"
    if src.get("sha256"):
        what += f" (sha256 {str(src['sha256'])[:12]})"
    names = ", ".join(_short(x.path) for x in arts[:3]) + (f" and {len(arts) - 3} more" if len(arts) > 3 else "")
    return f"{what}: {names}"


def _source_checkpoint(first: Artifact) -> Path:
    """The checkpoint file the manifest/metadata ``source`` of ``first`` names, verified by its sha256."""
    from fer_edge.utils import sha256_path

    src_path, src_sha = first.source.get("path"), first.source.get("sha256")
    candidates = []
    if src_path:
        p = Path(src_path)
        if not p.is_absolute() and first.manifest is not None:
            candidates.append(first.manifest.parent / p)
        candidates.append(p)
    for p in candidates:
        if p.is_file() and (not src_sha or sha256_path(p) == src_sha):
            return p
    if src_sha:
        shipped = _shipped_with_sha(src_sha)
        if shipped is not None:
            return shipped
    why = f"{src_path} does not exist" if src_path and not any(p.is_file() for p in candidates) else (
        f"{src_path} has changed since the export (sha256 differs)" if src_path else "no source path")
    raise ArtifactError(
        f"cannot find the reference checkpoint of {first.path.name}: {why}, and no shipped model has sha256 "
        f"{(src_sha or '?')[:12]}...; pass --reference CHECKPOINT"
    )


def reference_groups(artifacts: list[Artifact], reference: str | Path | None = None
                     ) -> tuple[list[ReferenceGroup], list[str]]:
    """The artifacts grouped by the checkpoint they came from, each group with its reference; and notes.

    ``reference`` (``--reference``: a path or a shipped name) is the reference of every
    artifact: one group. Otherwise every checkpoint among the artifacts is its own reference,
    and every other artifact is compared with the checkpoint its manifest ``source`` (or its
    embedded ``source_sha256``) names: that checkpoint among the artifacts, else the source file
    when it exists with that SHA-256, else the shipped model with that SHA-256. Artifacts whose
    source is unknown join the only group there is; with several, that is an :class:`ArtifactError`.
    Artifacts their runtime cannot read (a truncated ``.onnx``: ``read_error`` set) join the first
    group, whose bench makes them ``failed`` rows with the loader's error while the others run; when
    no other artifact names a checkpoint, the :class:`ArtifactError` names each one's read error.
    """
    from fer_edge.utils import sha256_path
    from fer_edge.weights import resolve_checkpoint

    notes: list[str] = [n for a in artifacts for n in a.notes]
    if reference is not None:
        path = resolve_checkpoint(reference)
        shas = {a.source.get("sha256") for a in artifacts if a.source.get("sha256")}
        if shas and sha256_path(path) not in shas:
            notes.append(f"--reference {path} is not the checkpoint the artifacts were exported from "
                         f"(manifest source sha256 {', '.join(s[:12] for s in sorted(shas))})")
        return [ReferenceGroup(Path(path), list(artifacts), sha256_path(path))], notes
    by_source: dict[str, list[Artifact]] = {}
    unknown: list[Artifact] = []
    unreadable: list[Artifact] = []  # their runtime cannot read them: `failed` rows, whatever their source
    for a in artifacts:
        if not a.is_checkpoint and not (a.source.get("sha256") or a.source.get("path")):
            a.source = {**a.source, **_metadata_source(a)}
        key = _source_key(a)
        if key is None:
            (unreadable if a.read_error else unknown).append(a)
        else:
            by_source.setdefault(key, []).append(a)
    if not by_source:
        broken = "; ".join(f"{a.path}: cannot read its metadata: {a.read_error}" for a in unreadable)
        if unreadable and not unknown:
            one = len(unreadable) == 1
            raise ArtifactError(
                f"{broken}. {'It' if one else 'They'} cannot be loaded (truncated, or not a model?), and no "
                f"other artifact names a checkpoint to compare {'it' if one else 'them'} with: nothing to "
                f"benchmark. Re-export {'it' if one else 'them'}, or pass --reference CHECKPOINT to get a "
                f"report with {'its' if one else 'their'} `failed` rows"
            )
        raise ArtifactError(
            "cannot tell which checkpoint the artifacts came from (no manifest 'source', no 'source_sha256' "
            "in their metadata); pass --reference CHECKPOINT" + (f" ({broken})" if broken else "")
        )
    if unknown and len(by_source) > 1:
        raise ArtifactError(
            f"cannot tell which checkpoint {', '.join(a.path.name for a in unknown)} came from (no manifest "
            f"'source', no 'source_sha256' in the metadata), and the other artifacts come from "
            f"{len(by_source)} different checkpoints: "
            + "; ".join(_describe_source(v) for v in by_source.values())
            + ". Bench each model separately, or pass --reference CHECKPOINT to compare everything with one"
        )
    if unreadable:
        notes.append("; ".join(f"{a.path}: cannot read its metadata: {a.read_error}" for a in unreadable)
                     + ": benchmarked anyway, so its rows fail with the loader's error and the others run")
    groups: list[ReferenceGroup] = []
    for i, (key, arts) in enumerate(by_source.items()):
        if i == 0:
            arts = arts + unknown + unreadable
        ckpts = [a for a in arts if a.is_checkpoint]
        path = ckpts[0].path if ckpts else _source_checkpoint(arts[0])
        groups.append(ReferenceGroup(Path(path), arts, key))
    if len(groups) > 1:
        notes.append(f"the artifacts come from {len(groups)} checkpoints; each is compared with its own: "
                     + "; ".join(f"{g.path.name} for {', '.join(_short(a.path) for a in g.artifacts)}"
                                 for g in groups))
    return groups, notes


def resolve_reference(artifacts: list[Artifact], reference: str | Path | None = None) -> tuple[Path, list[str]]:
    """The PyTorch checkpoint the artifacts are compared with, and notes about the choice.

    ``reference`` (``--reference``: a path or a shipped name) wins. Otherwise: a
    checkpoint among the artifacts; else the ``source`` checkpoint the manifests name,
    when its file exists and its SHA-256 matches; else the shipped model with that SHA-256.
    Artifacts of several checkpoints: an :class:`ArtifactError` (see :func:`reference_groups`,
    which gives each its own).
    """
    groups, notes = reference_groups(artifacts, reference)
    if len(groups) > 1:
        raise ArtifactError("the artifacts come from several checkpoints: "
                            + "; ".join(_describe_source(g.artifacts) for g in groups)
                            + "; bench them separately, or pass --reference CHECKPOINT")
    return groups[0].path, notes


def unverified(artifacts: list[Artifact]) -> list[Artifact]:
    """Exported artifacts no manifest lists: their SHA-256 was not checked and no export gate passed them."""
    return [a for a in artifacts if a.manifest is None and not a.is_checkpoint]


def gate_failed(artifacts: list[Artifact]) -> list[Artifact]:
    """Exported artifacts their manifest records as having failed the export's parity gate."""
    return [a for a in artifacts if a.export_validation == "failed"]


def _validation(entry: dict) -> dict:
    v = entry.get("validation")
    if not isinstance(v, dict) or not v.get("status"):
        return {}
    return {"export_validation": str(v["status"]), "export_validation_reason": str(v.get("reason") or "")}


def _run_complete(manifest: dict, entry: dict) -> bool | None:
    """Whether the export run that wrote ``entry`` finished: the manifest's ``complete`` for this run's entries,
    the earlier run's for entries kept from one (``earlier_runs``); None when not recorded."""
    done = manifest.get("complete")
    run = entry.get("run")
    if run and run != manifest.get("run_id"):
        earlier = {r.get("run_id"): r.get("complete") for r in manifest.get("earlier_runs") or []
                   if isinstance(r, dict)}
        done = earlier.get(run, done)
    return done if isinstance(done, bool) else None


def unfinished(artifacts: list[Artifact]) -> list[Artifact]:
    """Artifacts written by an export run that did not finish (its ``"complete": false``)."""
    return [a for a in artifacts if a.export_complete is False]


if __name__ == "__main__":
    from fer_edge.benchmarks import not_a_script

    raise SystemExit(not_a_script("artifacts"))

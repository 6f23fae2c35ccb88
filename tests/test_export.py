"""Exporters: every target x precision of the targets table, the parity gate, the manifest, the CLI.

Everything is exported once per session (:func:`export_all`, shared with test_runtimes.py)
from the ``tiny_checkpoint`` fixture, calibrated and validated on ``synthetic_csv``.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from fer_edge.constants import LABELS
from fer_edge.errors import ExportError, FerEdgeError, ParityError
from fer_edge.targets import TARGETS, Precision

#: Calibration images of the session export: below 200, so the warning is exercised too.
CALIB_SIZE = 140
_PLATFORM_NAMES = {"darwin": "macOS", "linux": "Linux", "win": "Windows"}


def _prediction_mark(target):
    where = " or ".join(_PLATFORM_NAMES.get(p, p) for p in target.platforms)
    name = {"coreml": "Core ML"}.get(target.name, target.description.split(" (")[0])
    return pytest.mark.skipif(not target.runs_here(), reason=f"{name} prediction needs {where}")


#: (target, precision) for every precision every target supports: a new target is tested automatically.
CASES = [pytest.param(t.name, p.value, id=f"{t.name}-{p.value}") for t in TARGETS.values() for p in t.precisions]
#: The same, skipped where the target's runtime cannot run (Core ML prediction needs macOS).
RUN_CASES = [
    pytest.param(t.name, p.value, id=f"{t.name}-{p.value}", marks=_prediction_mark(t))
    for t in TARGETS.values() for p in t.precisions
]

#: The parity gate's minimum number of validation images in these tests: the synthetic PublicTest has 84, fewer
#: than the real minimum (512, ``fer_edge.exporters.calibration.MIN_VAL_SIZE``), so the tests lower it to keep
#: testing the gate's logic; the tests of the minimum itself set it back.
SYNTHETIC_GATE_MIN = 64

_CACHE: dict = {}


@pytest.fixture(autouse=True)
def _gate_minimum_for_synthetic_data(monkeypatch):
    from fer_edge.exporters import calibration

    monkeypatch.setattr(calibration, "MIN_VAL_SIZE", SYNTHETIC_GATE_MIN)


def export_all(tmp_path_factory, checkpoint, data):
    """Export every target and precision once per session (shared by the test modules)."""
    key = (str(checkpoint), str(data))
    if key not in _CACHE:
        from fer_edge.exporters import export

        from fer_edge.exporters import calibration

        out = tmp_path_factory.mktemp("exported")
        with pytest.MonkeyPatch.context() as m:  # session-scoped: the autouse fixture has not run yet
            m.setattr(calibration, "MIN_VAL_SIZE", SYNTHETIC_GATE_MIN)
            _CACHE[key] = export(checkpoint, "all", None, out, calib_data=data, calib_size=CALIB_SIZE,
                                 data_progress=False)
    return _CACHE[key]


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_checkpoint, synthetic_csv):
    return export_all(tmp_path_factory, tiny_checkpoint, synthetic_csv)


@pytest.fixture(scope="session")
def val_inputs(synthetic_csv):
    """The synthetic PublicTest images, normalised like the tiny checkpoint's training data."""
    from fer_edge.data import load_split
    from fer_edge.preprocess import Normalization, normalize

    split = load_split(synthetic_csv, "PublicTest", progress=False)
    return normalize(split.images.numpy(), Normalization(0.5, 0.25)), split.labels.numpy()


def _entry(result, target, precision, variant="main"):
    for e in result.manifest["artifacts"]:
        if (e["target"], e["precision"], e["variant"]) == (target, precision, variant):
            return e
    raise AssertionError(f"no manifest entry for {target} {precision} {variant}")


def _artifact(result, target, precision):
    return result.out_dir / _entry(result, target, precision)["file"]


# --- the exporter table ---------------------------------------------------------------------
def test_every_target_has_an_exporter():
    from fer_edge.exporters import exporters

    table = exporters()
    assert set(table) == set(TARGETS)
    for name, cls in table.items():
        assert cls.target is TARGETS[name]


def test_session_export_succeeded(exported):
    assert exported.failed == []
    assert exported.ok, [a.validation for a in exported.parity_failures]
    skipped = {(s["target"], s["precision"]) for s in exported.skipped}
    expected = {(t.name, p.value) for t in TARGETS.values() for p in Precision if p not in t.precisions}
    assert skipped == expected


# --- every target x precision ---------------------------------------------------------------
@pytest.mark.parametrize("target,precision", CASES)
def test_artifact_written_and_listed(exported, target, precision):
    from fer_edge.utils import path_size, sha256_path

    t = TARGETS[target]
    e = _entry(exported, target, precision)
    path = exported.out_dir / e["file"]
    assert path.exists() and path.name == t.filename("fer_nano", precision)
    assert e["sha256"] == sha256_path(path)
    assert e["size_bytes"] == sum(path_size(exported.out_dir / f["file"]) for f in e["files"])
    assert e["labels"] == list(LABELS) and e["normalization"] == {"mean": 0.5, "std": 0.25}
    assert e["inputs"][0]["name"] == "image" and e["outputs"]
    assert e["export_seconds"] > 0 and e["tool_versions"]["torch"]
    assert e["source"]["model"] == "fer_nano"
    if precision == "int8" and target == "coreml" and sys.platform != "darwin":  # weights-only: no images used
        assert e["calibration"] is None and "no calibration image" in e["export"]["calibration"]
    elif precision == "int8":
        cal = e["calibration"]
        assert cal["count"] == CALIB_SIZE and cal["split"] == "Training"
        assert cal["sampling"] == "stratified by class, seed 0" and len(cal["index_hash"]) == 64
    else:
        assert e["calibration"] is None
    v = e["validation"]
    if t.runs_here():
        assert v["status"] == "passed", v
        assert v["n"] == 84 and v["reference_accuracy"] is not None
    else:
        assert v["status"] == "not validated" and "needs macOS" in v["reason"]


@pytest.mark.parametrize("target,precision", RUN_CASES)
def test_artifact_matches_checkpoint(exported, val_inputs, tiny_checkpoint, target, precision):
    from fer_edge import parity
    from fer_edge.runtimes import load_runtime

    x, y = val_inputs
    ref = load_runtime(tiny_checkpoint).run(x)
    rt = load_runtime(_artifact(exported, target, precision))
    logits = rt.run(x)
    assert logits.shape == (len(x), len(LABELS)) and logits.dtype == np.float32
    stats = parity.compare(ref, logits, y)
    assert parity.check(stats, precision) == []


@pytest.mark.parametrize("target,precision", CASES)
def test_metadata_round_trips(exported, tiny_checkpoint, target, precision):
    from fer_edge import __version__
    from fer_edge.exporters.metadata import META_KEYS, ArtifactMeta
    from fer_edge.runtimes import runtime_for_path
    from fer_edge.utils import sha256_path

    path = _artifact(exported, target, precision)
    md = runtime_for_path(path)(path).metadata()  # Core ML: readable off macOS too
    assert set(META_KEYS) <= set(md)
    assert json.loads(md["labels"]) == list(LABELS)
    assert json.loads(md["normalization"]) == {"mean": 0.5, "std": 0.25}
    assert md["model"] == "fer_nano"
    assert md["source_sha256"] == sha256_path(tiny_checkpoint)
    assert md["fer_edge_version"] == __version__
    assert (md["precision"], md["target"]) == (precision, target)
    meta = ArtifactMeta.from_dict(md)
    assert meta.normalization.std == 0.25
    manifest_md = _entry(exported, target, precision)["metadata"]
    assert {k: md[k] for k in META_KEYS} == {k: manifest_md[k] for k in META_KEYS}


def test_manifest_hashes_match_the_files(exported, tiny_checkpoint):
    from fer_edge.exporters import load_manifest, verify_manifest
    from fer_edge.utils import sha256_path

    data = load_manifest(exported.manifest_path)
    assert verify_manifest(exported.manifest_path) == []
    for e in data["artifacts"]:
        for f in e["files"]:
            assert sha256_path(exported.out_dir / f["file"]) == f["sha256"]
    assert data["source"]["sha256"] == sha256_path(tiny_checkpoint)
    assert data["calibration"]["count"] == CALIB_SIZE
    assert data["validation_data"]["split"] == "PublicTest"
    assert set(data["thresholds"]) == {p.value for p in Precision}
    assert any("calibration images" in w for w in data["warnings"])  # fewer than 200


def test_manifest_detects_a_modified_file(exported, tmp_path):
    import shutil

    from fer_edge.exporters import verify_manifest

    copy = tmp_path / "copy"
    shutil.copytree(exported.out_dir, copy)
    ts = copy / TARGETS["torchscript"].filename("fer_nano", "fp32")
    ts.write_bytes(ts.read_bytes() + b"\0")
    problems = verify_manifest(copy)
    assert len(problems) == 1 and ts.name in problems[0]


# --- target specifics -----------------------------------------------------------------------
def test_onnx_graphs(exported):
    import onnx

    fp32, fp16, int8 = (onnx.load(str(_artifact(exported, "onnx", p))) for p in ("fp32", "fp16", "int8"))
    for m in (fp32, fp16, int8):
        onnx.checker.check_model(m, full_check=True)
        (inp,), (out,) = m.graph.input, m.graph.output
        assert (inp.name, out.name) == ("image", "logits")
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 48, 48]
        assert inp.type.tensor_type.elem_type == out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in int8.graph.initializer)
    assert _entry(exported, "onnx", "int8")["export"]["quantization"]["calibration_method"] == "minmax"


def test_openvino_ir(exported):
    sizes = {}
    for p in ("fp32", "fp16", "int8"):
        e = _entry(exported, "openvino", p)
        names = [f["file"] for f in e["files"]]
        assert names[0].endswith(".xml") and names[1].endswith(".bin")
        sizes[p] = (exported.out_dir / names[1]).stat().st_size
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["int8"] < sizes["fp32"]
    xml = _artifact(exported, "openvino", "int8").read_text()
    assert "FakeQuantize" in xml
    assert _entry(exported, "openvino", "fp32")["validation"]["precision_hint"] == "f32"


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_torchscript_input_has_the_manifests_name(exported):
    """The manifest says the input is `image`: a caller passing it by name must not meet the model's own `x`."""
    import torch

    entry = _entry(exported, "torchscript", "fp32")
    name = entry["inputs"][0]["name"]
    module = torch.jit.load(str(_artifact(exported, "torchscript", "fp32")))
    assert [a.name for a in module.forward.schema.arguments[1:]] == [name]
    x = torch.rand(3, 1, 48, 48)
    with torch.no_grad():
        assert torch.equal(module(**{name: x}), module(x))


def test_every_exported_file_has_the_umasks_modes(exported):
    """Another user (a container's, a web server's) can read what others may: coremltools saved its packages
    with owner-only files (600) and folders (700) while every other artifact had the umask's modes."""
    from fer_edge.utils import current_umask

    mask = current_umask()
    seen = set()
    for a in exported.artifacts:
        paths = [a.path, *(a.path.rglob("*") if a.path.is_dir() else [])]
        for p in paths:
            want = (0o777 if p.is_dir() else 0o666) & ~mask
            assert p.stat().st_mode & 0o777 == want, f"{p}: {oct(p.stat().st_mode & 0o777)}, not {oct(want)}"
        seen.add(a.target)
    assert seen == set(TARGETS)  # every target was looked at


@pytest.mark.parametrize("precision", [p.value for p in TARGETS["coreml"].precisions])
def test_coreml_spec(exported, precision):
    from fer_edge.exporters.coreml import inspect_package, logits_path
    from fer_edge.exporters.metadata import META_KEYS

    main = _artifact(exported, "coreml", precision)
    info = inspect_package(main)
    assert info["model_type"] == "mlProgram"
    assert info["input_kind"] == "imageType" and info["color_space"] == "GRAYSCALE"
    assert (info["width"], info["height"]) == (48, 48)
    assert info["class_labels"] == list(LABELS) and info["predicted_feature"] == "classLabel"
    assert info["scale"] == pytest.approx(1 / (255 * 0.25)) and info["bias"] == pytest.approx(-2.0)
    assert set(META_KEYS) <= set(info["metadata"])
    assert info["author"] and info["license"] and info["description"] and info["version"]
    logits = inspect_package(logits_path(main))
    assert logits["input_kind"] == "multiArrayType" and logits["shape"] == [1, 1, 48, 48]
    # float32 in and out at every precision (fp16 and int8 packages were float16), as the manifest says
    assert logits["dtype"] == "float32"
    assert logits["outputs"] == [{"name": "logits", "kind": "multiArrayType", "dtype": "float32"}]
    entry = _entry(exported, "coreml", precision, "logits")
    assert entry["file"] == logits_path(main).name
    assert [i["dtype"] for i in entry["inputs"]] == [logits["dtype"]]
    assert [o["dtype"] for o in entry["outputs"]] == [o["dtype"] for o in logits["outputs"]]
    if precision == "int8" and sys.platform != "darwin":
        assert "needs macOS" in _entry(exported, "coreml", "int8")["export"]["activation_quantization"]


# --- the parity gate through the CLI --------------------------------------------------------
def _perturb_onnx(path):
    """Flip the sign of the largest initializer: a valid-looking but wrong model."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    init = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(m, str(path))


def test_wrong_artifact_fails_the_gate(monkeypatch, tmp_path, tiny_checkpoint, synthetic_csv):
    from fer_edge.cli import app
    from fer_edge.exporters.onnx import OnnxExporter

    original = OnnxExporter.export

    def wrong(self, req, precision, out_path):
        files = original(self, req, precision, out_path)
        _perturb_onnx(out_path)
        return files

    monkeypatch.setattr(OnnxExporter, "export", wrong)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "--target", "onnx", "-t", "torchscript",
                                   "--precision", "fp32", "--val-data", str(synthetic_csv), "--out", str(out)])
    assert res.exit_code != 0
    assert "failed the parity gate" in res.output and "agreement" in res.output
    assert "--min-agreement" in " ".join(res.output.split())  # how to accept it, should the user choose to
    data = json.loads((out / "manifest.json").read_text())
    status = {e["target"]: e["validation"]["status"] for e in data["artifacts"]}
    assert status == {"onnx": "failed", "torchscript": "passed"}
    bad = next(e for e in data["artifacts"] if e["target"] == "onnx")
    assert bad["validation"]["failures"] and bad["validation"]["agreement"] < 1.0


def test_threshold_overrides_are_applied(tmp_path, tiny_checkpoint, synthetic_csv):
    from fer_edge.cli import app

    out = tmp_path / "out"
    # ONNX, not TorchScript: a limit is inclusive, and TorchScript's logits are bit-identical (max diff 0 <= 0)
    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "onnx", "-p", "fp32",
                                   "--val-data", str(synthetic_csv), "--out", str(out),
                                   "--max-abs-diff", "fp32=0", "--min-agreement", "fp32=0.5"])
    assert res.exit_code == 1  # ONNX Runtime's max diff (a few 1e-6) is above 0: the gate must fail
    data = json.loads((out / "manifest.json").read_text())
    assert data["thresholds"]["fp32"]["max_abs_diff"] == 0.0
    assert data["thresholds"]["fp32"]["min_agreement"] == 0.5
    assert data["artifacts"][0]["validation"]["status"] == "failed"


def test_a_clean_export_says_what_to_run_next(tmp_path, tiny_checkpoint, synthetic_csv):
    """QA: the main job ended on the table; now a bench command on the data the gate used, and predict with the
    smallest artifact that passed and runs here. A failed export prints neither (its error says what to do)."""
    import shlex

    from fer_edge.cli import app

    out = tmp_path / "my exports"
    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "onnx,torchscript", "-p", "fp32,fp16",
                                   "--val-data", str(synthetic_csv), "--out", str(out)], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    data = json.loads((out / "manifest.json").read_text())
    split = data["validation_data"]["split"]
    assert (f"next:\n  fer-edge bench {shlex.quote(str(out))} --data {shlex.quote(str(synthetic_csv))} "
            f"--split {split}   # ") in res.stderr, res.stderr
    smallest = min((e for e in data["artifacts"] if e["validation"]["status"] == "passed"),
                   key=lambda e: e["size_bytes"])
    assert f"\n  fer-edge predict --model {shlex.quote(str(out / smallest['file']))} PHOTO.jpg   # " in res.stderr
    # each command line runs as pasted: the notes are shell comments
    for line in res.stderr.splitlines():
        if line.startswith("  fer-edge "):
            argv = shlex.split(line, comments=True)
            assert argv[0] == "fer-edge" and "#" not in argv, argv

    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "torchscript", "--no-validate",
                                   "--out", str(tmp_path / "b")], env={"COLUMNS": "400"})
    assert res.exit_code == 0, res.output
    assert "--data DATA" in res.stderr and "fer-edge predict" not in res.stderr  # nothing passed a gate

    if sys.platform != "darwin":  # only Core ML, which runs on macOS alone: nothing to bench or predict with here
        res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "coreml", "-p", "fp32",
                                       "--val-data", str(synthetic_csv), "--out", str(tmp_path / "d")])
        assert res.exit_code == 0 and "next:" not in res.stderr, res.output

    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "onnx", "-p", "fp32",
                                   "--val-data", str(synthetic_csv), "--out", str(tmp_path / "c"),
                                   "--max-abs-diff", "fp32=0"])  # ONNX: not bit-identical, so above a 0 limit
    assert res.exit_code == 1 and "next:" not in res.output


# --- CLI errors -----------------------------------------------------------------------------
def test_int8_without_calibration_data_is_a_clear_error(tiny_checkpoint, tmp_path):
    from fer_edge.cli import app
    from fer_edge.exporters import export

    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "onnx", "-p", "int8", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "int8" in res.output and "--calib-data" in res.output
    with pytest.raises(FerEdgeError, match="--calib-data"):
        export(tiny_checkpoint, ["onnx"], ["int8"], tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args,valid",
    [
        (["--target", "onnx,tflite"], "onnx, openvino, coreml, torchscript, all"),
        (["--target", "ONNX"], "onnx, openvino, coreml, torchscript, all"),
        (["-t", "onnx", "--precision", "fp32", "-p", "fp64"], "fp32, fp16, int8"),
    ],
)
def test_unknown_values_are_rejected(tiny_checkpoint, tmp_path, args, valid):
    from fer_edge.cli import app

    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), *args, "--out", str(tmp_path)])
    assert res.exit_code == 2  # a usage error
    assert "unknown" in res.output and valid in res.output


def test_default_checkpoint_error_is_clear(tmp_path, monkeypatch):
    import fer_edge.weights
    from fer_edge.cli import app

    monkeypatch.setattr(fer_edge.weights, "PRETRAINED", {})  # as if no weight shipped
    res = CliRunner().invoke(app, ["export", "-p", "fp32", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "shipped" in res.output


def test_no_validate_and_only_supported_precisions(tiny_checkpoint, tmp_path):
    from fer_edge.cli import app

    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "torchscript", "-p", "fp32,fp16",
                                   "--no-validate", "--out", str(tmp_path), "--name", "tiny"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["file"] for e in data["artifacts"]] == ["tiny_fp32.ts"]
    assert data["artifacts"][0]["validation"]["status"] == "not validated"
    assert data["skipped"] == [{"target": "torchscript", "precision": "fp16", "code": "unsupported-precision",
                                "reason": "torchscript supports fp32 only"}]
    assert "torchscript" in res.output


# --- failures stay local; writes are atomic ---------------------------------------------------
def test_a_failing_target_does_not_stop_the_others(monkeypatch, tiny_checkpoint, tmp_path):
    from fer_edge.exporters import export
    from fer_edge.exporters.onnx import OnnxExporter
    from fer_edge.exporters.openvino import OpenVINOExporter

    def boom(self, req, precision, out_path):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(OpenVINOExporter, "export", boom)
    monkeypatch.setattr(OnnxExporter, "packages", ("onnx", "surely_not_installed_pkg"))
    with pytest.raises(ExportError) as info:
        export(tiny_checkpoint, ["openvino", "onnx", "torchscript"], ["fp32"], tmp_path, validate=False)
    result = info.value.result
    failed = {f["target"]: f["reason"] for f in result.failed}
    assert "converter exploded" in failed["openvino"]
    assert "surely_not_installed_pkg" in failed["onnx"] and "pip install" in failed["onnx"]
    assert [a.target for a in result.artifacts] == ["torchscript"]
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert {f["target"] for f in data["failed"]} == {"openvino", "onnx"}
    assert [e["target"] for e in data["artifacts"]] == ["torchscript"]
    assert not (tmp_path / "fer_nano_fp32.xml").exists()


@pytest.mark.parametrize("target", list(TARGETS))
def test_interrupted_write_leaves_no_artifact(monkeypatch, tiny_checkpoint, tmp_path, target):
    """Interrupt right before the final rename: nothing under the final name, no temp debris."""
    from fer_edge.checkpoint import load_checkpoint
    from fer_edge.exporters import ExportRequest, build_metadata, get_exporter

    ckpt = load_checkpoint(tiny_checkpoint)
    req = ExportRequest(model=ckpt.build_model(), ckpt=ckpt, metadata=build_metadata(ckpt, "fp32", target))
    path = tmp_path / TARGETS[target].filename("fer_nano", "fp32")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    exporter = get_exporter(target)()
    with monkeypatch.context() as m:
        m.setattr(os, "replace", interrupted)
        with pytest.raises(KeyboardInterrupt):
            exporter.export(req, Precision.fp32, path)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


# --- the parity API ---------------------------------------------------------------------------
def test_parity_compare_and_check():
    from fer_edge import parity

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(200, 7)).astype(np.float32)
    labels = ref.argmax(1)
    same = parity.compare(ref, ref.copy(), labels)
    assert (same.agreement, same.max_abs_diff, same.flips, same.accuracy) == (1.0, 0.0, 0, 1.0)
    assert same.kl == pytest.approx(0.0, abs=1e-12)
    assert parity.check(same, "fp32") == []

    worse = ref.copy()
    worse[:10] = np.roll(worse[:10], 1, axis=1)  # move the top class of 10 rows
    stats = parity.compare(ref, worse, labels)
    assert stats.flips == 10 and stats.agreement == pytest.approx(0.95) and stats.accuracy_drop == pytest.approx(0.05)
    reasons = parity.check(stats, "int8")
    assert len(reasons) == 2 and "agreement" in reasons[0] and "accuracy" in reasons[1]
    loose = parity.with_overrides({"min_agreement": {"int8": 0.9}, "max_accuracy_drop": {"int8": None}})
    assert parity.check(stats, "int8", loose) == []
    assert parity.check(stats, "int8", parity.Thresholds(min_agreement=0.96)) != []

    # KL(p || q) by hand: p = (1/2, 1/4, 1/4), q = (1/4, 1/2, 1/4) gives ln2/2 - ln2/4 = ln2/4; a same row gives 0
    p_, q_ = np.log([[0.5, 0.25, 0.25]] * 2), np.log([[0.25, 0.5, 0.25], [0.5, 0.25, 0.25]])
    stats = parity.compare(p_ + 3.0, q_ - 1.0)  # logits: a constant per row leaves the softmax as it is
    assert stats.kl == pytest.approx(np.log(2) / 8)
    assert parity.check(stats, "fp32", parity.Thresholds(max_kl=0.09)) == []
    (reason,) = parity.check(stats, "fp32", parity.Thresholds(max_kl=0.08))
    assert reason == "mean KL 0.0866 > 0.08"

    nan = ref.copy()
    nan[0, 0] = np.nan  # a non-finite row counts as a flip, and the max diff is infinite
    stats = parity.compare(ref, nan)
    assert stats.flips == 1 and stats.max_abs_diff == float("inf")
    assert any("max |logit diff|" in r for r in parity.check(stats, "fp32"))


def test_parse_override():
    from fer_edge import parity

    assert parity.parse_override(["int8=0.97", "fp16=0.99,fp32=none"], "--min-agreement") == {
        Precision.int8: 0.97, Precision.fp16: 0.99, Precision.fp32: None}
    for bad, msg in (("int4=0.9", "valid: fp32, fp16, int8"), ("int8", "PRECISION=VALUE"), ("int8=abc", "number")):
        with pytest.raises(FerEdgeError, match=msg):
            parity.parse_override([bad], "--min-agreement")
    with pytest.raises(FerEdgeError, match="unknown threshold"):
        parity.with_overrides({"min_accuracy": {"int8": 0.5}})
    # with the threshold it sets, the option's range is checked too, naming the option; every problem at once
    assert parity.parse_override(["int8=0.97"], "--min-agreement", "min_agreement") == {Precision.int8: 0.97}
    with pytest.raises(FerEdgeError) as err:
        parity.parse_override(["int8=1.5,fp32=abc", "int4=1"], "--min-agreement", "min_agreement")
    assert str(err.value) == ("--min-agreement: 'int8=1.5' must be between 0 and 1; 'abc' is not a number (in "
                              "'fp32=abc'); unknown precision 'int4' in 'int4=1' (valid: fp32, fp16, int8)")
    assert parity.parse_override(["int8=5"], "--max-kl", "max_kl") == {Precision.int8: 5.0}
    assert parity.parse_override(["INT8=0.9"], "--min-agreement", "min_agreement") == {Precision.int8: 0.9}
    with pytest.raises(FerEdgeError, match=r"int8 is given twice \(in 'int8=0.8'\)"):
        parity.parse_override(["int8=0.9", "int8=0.8"], "--min-agreement", "min_agreement")
    # every option's problems in one error
    with pytest.raises(FerEdgeError) as err:
        parity.parse_overrides({"min_agreement": ["int8=1.5"], "max_kl": None, "max_abs_diff": ["fp32=-1"],
                                "max_accuracy_drop": ["bad"]})
    assert str(err.value).splitlines() == ["--min-agreement: 'int8=1.5' must be between 0 and 1",
                                           "--max-abs-diff: 'fp32=-1' must be a finite non-negative number",
                                           "--max-accuracy-drop: expected PRECISION=VALUE (e.g. int8=0.97), got 'bad'"]
    assert parity.parse_overrides({"max_kl": ["fp16=0.1"], "min_agreement": []}) == {"max_kl": {Precision.fp16: 0.1}}
    with pytest.raises(FerEdgeError, match=r"^--max-kl: 'int8=nan' must be a finite non-negative number$"):
        parity.parse_override(["int8=nan"], "--max-kl", "max_kl")


@pytest.mark.parametrize("command", ["export", "bench"])
def test_cli_threshold_out_of_range_names_the_option(command, tmp_path, synthetic_csv):
    """Refused before any work, naming the option as typed (not the library's int8.max_accuracy_drop)."""
    from fer_edge.cli import app

    runner = CliRunner()
    args = ["nano"] if command == "export" else ["--data", str(synthetic_csv)]
    res = runner.invoke(app, [command, *args, "--max-accuracy-drop", "int8=2", "--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "--max-accuracy-drop: 'int8=2' must be between 0 and 1" in " ".join(res.output.split())
    assert not (tmp_path / "o").exists()


def test_parity_error_is_raised_after_the_manifest(monkeypatch, tiny_checkpoint, synthetic_csv, tmp_path):
    from fer_edge.exporters import export
    from fer_edge.parity import Thresholds

    with pytest.raises(ParityError) as info:
        export(tiny_checkpoint, ["onnx"], ["fp32"], tmp_path, val_data=synthetic_csv,  # not bit-identical
               thresholds={"fp32": Thresholds(max_abs_diff=0.0)}, data_progress=False)
    assert (tmp_path / "manifest.json").is_file()
    assert info.value.result.parity_failures[0].target == "onnx"


def test_calib_method_option(tiny_checkpoint, synthetic_csv, tmp_path):
    from fer_edge.cli import app

    args = ["export", str(tiny_checkpoint), "-t", "onnx", "-p", "int8", "--calib-data", str(synthetic_csv),
            "--calib-size", "210", "--no-validate", "--out", str(tmp_path)]
    bad = CliRunner().invoke(app, [*args, "--calib-method", "kl"])
    assert bad.exit_code == 2 and "minmax, entropy, percentile" in bad.output
    res = CliRunner().invoke(app, [*args, "--calib-method", "percentile"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "manifest.json").read_text())
    (entry,) = data["artifacts"]
    assert entry["export"]["quantization"]["calibration_method"] == "percentile"
    assert data["calibration_method"] == "percentile" and entry["calibration"]["count"] == 210
    assert "warning" not in res.output  # 210 >= 200 calibration images


def test_openvino_int8_keeps_only_the_first_convolution_in_float(exported):
    import openvino as ov

    model = ov.Core().read_model(_artifact(exported, "openvino", "int8"))
    convs = [op for op in model.get_ordered_ops() if op.get_type_name() in ("Convolution", "GroupConvolution")]

    def quantized_input(op) -> bool:
        # an activation path into the conv passes a FakeQuantize (possibly through a Convert)
        src = op.input_value(0).get_node()
        return src.get_type_name() == "FakeQuantize"

    assert len(convs) >= 2
    assert not quantized_input(convs[0])
    assert all(quantized_input(c) for c in convs[1:])
    kept = _entry(exported, "openvino", "int8")["export"]["quantization"]["ignored_scope"]["layers"]
    assert kept == [convs[0].get_friendly_name()]


@pytest.mark.parametrize("name", __import__("fer_edge.models", fromlist=["list_models"]).list_models())
def test_onnx_int8_export_works_for_every_registered_model(name, synthetic_csv, tmp_path):
    """quant_pre_process's symbolic shape inference once failed on cbam_cnn; every model must quantize."""
    import torch

    from fer_edge.checkpoint import save_checkpoint
    from fer_edge.exporters import export
    from fer_edge.models import create_model

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / f"{name}.pt", {
        "model": name, "model_kwargs": {}, "state_dict": create_model(name).eval().state_dict(),
        "labels": list(LABELS), "normalization": {"mean": 0.5, "std": 0.25}, "train_config": {"model": name},
    })
    result = export(ckpt, ["onnx"], ["int8"], tmp_path / "out", calib_data=synthetic_csv, calib_size=16,
                    validate=False, data_progress=False, raise_on_failure=False, on_warning=lambda w: None)
    assert not result.failed, result.failed
    artifact = tmp_path / "out" / f"{name}_int8.onnx"
    # and ONNX Runtime loads and runs it as fer-edge's runtime does (exact U8S8, all graph optimisations):
    # cbam_cnn's shared-weight graph once exported fine but failed to load in onnxruntime 1.32
    from fer_edge.runtimes.onnxruntime import OnnxRuntime

    logits = OnnxRuntime(artifact, threads=1).run(np.zeros((2, 1, 48, 48), np.float32))
    assert logits.shape == (2, len(LABELS)) and np.isfinite(logits).all()


def test_unshare_weights_gives_each_user_its_own_copy():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from fer_edge.exporters.onnx import unshare_weights

    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    b = numpy_helper.from_array(np.ones(2, np.float32), "b")
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y1"], transB=1),
             helper.make_node("Gemm", ["x", "w", "b"], ["y2"], transB=1),
             helper.make_node("Add", ["y1", "y2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert unshare_weights(model) == 2
    assert [list(n.input) for n in model.graph.node[:2]] == [["x", "w", "b"], ["x", "w__use1", "b__use1"]]
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert np.array_equal(values["w__use1"], values["w"]) and np.array_equal(values["b__use1"], values["b"])
    onnx.checker.check_model(model, full_check=True)
    assert unshare_weights(model) == 0  # nothing shared any more


def _int8_weight_ranges(xml) -> list[int]:
    """The largest |value| of each of the IR's int8 weight constants."""
    import numpy as np
    import openvino as ov

    model = ov.Core().read_model(xml)
    consts = [op for op in model.get_ordered_ops()
              if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8]
    return [int(np.abs(c.get_data().astype(np.int32)).max()) for c in consts]


def test_overflow_fix_option_gives_openvino_weights_7_bits(tiny_checkpoint, synthetic_csv, tmp_path):
    from fer_edge.cli import app

    def run(*extra):
        out = tmp_path / ("_".join(extra) or "default")
        res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "openvino", "-p", "int8", "--calib-data",
                                       str(synthetic_csv), "--calib-size", "210", "--no-validate", "--out", str(out),
                                       *extra])
        return res, out

    bad, _ = run("--overflow-fix", "on")
    assert bad.exit_code == 2 and "first-layer" in bad.output
    res, out = run()
    assert res.exit_code == 0, res.output
    (entry,) = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert entry["export"]["quantization"]["overflow_fix"].startswith("first layer only")
    default = _int8_weight_ranges(out / entry["file"])
    res, out = run("--overflow-fix", "enable")
    assert res.exit_code == 0, res.output
    (entry,) = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert entry["export"]["quantization"]["overflow_fix"].startswith("7-bit weights in every layer")
    fixed = _int8_weight_ranges(out / entry["file"])
    # same layers; NNCF gives the convolutions 7-bit weights (-64..64; its fix leaves depthwise ones at 8)
    assert len(fixed) == len(default) > 2
    assert sum(r <= 64 for r in fixed) >= sum(r <= 64 for r in default) + 2


@pytest.mark.parametrize("saturates", [True, False], ids=["no-vnni", "vnni"])
def test_openvino_int8_gate_failure_names_the_overflow_fix_on_cpus_without_vnni(
        tiny_checkpoint, synthetic_csv, tmp_path, monkeypatch, saturates):
    from fer_edge.cli import app
    from fer_edge import cpu

    monkeypatch.setattr(cpu, "int8_can_saturate_here", lambda: saturates)
    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "openvino", "-p", "int8", "--calib-data",
                                   str(synthetic_csv), "--calib-size", "210", "--max-abs-diff", "int8=0",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 1
    assert ("--overflow-fix enable" in res.output) is saturates


def test_a_shipped_weights_own_gate_applies_under_the_cli_overrides(monkeypatch, tiny_checkpoint, synthetic_csv,
                                                                   tmp_path):
    """The gate recorded with a shipped weight replaces the defaults it names; --max-abs-diff etc. still win."""
    import fer_edge.weights as weights
    from fer_edge.cli import app
    from fer_edge.exporters import export
    from fer_edge.parity import Thresholds
    from fer_edge.weights import WeightMeta

    meta = WeightMeta(name="tiny", architecture="simple_cnn", file=str(tiny_checkpoint), params=1, macs=1,
                      mean=0.5, std=0.25, parity_gate={"fp32": {"max_abs_diff": 0.0}},
                      parity_gate_reason="a test gate no artifact meets")
    monkeypatch.setattr(weights, "PRETRAINED", {"tiny": meta})
    # ONNX: its logits are not bit-identical, so a max_abs_diff of 0 fails it (TorchScript's passes: 0 <= 0)
    args = ["export", str(tiny_checkpoint), "-t", "onnx", "-p", "fp32", "--val-data", str(synthetic_csv)]

    strict = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert strict.exit_code == 1
    assert "tiny's own" in strict.output and "max_abs_diff 0.0" in strict.output
    data = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert data["thresholds"]["fp32"] == {**Thresholds(min_agreement=1.0, max_abs_diff=0.0).to_dict()}
    assert data["thresholds"]["int8"]["min_agreement"] == 0.985  # precisions the gate leaves out keep the defaults
    assert data["thresholds_source"]["weight"]["name"] == "tiny" and not data["thresholds_source"]["defaults"]

    loose = CliRunner().invoke(app, [*args, "--max-abs-diff", "fp32=1", "--out", str(tmp_path / "b")])
    assert loose.exit_code == 0, loose.output
    data = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert data["thresholds"]["fp32"]["max_abs_diff"] == 1.0
    assert data["thresholds_source"]["overrides"] == {"max_abs_diff": {"fp32": 1.0}}

    # a whole table from a Python caller is used as given, without the weight's gate
    res = export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path / "c", val_data=synthetic_csv,
                 thresholds={"fp32": Thresholds(max_abs_diff=1.0)}, data_progress=False)
    assert res.ok and res.manifest["thresholds_source"]["caller_table"]
    with pytest.raises(FerEdgeError, match="not both"):
        export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path / "d", val_data=synthetic_csv,
               thresholds={"fp32": Thresholds()}, threshold_overrides={"max_kl": {"fp32": 1.0}})

    # without the shipped entry the defaults apply and say so
    monkeypatch.setattr(weights, "PRETRAINED", {})
    res = export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path / "e", val_data=synthetic_csv,
                 data_progress=False)
    assert res.ok and res.manifest["thresholds_source"]["defaults"]


def test_without_precision_or_calibration_data_int8_is_left_out_and_said_so(tiny_checkpoint, tmp_path):
    """`fer-edge export --target onnx` works without --calib-data: fp32 and fp16, int8 listed as skipped."""
    from fer_edge.cli import app
    from fer_edge.exporters.api import INT8_NEEDS_CALIBRATION

    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "onnx,torchscript", "--no-validate",
                                   "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "int8 not exported (onnx)" in " ".join(res.output.split()) and "--calib-data" in res.output
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted((e["target"], e["precision"]) for e in data["artifacts"]) == [
        ("onnx", "fp16"), ("onnx", "fp32"), ("torchscript", "fp32")]
    assert {"target": "onnx", "precision": "int8", "code": "needs-calibration",
            "reason": INT8_NEEDS_CALIBRATION} in data["skipped"]
    assert not list(tmp_path.glob("*int8*"))



@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS Core ML's int8 calibrates activations on images")
def test_coreml_int8_off_macos_needs_no_calibration_images(tiny_checkpoint, tmp_path):
    """Off macOS Core ML's INT8 is weights-only: it is neither skipped for want of --calib-data nor refused
    without it (QA: the note asked for images the export then did not use), while ONNX's int8 still is."""
    from fer_edge.cli import app

    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "coreml,onnx", "--no-validate",
                                   "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "int8 not exported (onnx)" in " ".join(res.output.split())
    data = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert ("coreml", "int8") in {(e["target"], e["precision"]) for e in data["artifacts"]}
    assert [(s["target"], s["precision"]) for s in data["skipped"]] == [("onnx", "int8")]

    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "coreml", "-p", "int8", "--no-validate",
                                   "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "b").glob("*_int8.mlpackage"))) == 1, res.output

    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "coreml,onnx", "-p", "int8",
                                   "--no-validate", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2
    assert "int8 export needs calibration images (onnx int8)" in " ".join(res.output.split()), res.output

    # data this export would not read is still checked (QA: a mistyped --calib-data passed with exit 0)
    photo = tmp_path / "face.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0")
    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "coreml", "-p", "int8", "--no-validate",
                                   "--calib-data", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "--calib-data: " in res.output and "no such file" in res.output, res.output
    res = CliRunner().invoke(app, ["export", str(tiny_checkpoint), "-t", "coreml", "-p", "fp16",
                                   "--val-data", str(photo), "--out", str(tmp_path / "f")])
    assert res.exit_code == 2 and "--val-data: " in res.output and "a single image" in res.output, res.output
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()


# --- refused up front: nothing written, no folder left behind (QA findings) -------------------
def _other_checkpoint(tmp_path):
    """A second fer_nano checkpoint (other weights, so another SHA-256) with the same file stem."""
    import torch

    from fer_edge.checkpoint import save_checkpoint
    from fer_edge.models import create_model

    torch.manual_seed(1)
    return save_checkpoint(tmp_path / "other.pt", {
        "model": "fer_nano", "model_kwargs": {}, "state_dict": create_model("fer_nano").eval().state_dict(),
        "labels": list(LABELS), "normalization": {"mean": 0.5, "std": 0.25}, "train_config": {"model": "fer_nano"},
    })


def _cli(*args):
    from fer_edge.cli import app

    return CliRunner().invoke(app, ["export", *map(str, args)])


@pytest.mark.parametrize("name", ["../escape", "sub/x", "a\\b", "a..b", "", " ", ".", "..", "..."])
def test_a_name_that_is_not_a_plain_stem_is_refused(tiny_checkpoint, tmp_path, name):
    out = tmp_path / "out"
    res = _cli(tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--no-validate", "--name", name, "--out", out)
    assert res.exit_code == 2 and "error:" in res.output  # a usage error: the value is wrong on its own
    assert "--name" in res.output and "path separator" in " ".join(res.output.split())
    assert sorted(tmp_path.rglob("*")) == []  # nothing written, outside --out or in it; --out not created
    from fer_edge.exporters import export

    with pytest.raises(FerEdgeError, match="--name"):
        export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False, name=name)


def test_a_plain_name_with_dots_is_kept(tiny_checkpoint, tmp_path):
    res = _cli(tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--no-validate", "--name", "nano.v2",
               "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "nano.v2_fp32.ts").is_file()


def test_another_checkpoints_export_folder_is_refused(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    first = _cli(tiny_checkpoint, "-t", "onnx", "-p", "fp32", "--no-validate", "--out", out)
    assert first.exit_code == 0, first.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = _other_checkpoint(tmp_path)
    res = _cli(other, "-t", "torchscript", "--no-validate", "--out", out)
    assert res.exit_code == 1
    flat = "".join(res.output.split())
    assert str(tiny_checkpoint.resolve()) in flat and str(other) in flat  # both checkpoints named
    assert "Pickanother--out,pass--replace" in flat and "error:" in flat
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written or removed
    replaced = _cli(other, "-t", "torchscript", "--no-validate", "--out", out, "--replace")
    assert replaced.exit_code == 0, replaced.output
    assert sorted(p.name for p in out.iterdir()) == ["fer_nano_fp32.ts", "manifest.json"]  # the old .onnx went
    _cli(tiny_checkpoint, "-t", "onnx", "-p", "fp32", "--no-validate", "--out", out, "--replace")

    # the same checkpoint may add targets, and the manifest keeps the earlier ones
    again = _cli(tiny_checkpoint, "-t", "torchscript", "--no-validate", "--out", out)
    assert again.exit_code == 0, again.output
    data = json.loads((out / "manifest.json").read_text())
    assert sorted(e["file"] for e in data["artifacts"]) == ["fer_nano_fp32.onnx", "fer_nano_fp32.ts"]


def test_replace_other_clears_the_earlier_checkpoints_files(tiny_checkpoint, tmp_path):
    from fer_edge.exporters import export, verify_manifest

    out = tmp_path / "out"
    export(tiny_checkpoint, ["onnx"], ["fp32"], out, validate=False)
    keep = out / "notes.txt"
    keep.write_text("mine")
    other = _other_checkpoint(tmp_path)
    result = export(other, ["torchscript"], ["fp32"], out, validate=False, replace_other=True)
    assert [e["file"] for e in result.manifest["artifacts"]] == ["fer_nano_fp32.ts"]
    assert not (out / "fer_nano_fp32.onnx").exists() and keep.read_text() == "mine"
    assert verify_manifest(out) == []


@pytest.mark.parametrize("content", ["{not json", "[]", '{"format": "something-else"}'])
def test_an_unreadable_manifest_in_out_is_refused(tiny_checkpoint, tmp_path, content):
    (tmp_path / "manifest.json").write_text(content)
    res = _cli(tiny_checkpoint, "-t", "torchscript", "--no-validate", "--out", tmp_path)
    assert res.exit_code == 1
    assert str(tmp_path / "manifest.json") in res.output.replace("\n", "")
    assert (tmp_path / "manifest.json").read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]


@pytest.mark.parametrize("case", ["val-size", "missing-calib", "empty-calib", "bogus-split", "bogus-val-split"])
def test_refused_exports_leave_no_folder_behind(tiny_checkpoint, synthetic_csv, tmp_path, case):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    args = {
        "val-size": ["-p", "fp32", "--val-data", synthetic_csv, "--val-size", str(SYNTHETIC_GATE_MIN - 1)],
        "missing-calib": ["-p", "int8", "--calib-data", tmp_path / "missing.csv"],
        "empty-calib": ["-p", "int8", "--calib-data", empty],
        "bogus-split": ["-p", "int8", "--calib-data", synthetic_csv, "--calib-split", "Bogus"],
        "bogus-val-split": ["-p", "fp32", "--val-data", synthetic_csv, "--val-split", "Bogus"],
    }[case]
    code = 2 if case in ("val-size", "missing-calib") else 1  # a bad option value, or bad data found on reading
    out = tmp_path / "new" / "out"
    res = _cli(tiny_checkpoint, "-t", "onnx", *args, "--out", out)
    assert res.exit_code == code and "error:" in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    res = _cli(tiny_checkpoint, "-t", "onnx", *args, "--out", existing)
    assert res.exit_code == code and existing.is_dir()  # a folder that was there stays


def test_a_failure_after_the_folder_was_made_removes_it_only_if_this_export_made_it(
        monkeypatch, tiny_checkpoint, tmp_path):
    from fer_edge.exporters import export
    from fer_edge.exporters.torchscript import TorchScriptExporter

    def interrupted(self, req, precision, out_path):
        assert out_path.parent.is_dir()
        raise KeyboardInterrupt

    monkeypatch.setattr(TorchScriptExporter, "export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path / "a" / "b", validate=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    with pytest.raises(KeyboardInterrupt):
        export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path / "mine", validate=False)
    assert (tmp_path / "mine").is_dir()


@pytest.mark.parametrize("where", ["file", "below-file"])
def test_out_that_is_a_file_is_a_clear_error(tiny_checkpoint, tmp_path, where):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    out = afile if where == "file" else afile / "sub"
    res = _cli(tiny_checkpoint, "-t", "torchscript", "--no-validate", "--out", out)
    assert res.exit_code == 1 and "not a folder" in res.output
    assert isinstance(res.exception, SystemExit)  # no traceback
    assert afile.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


# --- small data sets: warned, still exported ---------------------------------------------------
def test_a_gate_on_fewer_validation_images_than_asked_says_so(tiny_checkpoint, synthetic_csv, tmp_path):
    base = [tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--val-data", synthetic_csv]
    res = _cli(*base, "--out", tmp_path / "a")  # default: the whole split, 84 images (above the lowered minimum)
    assert res.exit_code == 0, res.output
    assert "the parity gate used" not in res.output
    res = _cli(*base, "--val-size", "600", "--out", tmp_path / "b")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "the parity gate used 84 images" in text and "(600 asked for)" in text
    data = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert data["validation_data"]["count"] == 84 and data["validation_data"]["requested"] == 600
    assert data["artifacts"][0]["validation"]["n"] == 84
    assert any("600 asked for" in w for w in data["warnings"])


def test_calibration_on_fewer_images_than_asked_says_so(tiny_checkpoint, synthetic_csv, tmp_path):
    res = _cli(tiny_checkpoint, "-t", "onnx", "-p", "int8", "--calib-data", synthetic_csv, "--calib-size", "500",
               "--no-validate", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "calibration used 280 images, all that Training" in text and "(500 asked for)" in text
    assert "unreliable" not in text  # 280 >= 200
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["calibration"]["count"] == 280 and data["calibration"]["requested"] == 500


# --- the shipped weight's gate line, --overflow-fix ---------------------------------------------
@pytest.mark.parametrize("case", ["no-validate", "precision-not-exported"])
def test_a_weights_gate_line_only_when_it_judged_something(monkeypatch, tiny_checkpoint, synthetic_csv, tmp_path,
                                                          case):
    import fer_edge.weights as weights
    from fer_edge.weights import WeightMeta

    gate = {"int8": {"min_agreement": 0.965}} if case == "precision-not-exported" else {"fp32": {"max_kl": 1.0}}
    meta = WeightMeta(name="tiny", architecture="simple_cnn", file=str(tiny_checkpoint), params=1, macs=1,
                      mean=0.5, std=0.25, parity_gate=gate, parity_gate_reason="test")
    monkeypatch.setattr(weights, "PRETRAINED", {"tiny": meta})
    extra = ["--no-validate"] if case == "no-validate" else ["--val-data", synthetic_csv]
    res = _cli(tiny_checkpoint, "-t", "torchscript", "-p", "fp32", *extra, "--out", tmp_path / "a")
    assert res.exit_code == 0, res.output
    assert "own" not in res.output and "parity gate:" not in res.output
    if case == "no-validate":  # the same gate, validated: the line is there
        res = _cli(tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--val-data", synthetic_csv,
                   "--out", tmp_path / "b")
        assert res.exit_code == 0, res.output
        assert "tiny's own (fp32 max_kl 1.0)" in " ".join(res.output.split())


@pytest.mark.parametrize("args", [["-t", "onnx,torchscript", "-p", "fp32"], ["-t", "openvino", "-p", "fp32,fp16"],
                                  ["-t", "openvino"]])
def test_overflow_fix_without_openvino_int8_is_refused(tiny_checkpoint, tmp_path, args):
    res = _cli(tiny_checkpoint, *args, "--no-validate", "--overflow-fix", "enable", "--out", tmp_path / "o")
    assert res.exit_code == 2
    assert "--overflow-fix applies to OpenVINO INT8 only" in " ".join(res.output.split())
    assert not (tmp_path / "o").exists()


# --- an interrupted export leaves a manifest of what it finished -------------------------------
def test_sigterm_mid_export_leaves_a_manifest_of_the_finished_artifacts(monkeypatch, tiny_checkpoint, synthetic_csv,
                                                                        tmp_path):
    import signal

    from fer_edge.exporters.onnx import OnnxExporter

    class Killed(Exception):
        pass

    def stand_in(signum, frame):  # what SIGTERM does if export() does not catch it (instead of killing pytest)
        raise Killed

    def sigterm(self, req, precision, out_path):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs between bytecodes
            pass
        raise AssertionError("SIGTERM did not stop the export")

    monkeypatch.setattr(OnnxExporter, "export", sigterm)
    previous = signal.signal(signal.SIGTERM, stand_in)
    try:
        res = _cli(tiny_checkpoint, "-t", "torchscript,onnx", "-p", "fp32", "--val-data", synthetic_csv,
                   "--out", tmp_path)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert res.exit_code == 130, (res.output, res.exception)
    assert "interrupted" in res.output and "manifest.json lists the 1 artifact(s)" in " ".join(res.output.split())
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["complete"] is False
    (entry,) = data["artifacts"]
    assert entry["file"] == "fer_nano_fp32.ts" and entry["validation"]["status"] == "passed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fer_nano_fp32.ts", "manifest.json"]  # no temp debris
    assert signal.getsignal(signal.SIGTERM) is previous


def test_interrupted_validation_is_listed_as_not_validated(monkeypatch, tiny_checkpoint, synthetic_csv, tmp_path):
    from fer_edge.exporters import api, export, verify_manifest

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):  # not undo(): it keeps the gate minimum
        m.setattr(api._val, "validate_artifact", interrupted)
        export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path, val_data=synthetic_csv, data_progress=False)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["complete"] is False and verify_manifest(tmp_path) == []
    (entry,) = data["artifacts"]
    assert entry["validation"] == {"status": "not validated", "reason": api.VALIDATION_UNFINISHED}
    done = export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path, val_data=synthetic_csv, data_progress=False)
    assert done.manifest["complete"] is True and done.artifacts[0].status == "passed"


@pytest.mark.parametrize("kwargs, words", [
    ({"calib_size": "10"}, "--calib-size takes a whole number, got '10'"),
    ({"calib_size": 10.5}, "--calib-size takes a whole number, got 10.5"),
    ({"val_size": 600.0}, "--val-size takes a whole number"),
    ({"name": 5}, "--name takes a file stem"),
    ({"targets": 123}, "targets takes target names"),
    ({"out_dir": None}, "--out takes a folder path, got None"),
])
def test_python_arguments_of_the_wrong_type_are_refused_before_any_work(kwargs, words, tiny_checkpoint, synthetic_csv,
                                                                        tmp_path):
    from fer_edge.exporters import export

    args = {"targets": ["onnx"], "precisions": ["fp32"], "out_dir": tmp_path / "out", "calib_data": synthetic_csv,
            **kwargs}
    with pytest.raises(FerEdgeError, match=words):
        export(tiny_checkpoint, **args)
    assert not (tmp_path / "out").exists()


def test_targets_take_any_iterable_of_names(tiny_checkpoint, tmp_path):
    from fer_edge.exporters import export
    from fer_edge.targets import TARGETS

    names = (n for n in TARGETS if n == "torchscript")  # a generator, as dict keys or any iterable
    res = export(tiny_checkpoint, names, ["fp32"], tmp_path / "out", validate=False)
    assert [a.target for a in res.artifacts] == ["torchscript"]
    import numpy as np

    with pytest.raises(FerEdgeError, match="--calib-size must be at least 1"):  # numpy integers are whole numbers
        export(tiny_checkpoint, ["onnx"], ["int8"], tmp_path / "x", calib_size=np.int64(0))


def _six_class_checkpoint(path):
    from fer_edge.checkpoint import save_checkpoint
    from fer_edge.models import create_model

    save_checkpoint(path, {"model": "fer_nano", "model_kwargs": {}, "state_dict": create_model(
        "fer_nano", num_classes=6).state_dict(), "labels": ["angry", "disgust", "fear", "happy", "sad", "surprise"],
        "normalization": {"mean": 0.5, "std": 0.25}, "train_config": {}, "metrics": {}})
    return path


def test_a_model_of_other_classes_is_refused_before_it_is_scored(synthetic_csv, tmp_path):
    """A 6-class model scored against FER2013's 7 classes: a clear error from eval and export (which writes
    nothing), not a numpy reshape traceback or a meaningless accuracy."""
    from typer.testing import CliRunner

    from fer_edge.cli import app
    from fer_edge.metrics import check_scorable, classification_metrics
    from fer_edge.parity import compare

    ck = _six_class_checkpoint(tmp_path / "six.pt")
    runner = CliRunner()
    for args in (["eval", "--model", str(ck), "--data", str(synthetic_csv)],
                 ["export", str(ck), "--target", "onnx", "--calib-data", str(synthetic_csv), "--out",
                  str(tmp_path / "out")]):
        res = runner.invoke(app, args)
        text = " ".join(res.output.split())
        assert res.exit_code == 1 and "the model has 6 classes" in text and "FER2013's 7 classes" in text, text
        assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(FerEdgeError, match="the model has 6 classes"):
        classification_metrics([0, 6], [0, 1], ["a", "b", "c", "d", "e", "f"])
    with pytest.raises(FerEdgeError, match="the model has 7 classes"):
        compare(np.zeros((2, 7)), np.zeros((2, 7)), labels=[0, 9])
    check_scorable([0, 5], list("abcdef"))  # within range: nothing to say


def _swallowing(real, sig):
    """``real`` with a signal that arrives inside it and is swallowed there, as library callbacks do."""
    import signal

    def call(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, sig))
        try:
            for _ in range(1000):  # a handler that raises would do so here, between bytecodes
                pass
        except KeyboardInterrupt:  # what the weakref or import-lock callback does with it
            pass
        return real(*args, **kwargs)

    return call


@pytest.mark.parametrize("converter", ["onnx", "openvino", "coreml"])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_inside_a_converter_is_not_swallowed(monkeypatch, tiny_checkpoint, tmp_path, sig, converter):
    """torch.onnx.export can swallow a KeyboardInterrupt (it lands in a weakref callback and is printed as
    "Exception ignored"); OpenVINO's convert_model too (in an import-lock callback while its telemetry forks,
    after which the process hung), and coremltools' convert (the export finished as if nothing happened). Every
    conversion holds the signal and raises it once the converter returns."""
    import signal

    import torch

    from fer_edge.models import create_model
    from fer_edge.utils import interrupts_deferred

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    if converter == "coreml":  # through a whole export: its conversion sits deep in the exporter
        ct = pytest.importorskip("coremltools")
        from fer_edge.exporters import export

        monkeypatch.setattr(ct, "convert", _swallowing(ct.convert, sig))
        with pytest.raises(KeyboardInterrupt, match=f"stopped by signal {sig}"):
            export(tiny_checkpoint, ["coreml"], ["fp32"], tmp_path / "out", validate=False)
        assert not (tmp_path / "out").exists()
    else:
        if converter == "onnx":
            from fer_edge.exporters.onnx import fp32_proto as convert
            monkeypatch.setattr(torch.onnx, "export", _swallowing(torch.onnx.export, sig))
        else:
            ov = pytest.importorskip("openvino")
            from fer_edge.exporters.openvino import convert
            monkeypatch.setattr(ov, "convert_model", _swallowing(ov.convert_model, sig))
        with pytest.raises(KeyboardInterrupt, match=f"stopped by signal {sig}"):
            convert(create_model("simple_cnn").eval())
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with interrupts_deferred():  # nothing held: nothing raised
        pass
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # an ignored signal stays ignored
    try:
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_rerun_under_another_name_removes_the_file_it_replaces(tiny_checkpoint, tmp_path):
    """The manifest holds one entry per (target, precision): the earlier file of another --name goes with its
    entry, so no file of the folder is left unlisted (and a later --replace cannot leave it behind)."""
    from fer_edge.exporters import export, verify_manifest

    out = tmp_path / "out"
    export(tiny_checkpoint, ["onnx"], ["fp32", "fp16"], out, validate=False)
    result = export(tiny_checkpoint, ["onnx"], ["fp32"], out, validate=False, name="foo")
    assert sorted(p.name for p in out.iterdir()) == ["fer_nano_fp16.onnx", "foo_fp32.onnx", "manifest.json"]
    assert sorted(e["file"] for e in result.manifest["artifacts"]) == ["fer_nano_fp16.onnx", "foo_fp32.onnx"]
    assert any("removed fer_nano_fp32.onnx" in w and "replaced by foo_fp32.onnx" in w for w in result.warnings)
    assert verify_manifest(out) == []


def test_earlier_entries_whose_files_changed_are_dropped_with_a_warning(tiny_checkpoint, tmp_path):
    from fer_edge.exporters import export, verify_manifest

    out = tmp_path / "out"
    export(tiny_checkpoint, ["onnx"], ["fp32", "fp16"], out, validate=False)
    with open(out / "fer_nano_fp16.onnx", "ab") as f:
        f.write(b"junk")
    (out / "fer_nano_fp32.onnx").unlink()
    result = export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False)
    assert [e["file"] for e in result.manifest["artifacts"]] == ["fer_nano_fp32.ts"]
    text = "\n".join(result.warnings)
    assert "fer_nano_fp16.onnx (onnx fp16) no longer listed" in text and "changed since it was exported" in text
    assert "fer_nano_fp32.onnx (onnx fp32) no longer listed" in text and "is missing" in text
    # the changed file left in the folder is named once, not again by the end's check for unlisted files
    assert text.count("fer_nano_fp16.onnx") == 2  # the file and its reason, in one warning
    stray = out / "stray_fp32.bin"  # an OpenVINO weights file of no listed .xml
    stray.write_bytes(b"x")
    again = export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False)
    assert any(f"{stray} is not listed in the manifest" in w for w in again.warnings)
    assert sum("fer_nano_fp16.onnx" in w for w in again.warnings) == 1  # a later run names it as unlisted
    assert verify_manifest(out) == []


@pytest.mark.parametrize("how", ["interrupt", "failure"])
def test_an_earlier_entry_stays_listed_until_it_is_replaced(monkeypatch, tiny_checkpoint, tmp_path, how):
    """Re-exporting a (target, precision) that is interrupted or fails leaves the earlier, untouched file
    listed: the manifest keeps describing what is on disk."""
    from fer_edge.exporters import export, verify_manifest
    from fer_edge.exporters.torchscript import TorchScriptExporter

    out = tmp_path / "out"
    export(tiny_checkpoint, ["onnx", "torchscript"], ["fp32"], out, validate=False)
    before = json.loads((out / "manifest.json").read_text())["artifacts"]

    def broken(self, req, precision, out_path):
        raise KeyboardInterrupt if how == "interrupt" else RuntimeError("converter crashed")

    monkeypatch.setattr(TorchScriptExporter, "export", broken)
    if how == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False)
    else:
        export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False, raise_on_failure=False)
    data = json.loads((out / "manifest.json").read_text())
    assert [(e["file"], e["sha256"]) for e in data["artifacts"]] == [(e["file"], e["sha256"]) for e in before]
    assert data["complete"] is (how == "failure")
    if how == "failure":
        assert data["failed"][0]["reason"].endswith("converter crashed")
    assert verify_manifest(out) == []


def test_a_subset_rerun_keeps_the_settings_of_the_run_that_made_each_kept_artifact(tiny_checkpoint, synthetic_csv,
                                                                                     tmp_path):
    from fer_edge.exporters import export

    out = tmp_path / "out"
    first = export(tiny_checkpoint, ["onnx"], ["int8"], out, calib_data=synthetic_csv, val_data=synthetic_csv,
                   threshold_overrides={"min_agreement": {"int8": 0.5}}, raise_on_failure=False)
    second = export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False)
    m = second.manifest
    assert m["calibration"] is None  # the top level describes the latest run
    (run,) = m["earlier_runs"]  # the first run, whose int8 artifact is still listed
    assert run["run_id"] == first.manifest["run_id"] != m["run_id"]
    assert run["calibration"] == first.manifest["calibration"] and run["calibration"] is not None
    assert run["thresholds"]["int8"]["min_agreement"] == 0.5
    assert run["thresholds_source"] == first.manifest["thresholds_source"]
    assert run["validation_data"] == first.manifest["validation_data"]
    runs = {e["file"]: e["run"] for e in m["artifacts"]}
    assert runs == {"fer_nano_int8.onnx": first.manifest["run_id"], "fer_nano_fp32.ts": m["run_id"]}
    # once that artifact is exported again, its run's record goes
    third = export(tiny_checkpoint, ["onnx"], ["int8"], out, calib_data=synthetic_csv, validate=False)
    assert [r["run_id"] for r in third.manifest["earlier_runs"]] == [m["run_id"]]


def test_the_entries_of_one_target_and_precision_are_kept_or_dropped_together(tiny_checkpoint, tmp_path):
    """Core ML writes a package and its _logits companion: a change to either drops both, named in one warning."""
    pytest.importorskip("coremltools")
    from fer_edge.exporters import export, verify_manifest

    out = tmp_path / "out"
    export(tiny_checkpoint, ["coreml"], ["fp32"], out, validate=False)
    listed = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert {e["variant"] for e in listed} == {"main", "logits"}
    (out / "fer_nano_fp32_logits.mlpackage" / "junk").write_text("x")  # the companion only (its hash covers it)
    result = export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False)
    assert [(e["target"], e["variant"]) for e in result.manifest["artifacts"]] == [("torchscript", "main")]
    (w,) = [w for w in result.warnings if "(coreml fp32) no longer listed" in w]
    assert "fer_nano_fp32.mlpackage" in w and "fer_nano_fp32_logits.mlpackage" in w
    assert verify_manifest(out) == []


def test_a_failed_re_export_that_changed_the_earlier_file_drops_it_with_a_warning(monkeypatch, tiny_checkpoint,
                                                                                    tmp_path):
    from fer_edge.exporters import export, verify_manifest
    from fer_edge.exporters.torchscript import TorchScriptExporter

    out = tmp_path / "out"
    export(tiny_checkpoint, ["onnx", "torchscript"], ["fp32"], out, validate=False)

    def clobbering(self, req, precision, out_path):
        out_path.write_bytes(b"half a model")  # a converter that wrote in place, then failed
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(TorchScriptExporter, "export", clobbering)
    result = export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False, raise_on_failure=False)
    assert [e["file"] for e in result.manifest["artifacts"]] == ["fer_nano_fp32.onnx"]
    assert [w for w in result.warnings if "fer_nano_fp32.ts" in w] == [
        "fer_nano_fp32.ts (torchscript fp32) no longer listed in the manifest: the failed export changed it; "
        "export it again, or remove it"]
    assert verify_manifest(out) == []


def test_a_superseded_file_that_is_the_new_file_is_not_removed(tmp_path):
    """On a case-insensitive file system `Fer_fp32.onnx` and `fer_fp32.onnx` are one file: --name Fer then
    --name fer must not delete what was just written (a hard link stands in for the case folding here)."""
    from fer_edge.exporters.api import _remove_superseded
    from fer_edge.exporters.manifest import file_record

    new_file = tmp_path / "fer_fp32.onnx"
    new_file.write_bytes(b"model")
    os.link(new_file, tmp_path / "Fer_fp32.onnx")
    earlier = [{"target": "onnx", "precision": "fp32", "variant": "main", "file": "Fer_fp32.onnx",
                "files": [file_record(tmp_path / "Fer_fp32.onnx", tmp_path)]}]
    new = [{"target": "onnx", "precision": "fp32", "variant": "main", "file": "fer_fp32.onnx",
            "files": [file_record(new_file, tmp_path)]}]
    said = []
    _remove_superseded(earlier, new, tmp_path, said.append)
    assert (tmp_path / "Fer_fp32.onnx").exists() and new_file.exists() and said == []


def test_an_interrupted_rerun_counts_only_what_it_finished(monkeypatch, tiny_checkpoint, tmp_path):
    """The earlier, finished run's entries kept by an interrupted rerun are not 'from an export that did not
    finish' (bench), nor 'finished' by the rerun (the CLI's note)."""
    from fer_edge.benchmarks.artifacts import collect_artifacts, unfinished
    from fer_edge.exporters import export
    from fer_edge.exporters.torchscript import TorchScriptExporter

    out = tmp_path / "out"
    export(tiny_checkpoint, ["onnx", "torchscript"], ["fp32"], out, validate=False)

    def interrupted(self, req, precision, out_path):
        raise KeyboardInterrupt

    monkeypatch.setattr(TorchScriptExporter, "export", interrupted)
    res = _cli(tiny_checkpoint, "-t", "onnx,torchscript", "-p", "fp32", "--no-validate", "--out", out)
    assert res.exit_code == 130
    note = " ".join(res.output.split())
    assert "lists the 1 artifact(s) this export finished, and the 1 of earlier exports it kept" in note, note
    data = json.loads((out / "manifest.json").read_text())
    assert data["complete"] is False and [r["complete"] for r in data["earlier_runs"]] == [True]
    arts = collect_artifacts([out])
    assert [a.path.name for a in unfinished(arts)] == ["fer_nano_fp32.onnx"]  # the rerun's, not the kept .ts


def test_an_interrupt_after_the_export_finished_says_it_finished(monkeypatch, tiny_checkpoint, tmp_path):
    """QA: Ctrl-C while the summary was printed got the catch-all "stopped before it finished", though the
    artifacts and manifest were all written."""
    import fer_edge.cli.export as cli_export

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_export, "artifacts_table", interrupted)
    out = tmp_path / "exp"
    res = _cli(tiny_checkpoint, "-t", "torchscript", "--no-validate", "--out", out)
    assert res.exit_code == 130, res.output
    assert f"interrupted: after the export finished: {out / 'manifest.json'} lists this run's artifacts" in " ".join(
        res.output.split()), res.output
    assert (out / "manifest.json").is_file()


def test_an_onnxscript_older_than_torch_needs_is_an_export_error_naming_the_fix(tiny_checkpoint, tmp_path,
                                                                               monkeypatch):
    """torch imports onnxscript._framework_apis.torch_<its version>: an older onnxscript lacks it."""
    import torch

    def old_onnxscript(*a, **k):
        raise ModuleNotFoundError("No module named 'onnxscript._framework_apis.torch_2_11'",
                                  name="onnxscript._framework_apis.torch_2_11")

    monkeypatch.setattr(torch.onnx, "export", old_onnxscript)
    r = _cli(tiny_checkpoint, "--target", "onnx", "--precision", "fp32",
             "--out", tmp_path / "out", "--no-validate")
    assert r.exit_code == 1, r.output
    msg = " ".join(r.stderr.split())
    assert "onnxscript._framework_apis.torch_2_11" in msg and "pip install -U onnxscript" in msg, msg
    assert "Traceback" not in r.output

    def other(*a, **k):  # any other missing module is not blamed on onnxscript
        raise ModuleNotFoundError("No module named 'sympy'", name="sympy")

    monkeypatch.setattr(torch.onnx, "export", other)
    from fer_edge.exporters.onnx import fp32_proto

    with pytest.raises(ModuleNotFoundError, match="sympy"):
        fp32_proto(torch.nn.Linear(1, 1))

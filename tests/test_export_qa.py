"""QA findings on the export, artifact-reading and Core ML paths: each test fails without its fix.

Core ML conversions take seconds each, so one Core ML INT8 export (module-scoped) serves every test that reads a
package; the tests that need an export to stop part-way run their own (one logits conversion each).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fer_edge.errors import ArtifactError, ExportError, FerEdgeError

STEM = "fer_nano"  # the tiny checkpoint's model name: the artifacts' file stem


def _cli(*args):
    from fer_edge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _text(res) -> str:
    return " ".join(res.output.split())


@pytest.fixture(scope="module")
def coreml_int8(tmp_path_factory, tiny_checkpoint, synthetic_csv):
    """Core ML INT8 of the tiny checkpoint (weights-only off macOS: no calibration image is used)."""
    pytest.importorskip("coremltools")
    from fer_edge.exporters import export

    out = tmp_path_factory.mktemp("coreml_int8")
    # no --calib-size: off macOS nothing is calibrated, and an option that would do nothing is refused
    return export(tiny_checkpoint, ["coreml"], ["int8"], out, calib_data=synthetic_csv, validate=False,
                  data_progress=False)


@pytest.fixture(scope="module")
def onnx_fp16_int8(tmp_path_factory, tiny_checkpoint, synthetic_csv) -> Path:
    from fer_edge.exporters import export

    out = tmp_path_factory.mktemp("onnx_fp16_int8")
    export(tiny_checkpoint, ["onnx"], ["fp16", "int8"], out, calib_data=synthetic_csv, calib_size=50,
           validate=False, data_progress=False)
    return out


# --- 1. an interrupt while coremltools is imported (or the model traced) is not lost ---------------------------
def _swallow_a_signal(sig):
    """Send ``sig`` to the main thread and swallow the KeyboardInterrupt it raises, as coremltools' bare ``except:``
    around its imports does. Waits (up to 0.3 s) for the handler to run, which Python does between bytecodes."""
    import threading
    import time

    deadline = time.monotonic() + 0.3
    try:  # the handler may run as soon as the kill returns: inside the try too
        signal.pthread_kill(threading.main_thread().ident, getattr(signal, sig))
        while time.monotonic() < deadline:
            pass
    except KeyboardInterrupt:
        pass


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_while_coremltools_is_imported_stops_the_export(monkeypatch, tiny_checkpoint, tmp_path, sig):
    """Ctrl-C or SIGTERM landing in `import coremltools` was swallowed there: the export ran to the end (exit 0,
    a complete manifest). It is held over the imports and delivered right after: exit 130, nothing listed."""
    pytest.importorskip("coremltools")
    import builtins

    real_import = builtins.__import__
    fired = []

    def importing(name, *args, **kwargs):
        if not fired and (name == "coremltools" or name.startswith("coremltools.")):
            fired.append(name)
            _swallow_a_signal(sig)
        return real_import(name, *args, **kwargs)

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(builtins, "__import__", importing)
    out = tmp_path / "out"
    res = _cli("export", tiny_checkpoint, "-t", "coreml", "-p", "fp32", "--no-validate", "--out", out)
    monkeypatch.undo()
    assert fired, "the export imported no coremltools"
    assert res.exit_code == 130, (res.output, res.exception)
    assert "interrupted: no artifact finished; nothing listed" in _text(res)
    assert not (out / "manifest.json").exists()
    assert not out.exists() or not list(out.iterdir())
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_an_interrupt_while_the_model_is_traced_stops_the_coreml_export(monkeypatch, tiny_checkpoint, tmp_path):
    """torch imports sympy lazily while tracing: an interrupt there half-imported sympy (a fake AttributeError
    later) unless the trace holds it too."""
    pytest.importorskip("coremltools")
    import torch

    from fer_edge.exporters import export

    real_trace = torch.jit.trace

    def tracing(*args, **kwargs):
        _swallow_a_signal("SIGINT")
        return real_trace(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", tracing)
    with pytest.raises(KeyboardInterrupt, match="stopped by signal SIGINT"):
        export(tiny_checkpoint, ["coreml"], ["fp32"], tmp_path / "out", validate=False)
    assert not (tmp_path / "out").exists()


# --- 2. a file no manifest lists: precision from its embedded metadata -------------------------------------------
def test_a_renamed_artifact_takes_its_precision_from_its_metadata(tmp_path, onnx_fp16_int8, coreml_int8,
                                                                   tiny_checkpoint):
    from fer_edge.benchmarks.artifacts import collect_artifacts, reference_groups

    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(onnx_fp16_int8 / f"{STEM}_fp16.onnx", loose / "deploy.onnx")
    shutil.copy(onnx_fp16_int8 / f"{STEM}_int8.onnx", loose / "edge.onnx")
    shutil.copy(onnx_fp16_int8 / f"{STEM}_int8.onnx", loose / "wrong_fp32.onnx")  # the name says otherwise
    shutil.copytree(coreml_int8.out_dir / f"{STEM}_int8.mlpackage", loose / "app.mlpackage")
    arts = {a.path.name: a for a in collect_artifacts([loose / "deploy.onnx", loose / "edge.onnx",
                                                       loose / "wrong_fp32.onnx", loose / "app.mlpackage"])}
    assert {n: (a.target, a.precision) for n, a in arts.items()} == {
        "deploy.onnx": ("onnx", "fp16"), "edge.onnx": ("onnx", "int8"), "wrong_fp32.onnx": ("onnx", "int8"),
        "app.mlpackage": ("coreml", "int8")}
    assert arts["deploy.onnx"].notes == [] and arts["edge.onnx"].notes == []  # no precision in the name: no note
    _, notes = reference_groups([*arts.values()], reference=tiny_checkpoint)
    assert any("wrong_fp32.onnx: its name says fp32 but its embedded metadata says int8" in n for n in notes), notes


def test_bench_gates_a_renamed_fp16_file_as_fp16(tmp_path, onnx_fp16_int8, tiny_checkpoint, synthetic_csv):
    """`cp fer_nano_fp16.onnx loose/deploy.onnx; fer-edge bench loose/deploy.onnx`: judged as fp16, not fp32."""
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(onnx_fp16_int8 / f"{STEM}_fp16.onnx", loose / "deploy.onnx")
    res = _cli("bench", loose / "deploy.onnx", "--reference", tiny_checkpoint, "--data", synthetic_csv, "--split",
               "PublicTest", "--runtimes", "onnxruntime", "--iters", "2", "--warmup", "1", "--rounds", "1",
               "--batch", "1", "--threads", "1", "--out", tmp_path / "rep")
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    (row,) = [r for r in rows if Path(r["artifact"]).name == "deploy.onnx"]
    assert (row["target"], row["precision"], row["status"]) == ("onnx", "fp16", "ok")


# --- 3. a Core ML package's metadata is read off macOS too -------------------------------------------------------
def test_a_core_ml_package_without_a_manifest_names_its_source_off_macos(tmp_path, coreml_int8, tiny_checkpoint):
    from fer_edge.benchmarks.artifacts import collect_artifacts, reference_groups
    from fer_edge.utils import sha256_path

    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copytree(coreml_int8.out_dir / f"{STEM}_int8.mlpackage", loose / f"{STEM}_int8.mlpackage")
    shutil.copytree(coreml_int8.out_dir / f"{STEM}_int8_logits.mlpackage", loose / f"{STEM}_int8_logits.mlpackage")
    (pkg,) = collect_artifacts([loose / f"{STEM}_int8.mlpackage"])
    (ck,) = collect_artifacts([tiny_checkpoint])
    groups, _ = reference_groups([ck, pkg])
    assert pkg.source.get("sha256") == sha256_path(tiny_checkpoint) and pkg.read_error is None
    (pkg,) = collect_artifacts([loose])  # the folder alone: its source is known, only its file is not found
    with pytest.raises(ArtifactError) as e:
        reference_groups([pkg])
    assert "no 'source_sha256'" not in str(e.value) and "cannot find the reference checkpoint" in str(e.value)


# --- 4. Core ML's _logits companion given alone, and the main package with a broken companion ---------------------
def test_benching_the_logits_companion_says_to_bench_the_main_package(tmp_path, coreml_int8):
    from fer_edge.benchmarks.artifacts import collect_artifacts

    out = coreml_int8.out_dir
    with pytest.raises(ArtifactError) as e:
        collect_artifacts([out / f"{STEM}_int8_logits.mlpackage"])
    msg = str(e.value)
    assert "parity companion" in msg and f"{STEM}_int8.mlpackage" in msg and "lists no exported artifact" not in msg
    loose = tmp_path / "loose"  # no manifest: the same, by its name, when its main package is beside it
    shutil.copytree(out, loose)
    (loose / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match="parity companion"):
        collect_artifacts([loose / f"{STEM}_int8_logits.mlpackage"])


@pytest.mark.parametrize("how", ["changed", "missing"])
def test_the_main_package_alone_is_verified_with_its_logits_companion(tmp_path, coreml_int8, how):
    from fer_edge.benchmarks.artifacts import collect_artifacts

    out = tmp_path / "out"
    shutil.copytree(coreml_int8.out_dir, out)
    (a,) = collect_artifacts([out / f"{STEM}_int8.mlpackage"])  # untouched: fine
    assert (a.target, a.precision) == ("coreml", "int8")
    companion = out / f"{STEM}_int8_logits.mlpackage"
    if how == "changed":
        (companion / "junk").write_text("x")
    else:
        shutil.rmtree(companion)
    words = "SHA-256 does not match" if how == "changed" else "missing"
    for spec in (out, out / f"{STEM}_int8.mlpackage"):  # the folder refused it; the package alone does too
        with pytest.raises(ArtifactError, match=words) as e:
            collect_artifacts([spec])
        assert companion.name in str(e.value)


# --- 5. files an export would overwrite that are not its own -----------------------------------------------------
def test_an_export_refuses_to_overwrite_unlisted_files_before_any_work(tiny_checkpoint, tmp_path):
    out = tmp_path / "o2"
    (out / f"{STEM}_fp32.mlpackage").mkdir(parents=True)
    (out / f"{STEM}_fp32.mlpackage" / "important.txt").write_text("x")
    (out / f"{STEM}_fp32.ts").write_text("mine")
    res = _cli("export", tiny_checkpoint, "-t", "coreml,torchscript", "-p", "fp32", "--out", out, "--no-validate")
    assert res.exit_code == 1, res.output
    text = _text(res)
    assert f"{STEM}_fp32.mlpackage (folder)" in text and f"{STEM}_fp32.ts (file)" in text, text
    assert "does not list" in text and "another --out" in text
    assert (out / f"{STEM}_fp32.mlpackage" / "important.txt").read_text() == "x"
    assert (out / f"{STEM}_fp32.ts").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == [f"{STEM}_fp32.mlpackage", f"{STEM}_fp32.ts"]  # no manifest


@pytest.mark.parametrize("target, name", [("coreml", f"{STEM}_fp32_logits.mlpackage"),
                                          ("openvino", f"{STEM}_fp32.bin")])
def test_an_unlisted_companion_file_is_refused_too(tiny_checkpoint, tmp_path, target, name):
    from fer_edge.exporters import export

    (tmp_path / name).write_text("mine")
    with pytest.raises(ExportError, match=f"{name} \\(file\\)"):
        export(tiny_checkpoint, [target], ["fp32"], tmp_path, validate=False)
    assert (tmp_path / name).read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_the_files_of_an_earlier_export_are_still_replaced(tiny_checkpoint, tmp_path):
    """The manifest lists them: a rerun exports over them as before (and a file it lists under another name)."""
    from fer_edge.exporters import export

    export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path, validate=False)
    again = export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path, validate=False)
    assert [a.path.name for a in again.artifacts] == [f"{STEM}_fp32.ts"]


def test_an_interrupt_as_an_artifact_is_finished_still_lists_it(monkeypatch, tiny_checkpoint, tmp_path):
    """Ctrl-C between an artifact's last rename and its manifest entry left it on disk unlisted, which the next
    export into the folder then refused to overwrite: the interrupt waits until it is listed."""
    from fer_edge.exporters import api

    real = api.file_record
    fired = []

    def recording(path, root):
        if not fired:
            fired.append(path)
            _swallow_a_signal("SIGINT")
        return real(path, root)

    monkeypatch.setattr(api, "file_record", recording)
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--no-validate", "--out", tmp_path)
    monkeypatch.undo()
    assert fired and res.exit_code == 130, res.output
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["file"] for e in data["artifacts"]] == [f"{STEM}_fp32.ts"] and data["complete"] is False
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--no-validate", "--out", tmp_path)
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("where", ["named", "manifest", "inside"])
def test_out_inside_a_core_ml_package_is_refused(tiny_checkpoint, tmp_path, where):
    from fer_edge.exporters import export

    if where == "named":
        out = tmp_path / "model.mlpackage"
    else:
        pkg = tmp_path / "pkg"
        pkg.mkdir()
        (pkg / "Manifest.json").write_text(json.dumps({"fileFormatVersion": "1.0.0", "itemInfoEntries": {},
                                                       "rootModelIdentifier": "x"}))
        out = pkg if where == "manifest" else pkg / "Data" / "sub"
    with pytest.raises(ExportError, match="Core ML package"):
        export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False)
    assert not (tmp_path / "model.mlpackage").exists() and not (tmp_path / "pkg" / "Data").exists()
    assert not (tmp_path / "pkg" / "manifest.json").exists()


# --- 6. an export stopped between Core ML's two packages leaves neither ------------------------------------------
@pytest.mark.parametrize("stop", ["interrupt", "failure"])
def test_a_core_ml_export_stopped_before_the_app_model_leaves_no_logits_package(monkeypatch, tiny_checkpoint,
                                                                                tmp_path, stop):
    pytest.importorskip("coremltools")
    from fer_edge.exporters import coreml

    real = coreml._describe

    def describe(ml, req, precision, variant):
        if variant == "classifier":  # the logits package is finished by now
            raise KeyboardInterrupt if stop == "interrupt" else RuntimeError("converter crashed")
        return real(ml, req, precision, variant)

    monkeypatch.setattr(coreml, "_describe", describe)
    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)  # a folder that outlives the export
    res = _cli("export", tiny_checkpoint, "-t", "coreml", "-p", "fp32", "--no-validate", "--out", out)
    if stop == "interrupt":
        assert res.exit_code == 130, res.output
        assert "no artifact finished; nothing listed" in _text(res)
        assert sorted(p.name for p in out.iterdir()) == ["keep"]
    else:
        assert res.exit_code == 1 and "converter crashed" in _text(res), res.output
        assert sorted(p.name for p in out.iterdir()) == ["keep", "manifest.json"]
        assert json.loads((out / "manifest.json").read_text())["artifacts"] == []


# --- 7. an empty or unknown --target / --precision ---------------------------------------------------------------
@pytest.mark.parametrize("option", ["--target", "--precision"])
@pytest.mark.parametrize("value", ["", " ", ",", "beside"])
def test_an_empty_target_or_precision_is_refused(tiny_checkpoint, tmp_path, option, value):
    """``beside``: QA: ``--target onnx --target ""`` (one of two values empty) exported onnx, where bench's
    ``--devices cpu --devices ""`` is refused."""
    given = [option, "torchscript" if option == "--target" else "fp32", option, ""] if value == "beside" \
        else [option, value]
    res = _cli("export", tiny_checkpoint, *given, "--no-validate", "--out", tmp_path / "o")
    assert res.exit_code == 2, res.output  # a usage error
    text = _text(res)
    valid = "onnx, openvino, coreml, torchscript, all" if option == "--target" else "fp32, fp16, int8"
    assert f"{option} was given an empty value" in text and valid in text, text
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, words", [
    (["export", "{ck}", "--target", "onnx,bogus"], "unknown target 'bogus'; valid: onnx, openvino, coreml"),
    (["export", "{ck}", "--precision", "fp64"], "unknown precision 'fp64'"),
    (["export", "{ck}", "--max-kl", "int8=nan"], "--max-kl: 'int8=nan' must be a finite non-negative number"),
    (["bench", "{ck}", "--runtimes", "tensorrt", "--data", "{csv}"], "unknown runtime 'tensorrt'"),
])
def test_a_bad_listed_value_is_a_usage_error(tiny_checkpoint, synthetic_csv, tmp_path, args, words):
    """An unknown --target or a bad PRECISION=VALUE exited 1 where --epochs 0 or --seconds nan exit 2."""
    res = _cli(*[{"{ck}": tiny_checkpoint, "{csv}": synthetic_csv}.get(a, a) for a in args], "--out", tmp_path / "o")
    assert res.exit_code == 2 and words in _text(res), res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kwargs, words", [
    ({"targets": ["all", "bogus"]}, "unknown target 'bogus'; valid: onnx, openvino, coreml, torchscript, all"),
    ({"targets": ["bogus", "all"]}, "unknown target 'bogus'"),
    ({"targets": []}, "targets is empty: name one or more of onnx, openvino, coreml, torchscript, all"),
    ({"precisions": []}, "precisions is empty: name one or more of fp32, fp16, int8"),
    ({"precisions": ["fp32", "fp64"]}, "unknown precision 'fp64'; valid: fp32, fp16, int8"),
])
def test_python_targets_and_precisions_are_checked(tiny_checkpoint, tmp_path, kwargs, words):
    from fer_edge.exporters import export

    args = {"targets": ["torchscript"], "precisions": ["fp32"], **kwargs}
    with pytest.raises(FerEdgeError, match=words):
        export(tiny_checkpoint, out_dir=tmp_path / "o", validate=False, **args)
    assert not (tmp_path / "o").exists()


# --- 8. Core ML's weights-only INT8 uses no calibration images --------------------------------------------------
@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS Core ML INT8 is calibrated (W8A8)")
def test_core_ml_weights_only_int8_records_no_calibration_and_no_warning(coreml_int8):
    assert not [w for w in coreml_int8.warnings if "calibration" in w], coreml_int8.warnings
    for e in coreml_int8.manifest["artifacts"]:
        assert e["calibration"] is None
        assert "no calibration image was used" in e["export"]["calibration"]
        assert "weights-only" in e["export"]["activation_quantization"]


def test_a_small_calibration_set_still_warns_where_it_is_used(tiny_checkpoint, synthetic_csv, tmp_path):
    from fer_edge.exporters import export

    res = export(tiny_checkpoint, ["onnx"], ["int8"], tmp_path, calib_data=synthetic_csv, calib_size=50,
                 validate=False, data_progress=False)
    assert any("calibration" in w for w in res.warnings), res.warnings
    assert res.manifest["artifacts"][0]["calibration"]["count"] == 50


# --- QA round 2 -------------------------------------------------------------------------------------------------
def _cli_wide(*args):
    from fer_edge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def _ckpt_with_data(tmp_path, tiny_checkpoint, data: dict, name="recorded.pt") -> Path:
    """The tiny checkpoint's weights with ``data`` as its recorded data (as training records it)."""
    from fer_edge.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(tiny_checkpoint)
    return save_checkpoint(tmp_path / name, {
        "model": ck.model_name, "model_kwargs": {}, "state_dict": ck.state_dict, "labels": list(ck.labels),
        "normalization": ck.normalization.to_dict(), "train_config": {"model": ck.model_name}, "data": data,
    })


@pytest.fixture
def low_gate_minimum(monkeypatch):
    """The parity gate's minimum lowered to 8 images (the real one, 512, is far above the synthetic data)."""
    from fer_edge.exporters import calibration

    monkeypatch.setattr(calibration, "MIN_VAL_SIZE", 8)


@pytest.mark.parametrize("content", ['{"name":"my web app","artifacts":[{"file":"data.bin"},{"file":"app.js"}]}',
                                     "{not json"])
@pytest.mark.parametrize("replace", [False, True])
def test_a_foreign_manifest_never_lists_files_to_delete(tiny_checkpoint, tmp_path, content, replace):
    (tmp_path / "manifest.json").write_text(content)
    (tmp_path / "data.bin").write_text("precious")
    (tmp_path / "app.js").write_text("code")
    res = _cli("export", tiny_checkpoint, "-t", "onnx", "-p", "fp32", "--no-validate", "--out", tmp_path,
               *(["--replace"] if replace else []))
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    text = _text(res)
    assert "does not trust it" in text and "choose another --out" in text and "yourself" in text
    assert "--replace" not in text  # not recommended: it would not help, and must not delete these
    assert (tmp_path / "data.bin").read_text() == "precious" and (tmp_path / "app.js").read_text() == "code"
    assert (tmp_path / "manifest.json").read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.js", "data.bin", "manifest.json"]


def test_replace_removes_only_the_export_artifacts_it_lists_and_names_them(tiny_checkpoint, tmp_path):
    from test_export import _other_checkpoint

    out = tmp_path / "out"
    assert _cli("export", tiny_checkpoint, "-t", "onnx", "-p", "fp32", "--no-validate", "--out", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    m = json.loads((out / "manifest.json").read_text())  # a fer-edge manifest that lists a file not its own
    m["artifacts"][0]["files"].append({"file": "notes.txt", "size_bytes": 4, "sha256": "0" * 64})
    (out / "manifest.json").write_text(json.dumps(m))
    res = _cli_wide("export", _other_checkpoint(tmp_path), "-t", "torchscript", "--no-validate", "--out", out,
                    "--replace")
    assert res.exit_code == 0, res.output
    text = _text(res)
    assert f"--replace: removed fer_nano_fp32.onnx, manifest.json from {out}" in text
    assert "left notes.txt: listed there, but not an export artifact" in text
    assert (out / "notes.txt").read_text() == "mine" and not (out / "fer_nano_fp32.onnx").exists()
    assert any("removed fer_nano_fp32.onnx" in w for w in json.loads((out / "manifest.json").read_text())["warnings"])


def test_implied_validation_data_below_the_gates_minimum_is_never_passed(tiny_checkpoint, tmp_path):
    from fer_edge.data.synthetic import make_synthetic, write_folder
    from fer_edge.exporters.calibration import MIN_VAL_SIZE

    small = write_folder(tmp_path / "small", {"train": make_synthetic(1, seed=0), "val": make_synthetic(1, seed=1)})
    out = tmp_path / "out"
    res = _cli_wide("export", tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--calib-data", small,
                    "--out", out)
    assert res.exit_code == 0, res.output
    text = _text(res)
    why = f"only 7 validation images; the gate needs {MIN_VAL_SIZE}"
    assert f"not validated ({why})" in text and "passed" not in text
    assert "warning: the parity gate has only 7 validation images" in text
    data = json.loads((out / "manifest.json").read_text())
    assert data["artifacts"][0]["validation"] == {"status": "not validated", "reason": f"not validated: {why}"}
    assert data["validation_data"] is None and any("only 7 validation images" in w for w in data["warnings"])
    # given explicitly, it is refused before anything is written
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--val-data", small,
               "--out", tmp_path / "refused")
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert f"only 7 validation images (val of {small.resolve()}); the gate needs {MIN_VAL_SIZE}" in _text(res)
    assert not (tmp_path / "refused").exists()


def test_the_checkpoints_recorded_validation_data_is_used_when_it_exists(tiny_checkpoint, synthetic_csv, tmp_path,
                                                                        low_gate_minimum):
    from fer_edge.exporters import export

    val = {"format": "csv", "source": str(synthetic_csv), "split": "PublicTest"}
    ckpt = _ckpt_with_data(tmp_path, tiny_checkpoint, {"train": {**val, "split": "Training"}, "val": val})
    res = export(ckpt, ["torchscript"], ["fp32"], tmp_path / "a", data_progress=False)
    assert res.artifacts[0].status == "passed", res.artifacts[0].validation
    vd = res.manifest["validation_data"]
    assert vd["chosen_from"] == "the checkpoint's recorded validation data" and vd["split"] == "PublicTest"
    # recorded on another machine (the shipped nano records /tmp/data/images): said, and not validated
    gone = {"format": "folder", "source": str(tmp_path / "elsewhere" / "images"), "split": "val", "n": 3589}
    ckpt = _ckpt_with_data(tmp_path, tiny_checkpoint, {"train": {**gone, "split": "train"}, "val": gone}, "gone.pt")
    res = export(ckpt, ["torchscript"], ["fp32"], tmp_path / "b", data_progress=False)
    msg = f"recorded validation data {gone['source']} (split val, 3,589 images) not found here; pass --val-data"
    assert any(msg in w for w in res.warnings), res.warnings
    assert res.artifacts[0].validation == {"status": "not validated", "reason": f"not validated: {msg}"}


def test_validating_on_training_images_is_warned(tiny_checkpoint, synthetic_csv, tmp_path, low_gate_minimum):
    from fer_edge.data import load_split
    from fer_edge.data.synthetic import make_synthetic, write_csv, write_folder
    from fer_edge.exporters import export

    common = dict(data_progress=False)
    # the data's training split, asked for by name
    res = export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path / "a", val_data=synthetic_csv,
                 val_split="Training", **common)
    assert any("the data's training split" in w and "not on held-out images" in w for w in res.warnings)
    assert res.manifest["warnings"] == res.warnings
    # a validation split with the SHA-256 of the checkpoint's recorded training data
    fp = load_split(synthetic_csv, "PublicTest", progress=False).fingerprint
    ckpt = _ckpt_with_data(tmp_path, tiny_checkpoint, {"train": fp, "val": fp})
    res = export(ckpt, ["torchscript"], ["fp32"], tmp_path / "b", val_data=synthetic_csv, **common)
    assert any("the images this checkpoint was trained on" in w for w in res.warnings), res.warnings
    # calibration and validation: the same images under other names (a CSV's Training, a folder's val)
    same = make_synthetic(3, seed=0)
    csv = write_csv(tmp_path / "d.csv.gz", {"Training": same, "PublicTest": make_synthetic(3, seed=1)})
    folder = write_folder(tmp_path / "folder", {"train": make_synthetic(1, seed=2), "val": same})
    res = export(tiny_checkpoint, ["onnx"], ["int8"], tmp_path / "c", calib_data=csv, val_data=folder,
                 raise_on_failure=False, **common)
    assert any("are the same images under other names" in w for w in res.warnings), res.warnings
    assert any("are the same images under other names" in w for w in res.manifest["warnings"])
    # held-out validation: no such warning
    res = export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path / "d", val_data=synthetic_csv, **common)
    assert not [w for w in res.warnings if "held-out" in w], res.warnings


def test_leftover_temporary_files_are_named_not_removed(tiny_checkpoint, tmp_path):
    from fer_edge.exporters import export

    export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path, validate=False)
    (tmp_path / f".tmp-{STEM}_fp32-abc123").mkdir()  # a killed export's scratch folder and temp file
    (tmp_path / ".tmp-manifest-xyz.json").write_text("{")
    res = _cli_wide("export", tiny_checkpoint, "-t", "torchscript", "--no-validate", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    text = _text(res)
    assert f"holds .tmp-{STEM}_fp32-abc123, .tmp-manifest-xyz.json: temporary files of an export" in text
    assert (tmp_path / f".tmp-{STEM}_fp32-abc123").is_dir() and (tmp_path / ".tmp-manifest-xyz.json").exists()
    assert any(".tmp-manifest-xyz.json" in w for w in json.loads((tmp_path / "manifest.json").read_text())["warnings"])


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS Core ML INT8 is calibrated and validated")
def test_a_core_ml_only_export_loads_and_records_no_data_it_cannot_use(monkeypatch, tiny_checkpoint, synthetic_csv,
                                                                        tmp_path):
    pytest.importorskip("coremltools")
    from fer_edge.exporters import calibration, export

    def unused(*a, **k):
        raise AssertionError("loaded data that no artifact uses")

    monkeypatch.setattr(calibration, "load_calibration", unused)
    monkeypatch.setattr(calibration, "load_validation", unused)
    res = export(tiny_checkpoint, ["coreml"], ["int8"], tmp_path, calib_data=synthetic_csv, data_progress=False)
    assert res.manifest["calibration"] is None and res.manifest["validation_data"] is None
    assert res.manifest["calibration_method"] is None and res.warnings == []
    assert {a.validation["reason"] for a in res.artifacts} == {"not validated: needs macOS"}


@pytest.mark.parametrize("args, named", [
    (["-t", "torchscript", "-p", "fp32", "--calib-size", "100", "--no-validate"], ["--calib-size"]),
    (["-t", "torchscript", "-p", "fp32", "--calib-data", "{csv}", "--calib-split", "Training",
      "--calib-size", "100"], ["--calib-split and --calib-size"]),
    (["-t", "openvino", "-p", "int8", "--calib-data", "{csv}", "--calib-method", "entropy", "--no-validate"],
     ["--calib-method applies to ONNX INT8 only"]),
    (["-t", "torchscript", "-p", "fp32", "--no-validate", "--val-data", "{csv}", "--val-split", "PublicTest",
      "--val-size", "600"], ["--val-data, --val-split, --val-size"]),
    (["-t", "torchscript", "-p", "fp32", "--no-validate", "--val-size", "0"], ["--val-size chooses"]),
    (["-t", "torchscript", "-p", "fp32", "--no-validate", "--val-split", "PublicTest", "--calib-method", "entropy"],
     ["--val-split chooses", "--calib-method applies"]),  # every problem in one error
])
def test_options_that_would_do_nothing_are_refused(tiny_checkpoint, synthetic_csv, tmp_path, args, named):
    out = tmp_path / "out"
    res = _cli("export", tiny_checkpoint, *[a.format(csv=synthetic_csv) for a in args], "--out", out)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    text = _text(res)
    assert all(n in text for n in named), text
    assert not out.exists()


def test_defaults_and_calibration_data_that_doubles_as_validation_are_accepted(tiny_checkpoint, synthetic_csv,
                                                                             tmp_path, low_gate_minimum):
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--calib-data", synthetic_csv,
               "--out", tmp_path / "a")
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["validation_data"]["split"] == "PublicTest"
    # named by the option given, even where nothing was calibrated (an fp32 export: "calibration" is null)
    assert manifest["validation_data"]["chosen_from"] == "--calib-data" and manifest["calibration"] is None
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--no-validate", "--out", tmp_path / "b")
    assert res.exit_code == 0, res.output


def test_the_gate_line_shows_the_thresholds_in_effect_under_overrides(monkeypatch, tiny_checkpoint, synthetic_csv,
                                                                      tmp_path, low_gate_minimum):
    import fer_edge.weights as weights
    from fer_edge.cli.common import weight_gate_line
    from fer_edge.weights import WeightMeta

    meta = WeightMeta(name="tiny", architecture="simple_cnn", file=str(tiny_checkpoint), params=1, macs=1,
                      mean=0.5, std=0.25, parity_gate={"fp32": {"max_kl": 1.0, "min_agreement": 0.5}},
                      parity_gate_reason="test")
    monkeypatch.setattr(weights, "PRETRAINED", {"tiny": meta})
    res = _cli_wide("export", tiny_checkpoint, "-t", "torchscript", "-p", "fp32", "--val-data", synthetic_csv,
                    "--max-kl", "fp32=2", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    text = _text(res)
    assert ("tiny's own (fp32 max_kl 1.0, min_agreement 0.5) over the defaults, then your overrides "
            "(fp32 max_kl 2.0): in effect fp32 max_kl 2.0, min_agreement 0.5") in text
    # without overrides the line is as before (fer-edge bench calls it too)
    src = {"weight": {"name": "nano", "gate": {"int8": {"min_agreement": 0.965}}}, "overrides": None}
    assert weight_gate_line(src, "m.json") == ("parity gate: nano's own (int8 min_agreement 0.965) over the "
                                               "defaults; why: thresholds_source in m.json")
    src["overrides"] = {"min_agreement": {"int8": 0.999}}
    assert "in effect int8 min_agreement 0.999" in weight_gate_line(src, "m.json")


def test_onnx_int8_imports_only_the_opset_domains_its_nodes_use(onnx_fp16_int8):
    import onnx

    model = onnx.load(str(onnx_fp16_int8 / f"{STEM}_int8.onnx"))
    used = {n.domain for n in model.graph.node} | {""}
    imported = {o.domain for o in model.opset_import}
    assert imported <= used | {"ai.onnx"}, imported - used  # quant_pre_process left ai.onnx.training etc. before
    assert "" in imported
    onnx.checker.check_model(model, full_check=True)


def test_nncf_quantize_logs_no_torch_cuda_probe_line(monkeypatch, caplog):
    """NNCF's model-type check imports nncf.torch, whose torch.utils.cpp_extension import logs "No CUDA runtime is
    found, using CUDA_HOME=..." on a CPU machine with a CUDA path: a stray line in every OpenVINO INT8 export."""
    import logging

    import nncf
    import numpy as np

    from fer_edge.exporters import openvino as ov_exp

    def fake_quantize(model, *a, **k):
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found, using CUDA_HOME='/x'")
        logging.getLogger("nncf").info("Statistics collection")
        return model

    monkeypatch.setattr(nncf, "quantize", fake_quantize)
    monkeypatch.setattr(ov_exp, "first_convolution", lambda om: "conv0")
    before = logging.getLogger("torch.utils.cpp_extension").level
    with caplog.at_level(logging.DEBUG):
        q, first = ov_exp.quantize_int8("model", np.zeros((2, 1, 48, 48), np.float32))
    assert (q, first) == ("model", "conv0")
    assert not [r for r in caplog.records if "CUDA" in r.getMessage() or r.name == "nncf"], caplog.records
    # the loggers' levels are put back
    assert logging.getLogger("torch.utils.cpp_extension").level == before

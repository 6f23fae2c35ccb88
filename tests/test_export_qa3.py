"""QA round 3 on `fer-edge export` (the report on exporters and runtimes): each test fails without its fix."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fer_edge.errors import FerEdgeError

STEM = "fer_nano"  # the tiny checkpoint's model name: the artifacts' file stem


def _cli(*args):
    from fer_edge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def _text(res) -> str:
    return " ".join(res.output.split())


def _variant(tmp_path, tiny_checkpoint, name: str, change) -> Path:
    """The tiny checkpoint's raw dict changed by ``change(raw)``, saved as ``name`` (as torch.save would)."""
    import copy

    import torch

    raw = copy.deepcopy(torch.load(tiny_checkpoint, weights_only=True))
    change(raw)
    path = tmp_path / name
    torch.save(raw, path)
    return path


# --- 1. a checkpoint whose own outputs are not finite ------------------------------------------------------------
def _nan_weights(raw):
    raw["state_dict"]["stem.0.0.weight"].fill_(float("nan"))  # a diverged or corrupted weight


@pytest.mark.parametrize("args", [["-t", "torchscript,onnx", "-p", "fp32", "--val-data", "{csv}"],
                                  ["-t", "torchscript", "--no-validate"]])
def test_a_checkpoint_with_nan_outputs_is_refused_before_any_export(tiny_checkpoint, synthetic_csv, tmp_path, args):
    nan = _variant(tmp_path, tiny_checkpoint, "nan.pt", _nan_weights)
    out = tmp_path / "out"
    res = _cli("export", nan, *[a.format(csv=synthetic_csv) for a in args], "--out", out)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    text = _text(res)
    assert f"{nan}: the checkpoint's own outputs (logits) are not finite numbers (NaN)" in text, text
    assert "nothing is exported" in text and "passed" not in text
    assert not out.exists()  # refused before any work


def test_non_finite_reference_logits_on_the_validation_images_are_refused(monkeypatch, tiny_checkpoint,
                                                                          synthetic_csv, tmp_path):
    """Finite on the random probe, NaN on a real image: refused by the check on the gate's own images."""
    from fer_edge.exporters import api, export

    real = api._val.reference_logits

    def nan_on_images(model, inputs):
        z = real(model, inputs)
        if len(inputs) > 4:  # the validation images, not the probe
            z[3] = np.nan
        return z

    monkeypatch.setattr(api._val, "reference_logits", nan_on_images)
    monkeypatch.setattr(api._cal, "MIN_VAL_SIZE", 8)
    with pytest.raises(FerEdgeError, match=r"not finite numbers \(NaN\) for 1 of \d+ validation images \(PublicTest"):
        export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path / "out", val_data=synthetic_csv,
               data_progress=False)
    assert not (tmp_path / "out").exists()


def test_a_non_finite_reference_row_never_agrees():
    """An all-NaN reference row's argmax is 0; an artifact that gives class 0 (OpenVINO's ReLU turns NaN into 0)
    matched it: 100% agreement, "passed"."""
    from fer_edge import parity

    ref = np.full((20, 7), np.nan, dtype=np.float32)
    out = np.tile(np.array([[1.0, 0, 0, 0, 0, 0, 0]], dtype=np.float32), (20, 1))  # constant class 0
    labels = np.zeros(20, dtype=np.int64)
    stats = parity.compare(ref, out, labels)
    assert stats.agreement == 0.0 and stats.flips == 20
    assert stats.max_abs_diff == float("inf") and stats.kl == float("inf") and stats.ref_accuracy == 0.0
    for p in ("fp32", "fp16", "int8"):
        assert parity.check(stats, p) != [], p
    # one bad reference row among good ones: that row alone is a flip
    good = np.random.default_rng(0).normal(size=(20, 7))
    ref = good.copy()
    ref[5, 2] = np.inf
    stats = parity.compare(ref, good, good.argmax(1))
    assert stats.flips == 1 and stats.accuracy == 1.0 and stats.ref_accuracy == pytest.approx(0.95)


# --- 2. --out inside an image-folder data set the export reads ---------------------------------------------------
@pytest.fixture
def image_folder(tmp_path):
    from fer_edge.data.synthetic import make_synthetic, write_folder

    return write_folder(tmp_path / "dimg", {"train": make_synthetic(2, seed=0), "val": make_synthetic(2, seed=1)})


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("option, args, where", [
    ("--val-data", ["-t", "torchscript"], "val/exports"),
    ("--val-data", ["-t", "torchscript"], ""),
    ("--calib-data", ["-t", "onnx", "-p", "int8", "--no-validate"], "exports"),
])
def test_out_inside_an_image_folder_data_set_is_refused(tiny_checkpoint, image_folder, option, args, where):
    before = _tree(image_folder)
    out = image_folder / where if where else image_folder
    res = _cli("export", tiny_checkpoint, *args, option, image_folder, "--out", out)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    text = _text(res)
    how = "is" if not where else "lies inside"
    assert f"--out {out} {how} {image_folder}, the image-folder data set given as {option}" in text, text
    assert "pick an --out outside it" in text
    assert _tree(image_folder) == before  # nothing written into the data set


def test_out_inside_the_checkpoints_recorded_image_folder_is_refused(tiny_checkpoint, image_folder, tmp_path):
    from fer_edge.exporters import export

    def record(raw):
        raw["data"] = {"val": {"format": "folder", "source": str(image_folder), "split": "val"}}

    ckpt = _variant(tmp_path, tiny_checkpoint, "recorded.pt", record)
    before = _tree(image_folder)
    with pytest.raises(FerEdgeError, match="the image-folder data set that the checkpoint records as its "
                                           "validation data"):
        export(ckpt, ["torchscript"], ["fp32"], image_folder / "val" / "exports", data_progress=False)
    assert _tree(image_folder) == before


# --- 3. a write error while saving TorchScript (a full disk) --------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_a_write_error_while_saving_torchscript_fails_the_target_not_the_process(tiny_checkpoint, tmp_path):
    """torch's file writer threw from a C++ destructor on a write error: SIGABRT (exit 134), a .tmp file left and
    no manifest. A file-size limit gives the same write error as a full disk (EFBIG instead of ENOSPC)."""
    import resource
    import signal
    import subprocess

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # the manifest fits, the .ts does not

    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "fer_edge", "export", str(tiny_checkpoint), "-t", "torchscript",
                          "--no-validate", "--out", str(out)], preexec_fn=limit, capture_output=True, text=True,
                         env={**__import__("os").environ, "COLUMNS": "250"}, timeout=300)
    text = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 1, text[-3000:]
    assert "Traceback" not in text and "terminate called" not in text
    assert f"export failed: OSError: [Errno 27] File too large: '{out / (STEM + '_fp32.ts')}'" in text, text[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]  # no .tmp-* file left
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"] == [] and manifest["failed"][0]["target"] == "torchscript"


def test_a_full_disk_while_writing_the_manifest_names_it(monkeypatch, tiny_checkpoint, tmp_path):
    import errno

    import fer_edge.utils as utils

    real = utils.write_text_atomic

    def full(dest, text):
        if Path(dest).name == "manifest.json":
            raise OSError(errno.ENOSPC, "No space left on device")  # as a write() says it: no file named
        return real(dest, text)

    monkeypatch.setattr(utils, "write_text_atomic", full)
    out = tmp_path / "out"
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "--no-validate", "--out", out)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"error: {out / 'manifest.json'}: No space left on device" in _text(res)


# --- 4. a negative --calib-seed -----------------------------------------------------------------------------------
def test_a_negative_calib_seed_is_a_usage_error(tiny_checkpoint, synthetic_csv, tmp_path):
    from fer_edge.errors import OptionError
    from fer_edge.exporters import export

    res = _cli("export", tiny_checkpoint, "-t", "onnx", "-p", "int8", "--calib-data", synthetic_csv,
               "--calib-size", "20", "--calib-seed", "-1", "--no-validate", "--out", tmp_path / "a")
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "--calib-seed" in _text(res) and not (tmp_path / "a").exists()
    with pytest.raises(OptionError, match=r"--calib-seed must be at least 0 \(got -1\); val_seed must be at "
                                          r"least 0 \(got -5\)"):
        export(tiny_checkpoint, ["onnx"], ["int8"], tmp_path / "b", calib_data=synthetic_csv, calib_seed=-1,
               val_seed=-5, validate=False)
    assert not (tmp_path / "b").exists()


# --- 5. two exports into one --out at once -----------------------------------------------------------------------
@pytest.mark.skipif(sys.platform == "win32", reason="no fcntl: no lock on Windows")
def test_an_export_into_a_folder_another_export_is_writing_is_refused(tiny_checkpoint, tmp_path):
    import fcntl

    from fer_edge.exporters.api import LOCK_FILE

    out = tmp_path / "out"
    assert _cli("export", tiny_checkpoint, "-t", "torchscript", "--no-validate", "--out", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{STEM}_fp32.ts", "manifest.json"]  # the lock file removed
    before = (out / "manifest.json").read_text()
    with open(out / LOCK_FILE, "a") as held:  # what a running export holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = _cli("export", tiny_checkpoint, "-t", "onnx", "-p", "fp32", "--no-validate", "--out", out)
        assert res.exit_code == 1 and "Traceback" not in res.output, res.output
        assert (f"{out}: another fer-edge export is writing into it now (it holds {out / LOCK_FILE}); wait for it "
                "to end, or choose another --out") in _text(res)
        assert (out / LOCK_FILE).exists() and (out / "manifest.json").read_text() == before
        assert not (out / f"{STEM}_fp32.onnx").exists()
    (out / LOCK_FILE).unlink()
    res = _cli("export", tiny_checkpoint, "-t", "onnx", "-p", "fp32", "--no-validate", "--out", out)
    assert res.exit_code == 0, res.output
    assert not (out / LOCK_FILE).exists()


@pytest.mark.parametrize("exists", [False, True])
def test_an_export_that_finished_while_another_loaded_its_data_is_kept(monkeypatch, tiny_checkpoint, synthetic_csv,
                                                                       tmp_path, exists):
    """Each export read the manifest at its start and rewrote it whole: the one that finished last dropped the
    other's artifacts, and then refused to overwrite fer-edge's own file as not listed."""
    from fer_edge.exporters import api, export

    out = tmp_path / "out"
    if exists:
        out.mkdir()
    real = api._cal.load_validation

    def meanwhile(*a, **k):  # another export runs to its end while this one loads its data
        export(tiny_checkpoint, ["onnx"], ["fp32"], out, validate=False)
        return real(*a, **k)

    monkeypatch.setattr(api._cal, "load_validation", meanwhile)
    monkeypatch.setattr(api._cal, "MIN_VAL_SIZE", 8)
    res = export(tiny_checkpoint, ["torchscript"], ["fp32"], out, val_data=synthetic_csv, data_progress=False)
    listed = sorted(a["file"] for a in json.loads((out / "manifest.json").read_text())["artifacts"])
    assert listed == [f"{STEM}_fp32.onnx", f"{STEM}_fp32.ts"], res.warnings
    assert not [w for w in res.warnings if "not listed" in w], res.warnings


# --- 8. a fer-edge manifest whose file record has no sha256 ------------------------------------------------------
@pytest.mark.parametrize("damage", ["no sha256", "no file", "files not a list", "artifacts not a list"])
def test_a_damaged_file_record_is_dropped_with_a_warning_not_a_key_error(tiny_checkpoint, tmp_path, damage):
    from fer_edge.exporters.manifest import verify_manifest

    out = tmp_path / "out"
    assert _cli("export", tiny_checkpoint, "-t", "torchscript", "--no-validate", "--out", out).exit_code == 0
    m = json.loads((out / "manifest.json").read_text())
    art = m["artifacts"][0]
    if damage == "no sha256":
        del art["files"][0]["sha256"]
    elif damage == "no file":
        del art["files"][0]["file"]
    elif damage == "files not a list":
        art["files"] = {"file": art["file"]}
    else:
        m["artifacts"] = {"fer_nano_fp32.ts": art}
    (out / "manifest.json").write_text(json.dumps(m))
    problems = verify_manifest(out)
    if damage == "artifacts not a list":
        assert problems == ["its artifacts are a dict, not a list"]
    else:
        assert len(problems) == 1 and "(the manifest was edited or damaged)" in problems[0], problems
    res = _cli("export", tiny_checkpoint, "-t", "onnx", "-p", "fp32", "--no-validate", "--out", out)
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    listed = [a["file"] for a in json.loads((out / "manifest.json").read_text())["artifacts"]]
    assert listed == [f"{STEM}_fp32.onnx"]  # the damaged entry is no longer listed
    if damage == "no sha256":
        assert (f"{STEM}_fp32.ts (torchscript fp32) no longer listed in the manifest: the record of "
                f"{STEM}_fp32.ts has no sha256 (the manifest was edited or damaged)") in _text(res), _text(res)
    assert f"{STEM}_fp32.ts" in _text(res)  # named in a warning either way


# --- 6. strict JSON: no NaN / Infinity in manifest.json ---------------------------------------------------------
def _strict_json(path: Path):
    """``path`` parsed as strict JSON, as JavaScript's JSON.parse or Go's encoding/json would."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_non_finite_figures_are_written_as_null(tmp_path):
    from fer_edge.utils import write_json_atomic

    write_json_atomic(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.5, (2.0, -float("inf"))],
                                            "c": np.float32("nan"), "d": {"e": np.float64("inf")}, "f": 3})
    assert _strict_json(tmp_path / "x.json") == {"a": None, "b": [None, 1.5, [2.0, None]], "c": None,
                                                 "d": {"e": None}, "f": 3}


def test_a_manifest_with_an_infinite_logit_difference_is_strict_json(monkeypatch, tiny_checkpoint, synthetic_csv,
                                                                      tmp_path):
    """An artifact whose outputs are not finite gets max_abs_diff inf; json wrote it as `Infinity`."""
    import dataclasses

    from fer_edge import parity
    from fer_edge.exporters import api

    real = parity.compare
    monkeypatch.setattr(parity, "compare", lambda *a, **k: dataclasses.replace(
        real(*a, **k), max_abs_diff=float("inf"), kl=float("nan")))
    monkeypatch.setattr(api._cal, "MIN_VAL_SIZE", 8)
    out = tmp_path / "out"
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "--val-data", synthetic_csv, "--out", out)
    assert res.exit_code == 1 and "max |logit diff| inf" in _text(res), res.output  # the gate still says it
    v = _strict_json(out / "manifest.json")["artifacts"][0]["validation"]
    assert v["status"] == "failed" and v["max_abs_diff"] is None and v["kl"] is None
    assert v["agreement"] == 1.0


# --- 14. Core ML INT8 falling back to weights-only is not silent ------------------------------------------------
def test_core_ml_int8_falling_back_to_weights_only_is_warned(monkeypatch, tiny_checkpoint, synthetic_csv, tmp_path):
    """On macOS INT8 quantizes activations (W8A8); when that experimental step failed, the export made W8 and said
    so only inside the manifest entry. (Simulated here: activation quantization cannot run off macOS.)"""
    pytest.importorskip("coremltools")
    from fer_edge.exporters import coreml, export

    def fail(self, ml, req, variant):
        raise RuntimeError("linear_quantize_activations:\n  MLModel.predict is not available")

    monkeypatch.setattr(coreml, "activations_quantized_here", lambda: True)
    monkeypatch.setattr(coreml.CoreMLExporter, "_activations", fail)
    res = export(tiny_checkpoint, ["coreml"], ["int8"], tmp_path, calib_data=synthetic_csv, calib_size=20,
                 validate=False, data_progress=False)
    said = [w for w in res.warnings if w.startswith("coreml int8: quantizing the activations failed")]
    assert said == [f"coreml int8: quantizing the activations failed (RuntimeError: linear_quantize_activations: "
                    f"MLModel.predict is not available), so {STEM}_int8_logits.mlpackage and {STEM}_int8.mlpackage "
                    "are weights-only int8 (W8, float16 activations; no calibration image used) instead of W8A8; "
                    "export.activation_quantization in the manifest records why"], res.warnings
    assert said[0] in res.manifest["warnings"]
    for entry in res.manifest["artifacts"]:
        assert entry["export"]["activation_quantization"].startswith("failed, weights-only int8 instead")
        assert entry["calibration"] is None


# --- 9. a --name starting with a dot ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [".tmp-x", ".hidden", ".5"])
def test_a_name_starting_with_a_dot_is_refused(tiny_checkpoint, tmp_path, name):
    """`--name .tmp-x` artifacts were then named as leftover temporary files, hidden from the unlisted-file
    warning, and left by --replace."""
    from fer_edge.exporters import export

    out = tmp_path / "out"
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "--no-validate", "--name", name, "--out", out)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert f"--name {name!r} is not a plain file name stem: it must not be empty or start with a dot" in _text(res)
    assert not out.exists()
    with pytest.raises(FerEdgeError, match="start with a dot"):
        export(tiny_checkpoint, ["torchscript"], ["fp32"], out, validate=False, name=name)


# --- 11. an empty out_dir (or data path) in Python ----------------------------------------------------------------
def test_an_empty_out_dir_or_data_path_is_refused_in_python(tiny_checkpoint, tmp_path, monkeypatch):
    """Path("") is "." : export(..., out_dir="") wrote into the current folder, which the CLI refuses."""
    from fer_edge.errors import OptionError
    from fer_edge.exporters import export

    monkeypatch.chdir(tmp_path)
    with pytest.raises(OptionError, match=r"^--out is empty: give a path \(an unset variable in a script\?\)$"):
        export(tiny_checkpoint, ["torchscript"], ["fp32"], "", validate=False)
    with pytest.raises(OptionError, match=r"^--out, --calib-data, --val-data are empty"):
        export(tiny_checkpoint, ["onnx"], ["int8"], " ", calib_data="", val_data="")
    assert list(tmp_path.iterdir()) == []


# --- 12. threshold overrides that no gate of the export would apply -----------------------------------------------
@pytest.mark.parametrize("args, said", [
    (["-t", "torchscript", "--no-validate", "--min-agreement", "fp32=0.5", "--max-kl", "int8=0.1"],
     "--min-agreement, --max-kl set the parity gate's thresholds, and --no-validate skips the gate: leave them out, "
     "or drop --no-validate"),
    (["-t", "torchscript", "--val-data", "{csv}", "--max-abs-diff", "fp32=1e-4", "--max-accuracy-drop",
      "int8=0.02,fp16=0.01"],
     "--max-accuracy-drop int8, --max-accuracy-drop fp16: a threshold for a precision this export makes none of "
     "(torchscript fp32): leave them out, or add the precision to --precision"),
])
def test_threshold_overrides_that_would_do_nothing_are_refused(tiny_checkpoint, synthetic_csv, tmp_path, args, said):
    out = tmp_path / "out"
    res = _cli("export", tiny_checkpoint, *[a.format(csv=synthetic_csv) for a in args], "--out", out)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert said in _text(res), _text(res)
    assert not out.exists()


def test_threshold_overrides_for_exported_precisions_are_accepted(monkeypatch, tiny_checkpoint, synthetic_csv,
                                                                  tmp_path):
    from fer_edge.exporters import api, export

    monkeypatch.setattr(api._cal, "MIN_VAL_SIZE", 8)
    res = export(tiny_checkpoint, ["torchscript"], ["fp32"], tmp_path, val_data=synthetic_csv,
                 threshold_overrides={"max_kl": {"fp32": 1.0}}, data_progress=False)
    assert res.manifest["thresholds"]["fp32"]["max_kl"] == 1.0 and res.artifacts[0].status == "passed"


# --- 15. a dangling symbolic link as --out ------------------------------------------------------------------------
@pytest.mark.skipif(sys.platform == "win32", reason="symbolic links need privileges on Windows")
@pytest.mark.parametrize("under", [False, True])
def test_a_dangling_link_as_out_is_named_a_link_to_nothing(tiny_checkpoint, tmp_path, under):
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nonexistent")
    out = link / "sub" if under else link
    res = _cli("export", tiny_checkpoint, "-t", "torchscript", "--no-validate", "--out", out)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    text = _text(res)
    where = "is" if not under else f"lies under {link}, which is"
    assert (f"--out {out} {where} a symbolic link to {tmp_path / 'nonexistent'}, which does not exist (a link to "
            "nothing)") in text, text
    assert "is a file" not in text and not (tmp_path / "nonexistent").exists()


def test_the_gate_scores_a_model_with_fer2013s_classes_in_another_order_by_the_class_each_output_names(
        tiny_checkpoint, synthetic_csv, tmp_path, monkeypatch):
    """QA: the gate scored output i as FER2013's class i, so a model whose output rows (and labels) are in
    alphabetical order got a wrong accuracy; the same model with its rows permuted must score the same."""
    import torch

    from fer_edge.constants import LABELS
    from fer_edge.exporters import calibration, export

    monkeypatch.setattr(calibration, "MIN_VAL_SIZE", 64)  # the synthetic PublicTest has 84 images
    raw = torch.load(tiny_checkpoint, weights_only=True)
    order = sorted(range(len(LABELS)), key=lambda i: LABELS[i])  # output j is FER2013's class order[j]
    sd = dict(raw["state_dict"])
    sd["fc.weight"], sd["fc.bias"] = sd["fc.weight"][order], sd["fc.bias"][order]
    permuted = tmp_path / "alphabetical.pt"
    torch.save({**raw, "state_dict": sd, "labels": [LABELS[i] for i in order]}, permuted)
    acc = {}
    for name, ck in (("fer", tiny_checkpoint), ("alphabetical", permuted)):
        res = export(ck, ["onnx"], ["fp32"], tmp_path / name, calib_data=synthetic_csv, data_progress=False)
        (entry,) = [e for e in res.manifest["artifacts"] if e["target"] == "onnx"]
        acc[name] = (entry["validation"]["accuracy"], entry["validation"]["reference_accuracy"])
    assert acc["alphabetical"] == pytest.approx(acc["fer"]) and acc["fer"][0] > 0.2, acc

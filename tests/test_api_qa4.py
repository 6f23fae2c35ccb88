"""QA round 4 of the Python API: raw pixels given to a runtime, normalisations as dicts, wrong argument types,
repeated labels, and the names export's errors and help give."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fer_edge.constants import LABELS
from fer_edge.errors import ArtifactError, DataError, FerEdgeError, ModelError, OptionError
from test_export import export_all  # the shared once-per-session export
from test_predict import _cli, _joined
from test_runtimes import _fp32

runner = CliRunner()


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_checkpoint, synthetic_csv):
    return export_all(tmp_path_factory, tiny_checkpoint, synthetic_csv)


@pytest.fixture(scope="module")
def face(synthetic_arrays) -> np.ndarray:
    """One uint8 48 x 48 face crop the tiny model has learned."""
    return synthetic_arrays["PublicTest"][0][0]


# -- 1. a runtime refuses raw pixels ----------------------------------------------------------
@pytest.mark.parametrize("target", ["pytorch", "torchscript", "onnx", "openvino"])
def test_a_runtime_refuses_integer_and_bool_input_and_still_takes_floats(exported, tiny_checkpoint, face, target):
    """rt.run(uint8 pixels) converted them to float and returned a confident answer for the unscaled picture."""
    from fer_edge.preprocess import Normalization, normalize
    from fer_edge.runtimes import load_runtime

    rt = load_runtime(tiny_checkpoint if target == "pytorch" else _fp32(exported, target))
    raw = face[None, None]
    for bad in (raw, raw.astype(np.int64), raw > 127, raw.astype(np.uint16)):
        with pytest.raises(DataError, match=r"expected float32 N x 1 x 48 x 48 input .*got "
                           rf"{bad.dtype} values: .*fer_edge\.preprocess\.normalize"):
            rt.run(bad)
    x = normalize(face, Normalization(0.5, 0.25))
    want = rt.run(x)
    for same in (x.astype(np.float64), x.astype(np.float16)):  # other float dtypes: converted, as before
        np.testing.assert_allclose(rt.run(same), want, atol=2e-2 if same.dtype == np.float16 else 1e-5)


# -- 2. normalize takes the dict an artifact's metadata decodes to ---------------------------
def test_normalize_takes_a_normalization_dict_and_refuses_other_shapes(face):
    """normalize(gray, {"mean": .., "std": ..}) raised AttributeError ('dict' object has no attribute 'mean')."""
    import torch

    from fer_edge.preprocess import Normalization, normalize, normalize_torch

    want = normalize(face, Normalization(0.5, 0.25))
    meta = json.loads(json.dumps(Normalization(0.5, 0.25).to_dict()))  # as rt.metadata()["normalization"] reads
    np.testing.assert_array_equal(normalize(face, meta), want)
    np.testing.assert_array_equal(normalize_torch(torch.from_numpy(face), meta).numpy(), want)
    for bad, words in ((None, "got NoneType None"), ((0.5, 0.25), r"got tuple \(0\.5, 0\.25\)"),
                       ({"mean": 0.5}, r"must be \{'mean'"), ({"mean": 0.5, "std": 0}, "positive std")):
        with pytest.raises(DataError, match=f"normalization .*{words}"):
            normalize(face, bad)
        with pytest.raises(DataError, match=f"normalization .*{words}"):
            normalize_torch(torch.from_numpy(face), bad)


# -- 3. wrong arguments are fer-edge errors ---------------------------------------------------
def test_an_empty_array_is_refused_by_to_uint8():
    """to_uint8 of an empty float array raised numpy's ValueError (the minimum of nothing)."""
    from fer_edge.preprocess import to_uint8

    for empty in (np.zeros((0,), np.float32), np.zeros((0, 48), np.uint16), np.zeros((48, 0), np.uint8)):
        with pytest.raises(DataError, match=rf"shape {tuple(empty.shape)}.*no pixels".replace("(", r"\(")
                           .replace(")", r"\)")):
            to_uint8(empty)


def test_arguments_of_the_wrong_type_are_fer_edge_errors(tiny_checkpoint):
    import fer_edge
    from fer_edge.models import register_model
    from fer_edge.predict import Predictor
    from fer_edge.runtimes import load_runtime, runtime_for_path
    from fer_edge.runtimes._common import check_device

    rt = load_runtime(tiny_checkpoint)
    with pytest.raises(DataError, match="labels must be a list of class names, one per model output, got int 5"):
        Predictor(rt, labels=5)  # TypeError: 'int' object is not iterable
    with pytest.raises(ModelError, match="register_model takes a function .*got int 5"):
        register_model(5)  # AttributeError: 'int' object has no attribute '__name__'
    with pytest.raises(ArtifactError, match="expected the path of a model file .*got int 5"):
        runtime_for_path(5)  # pathlib's TypeError
    with pytest.raises(ArtifactError, match="expected the path of a model file .*got int 5"):
        load_runtime(5, runtime="onnxruntime")
    with pytest.raises(OptionError, match="the device must be a string such as 'cpu' .*got int 1"):
        fer_edge.load(tiny_checkpoint, device=1)  # was "cannot load it (AttributeError: ...lower')"
    with pytest.raises(OptionError, match="pytorch: the device must be a string such as 'cpu', got int 1"):
        check_device(1, ["cpu"], "pytorch", ["cpu", "cuda"])  # a runtime built directly
    assert fer_edge.load(tiny_checkpoint, device="CPU").runtime.device == "cpu"


# -- 4. labels are distinct, non-empty names ---------------------------------------------------
def test_predictor_labels_must_be_distinct_non_empty_names(tiny_checkpoint, face):
    """Predictor(rt, labels=["a"] * 7) merged seven probabilities into one; labels="abcdefg" was split per letter."""
    from fer_edge.predict import Predictor
    from fer_edge.runtimes import load_runtime

    rt = load_runtime(tiny_checkpoint)
    for bad, words in ((["a"] * 7, "must be distinct .*'a' more than once"),
                       ("abcdefg", "must be a list of class names, .*got str 'abcdefg'"),
                       (["a", "b", "", "d", "e", "f", "g"], "must be non-empty strings, got ''"),
                       (["a", "b", 3, "d", "e", "f", "g"], "must be non-empty strings, got 3"),
                       ([], "must name at least one class")):
        with pytest.raises(DataError, match=f"labels {words}"):
            Predictor(rt, labels=bad)
    p = Predictor(rt, labels=tuple("abcdefg"))
    assert p.labels == tuple("abcdefg") and sum(p.predict(face).probabilities.values()) == pytest.approx(1, abs=1e-5)


def test_an_artifact_whose_labels_repeat_is_refused(exported, face, tmp_path):
    """An ONNX copy whose metadata repeats 'happy' printed five probabilities summing to 0.95 and exited 0."""
    import onnx
    from PIL import Image

    from fer_edge.predict import load

    m = onnx.load(str(_fp32(exported, "onnx")))
    dup = ["happy", "happy", "fear", "happy", "sad", "surprise", "neutral"]
    for prop in m.metadata_props:
        if prop.key == "labels":
            prop.value = json.dumps(dup)
    path = tmp_path / "d.onnx"
    onnx.save(m, str(path))
    with pytest.raises(ArtifactError, match=r"d\.onnx: metadata 'labels' must be distinct .*'happy' more than once"):
        load(path)
    Image.fromarray(face).save(tmp_path / "face.png")
    r = _cli(tmp_path / "face.png", "--no-detect-faces", "--model", path, "--json")
    assert r.exit_code == 1 and "'happy' more than once" in _joined(r.output), r.output
    assert load(_fp32(exported, "onnx")).labels == LABELS  # the export itself is fine


# -- 5, 6. export's errors and help ---------------------------------------------------------
@pytest.mark.parametrize("seed, words", [("a", "val_seed takes a whole number, got 'a'"),
                                         (-1, r"val_seed must be at least 0 \(got -1\)")])
def test_export_names_the_val_seed_parameter_not_a_flag_that_does_not_exist(tiny_checkpoint, synthetic_csv,
                                                                            tmp_path, seed, words):
    """`fer-edge export` has no --val-seed (the CLI passes --calib-seed): the Python error named it."""
    from fer_edge.exporters import export

    with pytest.raises(FerEdgeError, match=words) as e:
        export(tiny_checkpoint, ["onnx"], ["fp32"], tmp_path / "ex", val_data=synthetic_csv, val_seed=seed,
               val_size=512)
    assert "--val-seed" not in str(e.value)


def test_export_help_says_where_validation_data_comes_from():
    """--val-data's help named the calibration data only, not the checkpoint's recorded data the gate falls back to."""
    from fer_edge.cli import app

    r = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200"})
    text = _joined(r.output.replace("│", " "))
    assert r.exit_code == 0 and ("(default: the calibration data, else the checkpoint's recorded validation data "
                                 "when it exists here)") in text, text

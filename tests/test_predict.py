"""fer-edge predict: the Predictor API over every artifact, face finding, bad inputs and the CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fer_edge.constants import LABELS
from fer_edge.errors import ArtifactError, CheckpointError, DataError, FerEdgeError, RuntimeUnavailableError
from fer_edge.faces import Box, detector_available, load_image

runner = CliRunner()


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def artifacts(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The tiny checkpoint and its ONNX / OpenVINO / TorchScript FP32 exports (Core ML too on macOS)."""
    from fer_edge.exporters import export

    targets = ["onnx", "openvino", "torchscript"] + (["coreml"] if sys.platform == "darwin" else [])
    res = export(tiny_checkpoint, targets=targets, precisions=["fp32"],
                 out_dir=tmp_path_factory.mktemp("exports"), validate=False, data_progress=False)
    out = {"checkpoint": tiny_checkpoint}
    for a in res.artifacts:
        if a.variant == "main":
            out[a.target] = a.path
    assert {"onnx", "openvino", "torchscript"} <= set(out), res
    return out


@pytest.fixture(scope="session")
def predictor(tiny_checkpoint):
    from fer_edge.predict import load

    return load(tiny_checkpoint)


@pytest.fixture(scope="session")
def faces48(synthetic_arrays) -> np.ndarray:
    """uint8 N x 48 x 48 face-like crops the tiny model has learned (synthetic PublicTest)."""
    return synthetic_arrays["PublicTest"][0]


@pytest.fixture
def face_dir(tmp_path, faces48) -> Path:
    """A folder of photos: a 48x48 grayscale PNG, a larger colour JPEG, a nested RGBA PNG."""
    d = tmp_path / "photos"
    (d / "nested").mkdir(parents=True)
    Image.fromarray(faces48[0]).save(d / "a.png")
    Image.fromarray(faces48[1]).resize((160, 160)).convert("RGB").save(d / "b.jpg", quality=95)
    Image.fromarray(faces48[2]).resize((96, 96)).convert("RGBA").save(d / "nested" / "c.png")
    (d / "notes.txt").write_text("not an image, skipped in directories")
    return d


class StubDetector:
    """Stands in for the Haar cascade in plumbing tests: one centred face unless the image is blank."""

    def detect(self, image):
        img = load_image(image)
        gray = np.asarray(img.convert("L"))
        if gray.std() < 1.0:
            return []
        w, h = img.size
        return [Box(w // 8, h // 8, w - w // 4, h - h // 4)]


@pytest.fixture
def stub_detector(monkeypatch):
    import fer_edge.faces as faces

    monkeypatch.setattr(faces, "_DEFAULT_DETECTOR", StubDetector())


@pytest.fixture(scope="session")
def haar():
    ok, why = detector_available()
    if not ok:
        pytest.skip(f"OpenCV's Haar face detector is unavailable: {why}")


@pytest.fixture(scope="session")
def sample_photo() -> Path:
    """A real photo with one face shipped with a dependency: matplotlib's grace_hopper.jpg."""
    try:
        from matplotlib import cbook

        p = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except Exception as e:  # matplotlib without its sample data
        pytest.skip(f"matplotlib sample photo grace_hopper.jpg not available ({e})")
    if not p.is_file():
        pytest.skip(f"matplotlib sample photo not found at {p}")
    return p


def _cli(*args):
    from fer_edge.cli import app

    return runner.invoke(app, ["predict", *map(str, args)])


def _json_lines(result) -> list[dict]:
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines]  # every stdout line must be JSON


# -- Predictor ------------------------------------------------------------------------------
def test_prediction_fields(predictor, faces48):
    p = predictor.predict(faces48[0])
    assert predictor.labels == LABELS
    assert p.label in LABELS and p.label == LABELS[p.index]
    assert list(p.probabilities) == list(LABELS)
    assert p.probs.shape == (7,) and p.probs.dtype == np.float32
    assert abs(sum(p.probabilities.values()) - 1.0) < 1e-5
    assert p.score == pytest.approx(max(p.probabilities.values()))
    assert p.box is None
    d = p.to_dict()
    assert d["label"] == p.label and d["box"] is None and set(d["probabilities"]) == set(LABELS)


def test_predict_accepts_paths_pil_arrays(predictor, faces48, tmp_path):
    path = tmp_path / "face.png"
    Image.fromarray(faces48[3]).save(path)
    by_array = predictor.predict(faces48[3])
    by_pil = predictor.predict(Image.open(path))
    by_path = predictor.predict(path)
    by_str = predictor.predict(str(path))
    rgb = np.repeat(faces48[3][..., None], 3, axis=2)
    by_rgb = predictor.predict(rgb)
    by_float = predictor.predict(faces48[3].astype(np.float32) / 255.0)
    for other in (by_pil, by_path, by_str, by_rgb, by_float):
        np.testing.assert_allclose(other.probs, by_array.probs, atol=1e-6)
    batch = predictor.predict_batch(faces48[:5])
    assert [b.label for b in batch] == [predictor.predict(f).label for f in faces48[:5]]
    assert predictor.predict_batch([]) == []


def test_predictions_learned_something(predictor, synthetic_arrays):
    images, labels = synthetic_arrays["PublicTest"]
    preds = predictor.predict_batch(images)
    acc = np.mean([p.index for p in preds] == labels)
    assert acc > 0.5  # 7 classes: chance is 0.14


def test_same_answers_for_every_artifact(artifacts, faces48):
    """Checkpoint, ONNX FP32, OpenVINO FP32 and TorchScript give the same top-1 (and nearly the same probabilities)."""
    import fer_edge

    load = fer_edge.load  # the public entry point
    ref = load(artifacts["checkpoint"])
    assert ref.runtime_name == "pytorch"
    ref_preds = ref.predict_batch(faces48)
    for target, runtime in (("onnx", "onnxruntime"), ("openvino", "openvino"), ("torchscript", "torchscript")):
        p = load(artifacts[target])
        assert p.runtime_name == runtime
        assert p.labels == ref.labels and p.normalization == ref.normalization
        assert p.metadata["model"] == "fer_nano" and p.metadata["target"] == target
        preds = p.predict_batch(faces48)
        assert [x.index for x in preds] == [x.index for x in ref_preds], target
        np.testing.assert_allclose(np.stack([x.probs for x in preds]), np.stack([x.probs for x in ref_preds]),
                                   atol=1e-4)
        one = p.predict(faces48[0])
        assert one.label == ref_preds[0].label


def test_runtime_option_overrides_suffix(artifacts, faces48):
    from fer_edge.predict import load

    with pytest.raises(FerEdgeError, match="unknown runtime"):
        load(artifacts["onnx"], runtime="nope")
    p = load(artifacts["onnx"], runtime="onnxruntime", device="cpu")
    assert p.predict(faces48[0]).label == load(artifacts["checkpoint"]).predict(faces48[0]).label


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML prediction needs macOS")
def test_coreml_same_top1(artifacts, faces48):
    from fer_edge.predict import load

    ref = [x.index for x in load(artifacts["checkpoint"]).predict_batch(faces48)]
    p = load(artifacts["coreml"])
    assert p.runtime_name == "coreml" and p.labels == LABELS
    assert [x.index for x in p.predict_batch(faces48)] == ref


def test_artifact_without_metadata_is_rejected(artifacts, tmp_path):
    import onnx

    from fer_edge.predict import load

    m = onnx.load(str(artifacts["onnx"]))
    del m.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(m, str(bare))
    with pytest.raises(ArtifactError, match="labels"):
        load(bare)


def test_load_errors(tmp_path):
    from fer_edge.predict import load
    from fer_edge.weights import PRETRAINED

    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load(tmp_path / "missing.pt")
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"\0")
    with pytest.raises(FerEdgeError, match="suffix"):
        load(odd)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        load(junk)
    with pytest.raises(ArtifactError, match=r"runtime onnxruntime does not run nano.pt: fer-edge runs that file "
                                            r"type in pytorch \(leave out the runtime= argument to have it chosen"):
        load("nano", runtime="onnxruntime")
    for empty in ("", " "):  # QA: read as the current folder ("a folder without a model file")
        with pytest.raises(ArtifactError, match="the model name is empty"):
            load(empty)
    if not PRETRAINED:  # until the shipped model exists, the default says so clearly
        with pytest.raises(CheckpointError, match="shipped"):
            load(None)


# -- face finding -----------------------------------------------------------------------------
def test_detect_faces_on_real_photo(haar, sample_photo, predictor):
    """OpenCV's frontal-face cascade finds Grace Hopper's face (512x600 photo, face near x=150..380, y=100..330)."""
    from fer_edge.faces import crop, detect_faces

    boxes = detect_faces(sample_photo)
    assert len(boxes) == 1, boxes
    b = boxes[0]
    assert 100 <= b.x <= 200 and 60 <= b.y <= 150 and 170 <= b.w <= 290 and b.w == b.h
    c = crop(sample_photo, b, margin=0.1)
    assert c.size[0] > b.w and c.size[1] > b.h
    preds = predictor.detect_and_predict(sample_photo)
    assert len(preds) == 1 and preds[0].box == b and preds[0].label in LABELS
    assert predictor.detect_and_predict(np.full((240, 320, 3), 128, np.uint8)) == []


def test_cli_real_detector(haar, sample_photo, tiny_checkpoint, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 160), (90, 90, 90)).save(blank)
    r = _cli(sample_photo, blank, "--model", tiny_checkpoint, "--json")
    assert r.exit_code == 0, r.output
    rows = {Path(x["image"]).name: x for x in _json_lines(r)}
    assert rows["grace_hopper.jpg"]["status"] == "ok" and len(rows["grace_hopper.jpg"]["faces"]) == 1
    assert rows["grace_hopper.jpg"]["faces"][0]["box"][2] > 150
    assert rows["blank.png"]["status"] == "no_face" and rows["blank.png"]["faces"] == []


def _stored_landscape_shown_portrait(tmp_path: Path, mark: bool = False) -> Path:
    """A 60 x 40 JPEG, its left half white (``mark``: a red bar on the right too), with EXIF orientation 6 (shown
    turned 90 degrees clockwise: 40 x 60)."""
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :30] = 255  # left half white as stored
    if mark:
        arr[5:10, 40:55] = (200, 40, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    with Image.open(path) as raw:
        assert raw.size == (60, 40) and raw.getexif().get(0x0112) == 6
    return path


def test_exif_rotation_is_honoured(tmp_path):
    """A JPEG stored landscape with orientation 6 (rotate 90 degrees clockwise) loads as portrait."""
    from fer_edge.preprocess import to_gray48

    path = _stored_landscape_shown_portrait(tmp_path)
    img = load_image(path)
    assert img.size == (40, 60)  # portrait after rotation
    g = np.asarray(img.convert("L"), dtype=np.float32)
    assert g[:25].mean() > 200 and g[35:].mean() < 50  # stored left side is now on top
    np.testing.assert_array_equal(to_gray48(path), to_gray48(img))
    np.testing.assert_array_equal(np.asarray(img), np.rot90(np.asarray(Image.open(path).convert("RGB")), k=-1))


def test_an_exif_rotated_pil_image_is_turned_like_its_file(tmp_path, predictor, stub_detector):
    """A PIL image passed in (not its path) ignored its EXIF orientation: another picture was classified and face
    boxes were in pixels of the image as stored. Now it loads, classifies and gets boxes as its file does."""
    from fer_edge.faces import crop, detect_faces
    from fer_edge.predict import Predictor
    from fer_edge.preprocess import to_gray48

    predictor = Predictor(predictor.runtime, detector=StubDetector())  # (the shared one may hold the Haar detector)

    path = _stored_landscape_shown_portrait(tmp_path, mark=True)
    with Image.open(path) as raw:
        assert raw.size == (60, 40) and raw.getexif().get(0x0112) == 6
        img = load_image(raw)
        assert img.size == (40, 60)
        np.testing.assert_array_equal(np.asarray(img), np.asarray(load_image(path)))
        np.testing.assert_array_equal(to_gray48(raw), to_gray48(path))
        np.testing.assert_array_equal(np.asarray(load_image(img)), np.asarray(img))  # not turned twice
        assert raw.size == (60, 40) and raw.getexif().get(0x0112) == 6  # the caller's image is left as it was
        by_path = predictor.detect_and_predict(path)
        by_pil = predictor.detect_and_predict(raw)
        assert [p.box for p in by_pil] == [p.box for p in by_path] == [Box(5, 7, 30, 45)]
        assert [p.probabilities for p in by_pil] == [p.probabilities for p in by_path]
        assert predictor.predict(raw).probabilities == predictor.predict(path).probabilities
        assert detect_faces(raw) == detect_faces(path)
        np.testing.assert_array_equal(np.asarray(crop(raw, by_path[0].box)), np.asarray(crop(path, by_path[0].box)))
        r = predictor.predict_image(raw)
        assert (r.width, r.height) == (40, 60) and [f.box for f in r.faces] == [p.box for p in by_path]
        # an image derived from the file's (PIL sets no format on it, and keeps the tag) is the caller's: taken as
        # given, so a turn of their own is not turned again (regression QA: rotate(-90) came back 60 x 80)
        turned = raw.rotate(-90, expand=True)
        assert turned.format is None and turned.getexif().get(0x0112) == 6
        np.testing.assert_array_equal(np.asarray(load_image(turned).convert("RGB")), np.asarray(turned.convert("RGB")))
        assert load_image(raw.convert("RGB")).size == (60, 40)  # (derived too: exif_transpose it first)


def test_cli_reports_rotated_size(predictor, tmp_path, tiny_checkpoint):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    Image.new("RGB", (120, 80), (200, 30, 30)).save(path, exif=exif)
    r = _cli(path, "--no-detect-faces", "--json", "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    (row,) = _json_lines(r)
    assert (row["width"], row["height"]) == (80, 120)


# -- bad inputs ---------------------------------------------------------------------------------
def test_bad_inputs_in_the_api(predictor, tmp_path, stub_detector):
    bad = tmp_path / "broken.jpg"
    bad.write_text("this is not a JPEG")
    r = predictor.predict_image(bad)
    assert r.status == "error" and "cannot read image" in r.error and r.faces == []
    with pytest.raises(DataError, match="cannot read image"):
        predictor.predict(bad)
    assert predictor.predict_image(tmp_path / "missing.png").status == "error"
    blank = tmp_path / "blank.png"
    Image.new("L", (120, 120), 77).save(blank)
    nf = predictor.predict_image(blank)
    assert nf.status == "no_face" and nf.error is None and (nf.width, nf.height) == (120, 120)
    assert nf.to_dict()["faces"] == []


def test_collect_inputs(face_dir, tmp_path):
    from fer_edge.predict import collect_inputs

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("no images here")
    items = collect_inputs([face_dir, empty, tmp_path / "nope.jpg"])
    good = [i for i in items if i.error is None]
    assert [i.relative.as_posix() for i in good] == ["a.png", "b.jpg", "nested/c.png"]
    errors = [i.error for i in items if i.error]
    assert any("directory has no images" in e for e in errors)
    assert any("no such file" in e for e in errors)


def test_cli_one_bad_file_does_not_stop_the_rest(face_dir, tiny_checkpoint, stub_detector):
    (face_dir / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.new("L", (64, 64), 128).save(face_dir / "blank.png")
    r = _cli(face_dir, "--json", "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    rows = {Path(x["image"]).name: x for x in _json_lines(r)}
    assert set(rows) == {"a.png", "b.jpg", "c.png", "zz_broken.png", "blank.png"}
    assert rows["zz_broken.png"]["status"] == "error" and "cannot read image" in rows["zz_broken.png"]["error"]
    assert rows["blank.png"]["status"] == "no_face"
    for name in ("a.png", "b.jpg", "c.png"):
        (face,) = rows[name]["faces"]
        assert rows[name]["status"] == "ok" and len(face["box"]) == 4 and face["label"] in LABELS
        assert set(face["probabilities"]) == set(LABELS)
    assert "zz_broken.png" in r.stderr and "1 failed" in r.stderr


def test_cli_every_input_failing_exits_nonzero(tmp_path, tiny_checkpoint, stub_detector):
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    r = _cli(empty, bad, tmp_path / "missing.png", "--model", tiny_checkpoint)
    assert r.exit_code == 1
    assert "directory has no images" in r.stderr
    assert "cannot read image" in r.stderr
    assert "no such file" in r.stderr
    r = _cli(empty, "--json", "--model", tiny_checkpoint)
    assert r.exit_code == 1
    (row,) = _json_lines(r)
    assert row["status"] == "error" and "no images" in row["error"]


def test_cli_no_face_is_a_result_not_a_failure(tmp_path, tiny_checkpoint, stub_detector):
    blank = tmp_path / "wall.jpg"
    Image.new("RGB", (300, 200), (240, 240, 230)).save(blank)
    r = _cli(blank, "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    assert "no face" in r.stdout


def test_cli_face_crops_without_a_face_get_a_hint(tmp_path, tiny_checkpoint, stub_detector):
    """QA: FER2013's own 48x48 crops gave "no face" with no word on --no-detect-faces; a large image does not."""
    crop, big = tmp_path / "crop.jpg", tmp_path / "wall.jpg"
    Image.new("L", (48, 48), 128).save(crop)
    Image.new("RGB", (300, 200), (240, 240, 230)).save(big)
    r = _cli(crop, big, "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    err = " ".join(r.stderr.split())
    assert "hint: 1 of the 2 images without a face is at most 96x96 pixels" in err and "--no-detect-faces" in err, err
    r = _cli(crop, "--model", tiny_checkpoint)
    assert "hint: the image without a face is at most 96x96 pixels" in " ".join(r.stderr.split())
    assert "if it is a face crop" in " ".join(r.stderr.split())
    crop2 = tmp_path / "crop2.png"
    Image.new("L", (96, 90), 128).save(crop2)
    r = _cli(crop, crop2, big, "--model", tiny_checkpoint)
    assert "hint: 2 of the 3 images without a face are" in " ".join(r.stderr.split())
    r = _cli(big, "--model", tiny_checkpoint)
    assert "hint:" not in r.stderr
    r = _cli(crop, "--model", tiny_checkpoint, "--no-detect-faces")
    assert r.exit_code == 0 and "hint:" not in r.stderr


def test_cli_without_a_detector_says_how_to_proceed(face_dir, tiny_checkpoint, monkeypatch):
    import fer_edge.faces as faces

    def unavailable():
        raise RuntimeUnavailableError("OpenCV 5.0.0 has no Haar cascade detector; pass --no-detect-faces")

    monkeypatch.setattr(faces, "_DEFAULT_DETECTOR", None)
    monkeypatch.setattr(faces, "default_detector", unavailable)
    r = _cli(face_dir, "--model", tiny_checkpoint)
    assert r.exit_code == 1 and "--no-detect-faces" in r.stderr
    r = _cli(face_dir, "--model", tiny_checkpoint, "--no-detect-faces")  # no detector needed
    assert r.exit_code == 0, r.output


def test_an_opencv_that_cannot_be_imported_is_a_clear_error(face_dir, tiny_checkpoint, monkeypatch):
    """opencv-python without libGL fails at import: an error naming the fix, not a traceback."""
    import fer_edge.faces as faces

    monkeypatch.setattr(faces, "_DEFAULT_DETECTOR", None)
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    with pytest.raises(RuntimeUnavailableError, match="OpenCV cannot be imported.*--no-detect-faces"):
        faces.FaceDetector()
    ok, why = detector_available()
    assert not ok and "OpenCV cannot be imported" in why
    r = _cli(face_dir, "--model", tiny_checkpoint)
    assert r.exit_code == 1 and "OpenCV cannot be imported" in r.stderr, r.output
    assert "Traceback" not in r.output
    r = _cli(face_dir, "--model", tiny_checkpoint, "--no-detect-faces")  # no detector needed
    assert r.exit_code == 0, r.output


def test_cli_bad_model(face_dir, tmp_path):
    r = _cli(face_dir, "--model", tmp_path / "nope.onnx")
    assert r.exit_code == 1 and "nope.onnx" in r.stderr
    r = _cli(face_dir, "--model", tmp_path)  # a folder: which file in it is asked for
    assert r.exit_code == 1 and "is a folder without a model file" in r.stderr
    # an unknown runtime is a usage error (exit 2) that lists the registry's runtimes, before any work
    r = _cli(face_dir, "--model", "nano", "--runtime", "bogus")
    assert r.exit_code == 2 and "'bogus' is not one of" in " ".join(r.stderr.split()), r.stderr
    from fer_edge.runtimes import RUNTIMES

    assert all(f"'{n}'" in r.stderr for n in RUNTIMES), r.stderr
    r = _cli(face_dir, "--model", "nano", "--runtime", "onnxruntime")  # a known one that does not run a .pt
    assert r.exit_code == 1 and "does not run" in r.stderr, r.stderr


# -- CLI output ---------------------------------------------------------------------------------
def test_cli_table(face_dir, tiny_checkpoint, stub_detector, monkeypatch):
    from fer_edge.cli.common import console

    monkeypatch.setattr(console, "_width", 250)  # wide enough that no path is folded
    r = _cli(face_dir, "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    assert "fer_nano (pytorch)" in r.stdout
    assert all(lbl in r.stdout for lbl in LABELS)  # one column per class
    for name in ("a.png", "b.jpg", "c.png"):
        (line,) = [ln for ln in r.stdout.splitlines() if name in ln]
        assert len([t for t in line.split() if t.replace(".", "").isdigit() and "." in t]) == 7
    assert "3 inputs: 3 faces classified, 0 without a face, 0 failed" in r.stderr


def test_cli_table_names_images_relative_to_their_common_folder(face_dir, tiny_checkpoint, stub_detector, monkeypatch):
    """On an 80-column terminal the long temporary folder is said once, in the caption, and the
    image names are not folded across lines."""
    from fer_edge.cli.common import console

    monkeypatch.setattr(console, "_width", 80)
    r = _cli(face_dir, "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    rows = [ln.split() for ln in r.stdout.splitlines()]
    assert [row[0] for row in rows if row and row[0] in ("a.png", "b.jpg", "nested/c.png")] == \
        ["a.png", "b.jpg", "nested/c.png"]
    assert "images in" in r.stdout
    # without face detection the box cell says "whole" on the row's own line, not folded onto the next
    r = _cli(face_dir, "--model", tiny_checkpoint, "--no-detect-faces")
    assert r.exit_code == 0, r.output
    rows = [ln.split() for ln in r.stdout.splitlines()]
    named = [row for row in rows if row and row[0] in ("a.png", "b.jpg", "nested/c.png")]
    assert len(named) == 3 and all(row[2] == "whole" for row in named)
    assert len([row for row in rows if "whole" in row]) == 3


def test_cli_json_and_annotate(face_dir, artifacts, tmp_path, stub_detector):
    out = tmp_path / "annotated"
    r = _cli(face_dir, "--json", "--annotate", out, "--model", artifacts["onnx"])
    assert r.exit_code == 0, r.output
    rows = _json_lines(r)
    assert len(rows) == 3 and all(x["status"] == "ok" for x in rows)
    for rel in ("a.png", "b.jpg", "nested/c.png"):
        src, dst = face_dir / rel, out / rel
        assert dst.is_file(), rel
        a, b = Image.open(src), Image.open(dst)
        assert b.size == a.size
        assert not np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
    assert not [p for p in out.rglob("*") if p.name.startswith(".tmp")]  # atomic writes left no debris


def test_annotate_draws_boxes_and_labels(predictor, faces48, tmp_path):
    from fer_edge.predict import write_annotated

    img = Image.fromarray(faces48[0]).resize((200, 200)).convert("RGB")
    pred = predictor.predict_batch(faces48[:1])[0]
    pred.box = Box(40, 50, 100, 100)
    dest = write_annotated(img, [pred], tmp_path / "x.jpg")
    drawn = np.asarray(Image.open(dest).convert("RGB")).astype(int)
    orig = np.asarray(img).astype(int)
    assert np.abs(drawn[60:140, 40] - orig[60:140, 40]).mean() > 30  # the box's left edge
    assert np.abs(drawn[100, 70:110] - orig[100, 70:110]).mean() < 20  # inside the box untouched


def _joined(text: str) -> str:
    return " ".join(text.split())


def test_annotate_into_the_inputs_own_folder(face_dir, tiny_checkpoint, stub_detector, monkeypatch):
    """`cd photos && predict a.png --annotate .` classifies a.png (it used to drop every input under the folder);
    a later run over the folder skips only fer-edge's own earlier copies, found by their marker, and says so."""
    monkeypatch.chdir(face_dir)
    before = (face_dir / "a.png").read_bytes()
    r = _cli("a.png", "--model", tiny_checkpoint, "--annotate", ".")
    assert r.exit_code == 0, r.output
    assert "1 input: 1 face classified, 0 without a face, 0 failed; 1 annotated copy in ." in _joined(r.stderr)
    from fer_edge.predict import is_annotated_copy

    assert (face_dir / "a.png").read_bytes() == before  # the input is never replaced by its copy
    assert is_annotated_copy(face_dir / "a.annotated.png") and not is_annotated_copy(face_dir / "a.png")

    own = face_dir / "own.annotated.png"  # a user's photo that only looks like a copy by its name
    Image.open(face_dir / "a.png").save(own)
    own_bytes = own.read_bytes()
    r = _cli(".", "--json", "--model", tiny_checkpoint, "--annotate", ".")
    assert r.exit_code == 0, r.output
    names = sorted(Path(x["image"]).as_posix() for x in _json_lines(r))
    assert names == ["a.png", "b.jpg", "nested/c.png", "own.annotated.png"]
    err = _joined(r.stderr)
    assert "skipped 1 earlier annotated copy in . (written by fer-edge predict --annotate" in err
    assert "a.annotated.png" in err and "4 annotated copies in ." in err
    assert own.read_bytes() == own_bytes  # the user's photo is classified and kept, its copy goes beside it
    assert is_annotated_copy(face_dir / "own.annotated.annotated.png")
    assert not (face_dir / "a.annotated2.png").exists()  # the earlier copy of a.png is replaced, not multiplied


def test_annotate_refuses_a_folder_it_cannot_write_and_counts_the_copies_written(face_dir, tiny_checkpoint,
                                                                                 stub_detector, tmp_path):
    blocker = tmp_path / "somefile"
    blocker.write_text("a file, not a folder")
    r = _cli(face_dir, "--model", tiny_checkpoint, "--annotate", blocker / "sub")
    assert r.exit_code == 1
    err = _joined(r.stderr)
    assert f"--annotate {blocker / 'sub'} lies under {blocker}, which is a file, not a folder" in err
    assert "inputs:" not in err and "warning" not in err and not r.stdout.strip()  # refused before any work

    out = tmp_path / "out"
    out.mkdir()
    (out / "nested").write_text("in the way of nested/c.png's copy")
    r = _cli(face_dir, "--model", tiny_checkpoint, "--annotate", out)
    assert r.exit_code == 0, r.output
    err = _joined(r.stderr)
    assert "warning:" in err and "c.png: cannot write annotated copy" in err
    assert f"3 faces classified, 0 without a face, 0 failed; 2 annotated copies in {out}, 1 could not be written" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.jpg", "nested"]


def test_annotated_copies_never_share_a_name(face_dir, tiny_checkpoint, stub_detector, tmp_path, faces48):
    """x.gif's copy is written as x.gif.png: the name is decided once, with that suffix, so the copy of another
    input named x.gif.png does not replace it; nor does a copy replace a user's file already in the folder."""
    for sub, name in (("a", "x.gif"), ("b", "x.gif.png")):
        (tmp_path / "clash" / sub).mkdir(parents=True)
        Image.fromarray(faces48[0]).resize((64, 64)).save(tmp_path / "clash" / sub / name)
    out = tmp_path / "ann"
    out.mkdir()
    Image.fromarray(faces48[5]).save(out / "a.png")  # the user's own file, not an earlier copy
    user = (out / "a.png").read_bytes()
    r = _cli(tmp_path / "clash" / "a" / "x.gif", tmp_path / "clash" / "b" / "x.gif.png", face_dir / "a.png",
             "--model", tiny_checkpoint, "--annotate", out)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["a.annotated.png", "a.png", "x.gif.annotated.png", "x.gif.png"]
    from fer_edge.predict import annotated_copy_path, is_annotated_copy

    assert all(is_annotated_copy(out / n) for n in ("a.annotated.png", "x.gif.annotated.png", "x.gif.png"))
    assert (out / "a.png").read_bytes() == user
    assert "3 annotated copies in" in _joined(r.stderr)
    assert annotated_copy_path("d/x.gif") == Path("d/x.gif.png") == annotated_copy_path("d/x.gif.png")
    assert annotated_copy_path("x.bmp") == Path("x.bmp.png") and annotated_copy_path("x.JPG") == Path("x.JPG")


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp", ".tif", ".gif", ".bmp"])
def test_annotated_copies_carry_their_marker(predictor, faces48, tmp_path, suffix):
    from fer_edge.predict import is_annotated_copy, write_annotated

    img = Image.fromarray(faces48[0]).convert("RGB")
    dest = write_annotated(img, predictor.predict_batch(faces48[:1]), tmp_path / f"x{suffix}")
    assert dest.is_file() and is_annotated_copy(dest)
    assert dest.name == (f"x{suffix}.png" if suffix in (".gif", ".bmp") else f"x{suffix}")
    plain = tmp_path / f"plain{suffix}"
    img.save(plain)
    assert not is_annotated_copy(plain)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    assert not is_annotated_copy(tmp_path / "junk.png") and not is_annotated_copy(tmp_path / "missing.png")


def test_duplicate_inputs_are_classified_once(face_dir, tiny_checkpoint, stub_detector, tmp_path):
    out = tmp_path / "d"
    a = face_dir / "a.png"
    r = _cli(a, face_dir / "nested" / ".." / "a.png", face_dir, "--json", "--model", tiny_checkpoint,
             "--annotate", out)
    assert r.exit_code == 0, r.output
    rows = _json_lines(r)
    assert [Path(x["image"]).name for x in rows] == ["a.png", "b.jpg", "c.png"]  # first order kept
    assert rows[0]["image"] == str(a)
    err = _joined(r.stderr)
    assert "2 duplicate inputs dropped" in err and "3 inputs: 3 faces classified" in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        ["a.png", "b.jpg", "nested/c.png"]
    r = _cli(a, "--json", "--model", tiny_checkpoint)
    assert "duplicate" not in r.stderr


def test_an_unreadable_subfolder_is_reported(face_dir, tiny_checkpoint, stub_detector, monkeypatch):
    """A folder the walk cannot list is an error row naming it (tests run as root, so the refusal is simulated)."""
    import os

    from fer_edge.predict import collect_inputs

    nested = (face_dir / "nested").resolve()
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).resolve() == nested:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    items = collect_inputs([face_dir])
    assert [i.relative.as_posix() for i in items if i.error is None] == ["a.png", "b.jpg"]
    (bad,) = [i for i in items if i.error]
    assert bad.source == str(face_dir / "nested") and "cannot read this folder (Permission denied)" in bad.error
    r = _cli(face_dir, "--json", "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    rows = {x["image"]: x for x in _json_lines(r)}
    assert rows[str(face_dir / "nested")]["status"] == "error"
    assert "cannot read this folder" in r.stderr and "3 inputs: 2 faces classified, 0 without a face, 1 failed" in \
        _joined(r.stderr)
    r = _cli(face_dir / "nested", "--model", tiny_checkpoint)  # the folder argument itself
    assert r.exit_code == 1 and "cannot read this folder" in r.stderr and "has no images" not in r.stderr


def test_margin_without_face_detection_is_refused(face_dir, tiny_checkpoint, stub_detector):
    from fer_edge.cli import app

    r = runner.invoke(app, ["predict", str(face_dir / "a.png"), "--model", str(tiny_checkpoint), "--margin", "0.2",
                            "--no-detect-faces"], env={"COLUMNS": "250"})
    assert r.exit_code == 2
    assert "'--margin': it sets the border around detected faces, and --no-detect-faces detects none" in r.output
    for extra in (["--margin", "0.2"], ["--no-detect-faces"], ["--margin", "0"]):
        r = _cli(face_dir / "a.png", "--model", tiny_checkpoint, *extra)
        assert r.exit_code == 0, (extra, r.output)


def test_an_unknown_device_is_a_usage_error_and_an_absent_one_is_not(face_dir, tiny_checkpoint, stub_detector):
    """QA: predict --device gpu (a name PyTorch takes on no machine: a typo) exited 1, where README and --help call
    an unknown name a usage error, exit 2; cuda (known, absent without a GPU) stays exit 1."""
    import torch

    r = _cli(face_dir / "a.png", "--model", tiny_checkpoint, "--device", "gpu")
    assert r.exit_code == 2 and "unknown device 'gpu' (its devices: cpu, cuda, mps)" in _joined(r.stderr), r.output
    if not torch.cuda.is_available():
        r = _cli(face_dir / "a.png", "--model", tiny_checkpoint, "--device", "cuda")
        assert r.exit_code == 1 and "device 'cuda' is not available here" in _joined(r.stderr), r.output
    r = _cli(face_dir / "a.png", "--model", tiny_checkpoint, "--device", "")  # a script's unset variable
    assert r.exit_code == 2 and "is empty: name a device" in _joined(r.stderr), r.output


@pytest.mark.parametrize("value", ["nan", "inf", "1.5", "-0.1"])
def test_margin_must_be_a_finite_number_in_range(face_dir, tiny_checkpoint, value):
    from fer_edge.cli import app

    r = runner.invoke(app, ["predict", str(face_dir / "a.png"), "--model", str(tiny_checkpoint), f"--margin={value}"],
                      env={"COLUMNS": "250"})
    assert r.exit_code == 2
    assert f"'--margin': must be a finite number from 0 to 1 (the share of the face box added on each side; " \
           f"default 0.1), got {value}" in r.output


@pytest.mark.shared_data
def test_cli_no_detect_faces_on_fer2013(shared_fer2013, tiny_checkpoint, predictor):
    """Real FER2013 validation images are already face crops: --no-detect-faces classifies each whole."""
    val = shared_fer2013 / "images" / "val"
    if not val.is_dir():
        pytest.skip(f"no image-folder release at {val}")
    files = [sorted((val / c).glob("*.jpg"))[0] for c in LABELS if (val / c).is_dir()]
    assert files
    r = _cli(*files, "--no-detect-faces", "--json", "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    rows = _json_lines(r)
    assert len(rows) == len(files)
    for f, row in zip(files, rows):
        assert row["status"] == "ok" and (row["width"], row["height"]) == (48, 48)
        (face,) = row["faces"]
        assert face["box"] is None
        ref = predictor.predict(f)
        assert face["label"] == ref.label
        assert face["probabilities"] == pytest.approx(ref.probabilities, abs=1e-5)


# -- pixel depth: 16-bit and float images are scaled, not clipped -----------------------------
def _gradient() -> np.ndarray:
    """A 60 x 50 uint8 picture using the whole 0..255 range (clipping would show)."""
    y, x = np.mgrid[0:60, 0:50]
    return ((x * 5 + y * 3) % 256).astype(np.uint8)


def _save(kind: str, a: np.ndarray, path: Path) -> Path:
    if kind == "png16":  # PIL opens it as I;16
        Image.fromarray(a.astype(np.uint16) * 257).save(path := path.with_suffix(".png"))
    elif kind == "tiff_int32":  # mode I
        Image.fromarray(a.astype(np.int32)).save(path := path.with_suffix(".tif"))
    elif kind == "tiff_float_255":  # mode F, 0..255
        Image.fromarray(a.astype(np.float32)).save(path := path.with_suffix(".tif"))
    elif kind == "tiff_float_01":  # mode F, 0..1
        Image.fromarray(a.astype(np.float32) / 255).save(path := path.with_suffix(".tif"))
    else:
        raise ValueError(kind)
    return path


@pytest.mark.parametrize("kind", ["png16", "tiff_int32", "tiff_float_255", "tiff_float_01"])
def test_high_bit_depth_files_load_like_their_8bit_picture(kind, tmp_path):
    """PIL's convert("L") clips a 16-bit or float image to white; load_image scales it instead."""
    from fer_edge.preprocess import to_gray48

    a = _gradient()
    path = _save(kind, a, tmp_path / kind)
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I", "F"), raw.mode  # really a high-depth mode
    img = load_image(path)
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), a)
    np.testing.assert_array_equal(to_gray48(path), to_gray48(a))
    with Image.open(path) as raw:  # an already opened PIL image takes the same path
        np.testing.assert_array_equal(to_gray48(raw), to_gray48(a))


def test_cielab_tiff_and_premultiplied_la_images_are_read(tmp_path, predictor):
    """PIL converts neither LAB nor La to L or RGB; a LAB file gives its lightness, La is un-premultiplied."""
    from fer_edge.preprocess import to_gray48

    a = _gradient()
    lab = Image.merge("LAB", [Image.fromarray(a), Image.new("L", (50, 60), 128), Image.new("L", (50, 60), 128)])
    lab.save(path := tmp_path / "face.tif")
    with Image.open(path) as raw:
        assert raw.mode == "LAB"  # really a CIELAB file
    np.testing.assert_array_equal(np.asarray(load_image(path)), a)
    np.testing.assert_array_equal(to_gray48(path), to_gray48(a))
    assert predictor.predict(path)  # classified, not an error
    la = Image.merge("LA", [Image.fromarray(a), Image.new("L", (50, 60), 255)]).convert("La")
    assert la.mode == "La"
    np.testing.assert_array_equal(to_gray48(la), to_gray48(a))  # opaque: the same picture


@pytest.mark.parametrize("arr", [
    _gradient().astype(np.uint16) * 257,  # full 16-bit range
    _gradient().astype(np.int32),  # integers in 0..255
    _gradient().astype(np.int64) * 257,  # integers in 0..65535
    _gradient().astype(np.float32) / 255,
    _gradient().astype(np.float64),
], ids=["uint16", "int32_8bit", "int64_16bit", "float_01", "float_255"])
def test_array_depths_scale_to_the_same_picture(arr):
    from fer_edge.preprocess import to_uint8

    np.testing.assert_array_equal(to_uint8(arr), _gradient())


@pytest.mark.parametrize("arr, words", [
    ((_gradient().astype(np.float32) / 255 - 0.5) / 0.25, "fer-edge normalises them itself"),  # already normalised
    (_gradient().astype(np.float32) * 2, "expected 0..1 or 0..255"),
    (np.full((48, 48), 70000, np.int32), "0..65535"),
    (np.full((48, 48), np.inf, np.float32), "pixel values span"),
    (np.zeros((48, 48), np.complex64), "dtype complex64"),
    (np.full((48, 48), np.nan, np.float32), "every pixel value is NaN"),
    (np.full((48, 48), 2**64 - 1, np.uint64), "integer pixel values span 1.84467e\\+19..1.84467e\\+19"),  # not -1..-1
])
def test_arrays_with_no_known_pixel_range_are_refused(arr, words, predictor):
    with pytest.raises(DataError, match=words):
        load_image(arr)
    with pytest.raises(DataError, match=words):  # the Predictor API says the same, nothing is classified
        predictor.predict(arr)


@pytest.mark.parametrize("size", [(0, 0), (0, 48), (48, 0)])
@pytest.mark.parametrize("mode", ["L", "RGB", "I;16", "F"])  # (16-bit and float ones are scaled first: QA)
def test_an_image_without_pixels_is_refused(size, mode, predictor):
    """A 0 x N PIL image is refused like an empty array, not resized from nothing and classified."""
    img = Image.new(mode, size)
    with pytest.raises(DataError, match="no picture to classify"):
        predictor.predict(img)
    with pytest.raises(DataError, match="no picture to classify"):
        predictor.predict_batch([img])
    with pytest.raises(DataError, match="no picture to classify"):
        predictor.detect_and_predict(img)
    r = predictor.predict_image(img)
    assert r.status == "error" and "no picture to classify" in r.error


def test_nan_pixels_read_as_black_and_bool_arrays_as_0_255():
    """What README's input paragraph says of partly-NaN float arrays and bool arrays."""
    from fer_edge.preprocess import to_uint8

    a = _gradient().astype(np.float32)
    a[:5, :5] = np.nan
    expected = _gradient().copy()
    expected[:5, :5] = 0
    np.testing.assert_array_equal(to_uint8(a), expected)
    b = _gradient() > 128
    np.testing.assert_array_equal(to_uint8(b), np.where(b, 255, 0).astype(np.uint8))


def test_cli_classifies_a_16bit_png_as_its_8bit_picture(tiny_checkpoint, tmp_path):
    from fer_edge.cli import app

    a = _gradient()
    Image.fromarray(a).save(tmp_path / "eight.png")
    _save("png16", a, tmp_path / "sixteen")
    r = runner.invoke(app, ["predict", str(tmp_path), "--model", str(tiny_checkpoint), "--no-detect-faces", "--json"])
    assert r.exit_code == 0, r.output
    rows = {Path(x["image"]).name: x for x in _json_lines(r)}
    assert rows["sixteen.png"]["status"] == "ok"
    assert rows["sixteen.png"]["faces"][0]["probabilities"] == rows["eight.png"]["faces"][0]["probabilities"]


def test_a_float_batch_has_one_pixel_range(predictor):
    """In a 0..255 float batch, a face whose own maximum is below 1 stays dark (not rescaled as 0..1)."""
    batch = np.stack([_gradient()[:48, :48], np.full((48, 48), 0)]).astype(np.float32)
    batch[1, 0, 0] = 0.9  # an almost black face
    by_float = predictor.predict_batch(batch)
    by_uint8 = predictor.predict_batch(np.rint(batch).astype(np.uint8))
    assert [p.probabilities for p in by_float] == [p.probabilities for p in by_uint8]


def test_a_4d_float_batch_has_one_pixel_range_too(predictor):
    """An N x 48 x 48 x 1 (or x 3) float array was scaled image by image: its dark face was read as 0..1 and got
    other answers than the same N x 48 x 48 array."""
    batch = np.stack([_gradient()[:48, :48], np.full((48, 48), 0)]).astype(np.float32)
    batch[1, 0, 0] = 0.9  # an almost black face
    ref = [p.probabilities for p in predictor.predict_batch(np.rint(batch).astype(np.uint8))]
    assert [p.probabilities for p in predictor.predict_batch(batch)] == ref
    assert [p.probabilities for p in predictor.predict_batch(batch[..., None])] == ref
    rgb = np.repeat(batch[..., None], 3, axis=-1)
    assert [p.probabilities for p in predictor.predict_batch(rgb)] == ref
    assert [p.probabilities for p in predictor.predict_batch(rgb / 255)] == ref  # a 0..1 batch is still 0..1
    # a list stays image by image, as documented: the dark face alone is a 0..1 image
    assert [p.probabilities for p in predictor.predict_batch(list(batch))][1] != ref[1]


def test_an_all_nan_face_in_a_batch_array_is_refused_by_index(predictor):
    """In an N x 48 x 48 float array an all-NaN face was classified (as black), while alone or in a list it is
    refused."""
    batch = np.stack([_gradient()[:48, :48]] * 3).astype(np.float32)
    batch[1] = np.nan
    for arr in (batch, batch[..., None], np.repeat(batch[..., None], 3, axis=-1)):
        with pytest.raises(DataError, match="face 1 of the batch: every pixel value is NaN"):
            predictor.predict_batch(arr)
    with pytest.raises(DataError, match="face 1 of the batch: every pixel value is NaN"):
        predictor.predict_batch(list(batch))  # a list's bad item is named by its index too
    with pytest.raises(DataError, match="every pixel value is NaN") as e:
        predictor.predict(batch[1])
    assert "of the batch" not in str(e.value)  # one image is no batch
    for empty in (np.zeros((2, 0, 5, 3), np.float32), np.zeros((2, 0, 5, 3), np.uint8)):  # (a plain ValueError)
        with pytest.raises(DataError, match=r"shape \(2, 0, 5, 3\) as images: they have no pixels"):
            predictor.predict_batch(empty)
    part = batch.copy()
    part[1, :10] = 100.0  # partly NaN: NaN reads as black, as documented
    assert len(predictor.predict_batch(part)) == 3


def test_the_openvino_guides_python_program_runs_and_agrees_with_load(artifacts, faces48, predictor, tmp_path):
    """docs/embed-openvino.md's Python sample, run as written on a fer-edge IR, gives fer_edge.load()'s label."""
    import ast
    import re
    import shutil
    import subprocess

    guide = (Path(__file__).resolve().parents[1] / "docs" / "embed-openvino.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, flags=re.S)
    assert len(blocks) == 1, "the guide has one Python sample"
    xml = artifacts["openvino"]
    shutil.copy(xml, tmp_path / "fer_small_fp32.xml")  # the names the sample opens
    shutil.copy(xml.with_suffix(".bin"), tmp_path / "fer_small_fp32.bin")
    Image.fromarray(faces48[3]).resize((64, 64)).save(tmp_path / "face.png")
    (tmp_path / "sample.py").write_text(blocks[0])
    run = subprocess.run([sys.executable, "sample.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    label, probs = run.stdout.strip().split(" ", 1)
    expected = predictor.predict(tmp_path / "face.png")
    assert label == expected.label and label in LABELS
    assert abs(ast.literal_eval(probs)[label] - expected.probabilities[label]) < 2e-3  # the sample rounds to 3 places


def test_cli_table_keeps_every_column_in_a_pipe_and_in_80_columns(face_dir, tiny_checkpoint, stub_detector):
    """Off a terminal rich assumed 80 columns and cut the last probability columns off a piped table."""
    from fer_edge.cli import app

    piped = runner.invoke(app, ["predict", str(face_dir / "a.png"), "--model", str(tiny_checkpoint)])
    assert piped.exit_code == 0, piped.output
    header = next(ln for ln in piped.stdout.splitlines() if "label" in ln)
    assert header.split()[-7:] == list(LABELS)  # full names: laid out wider than 80 columns
    narrow = runner.invoke(app, ["predict", str(face_dir / "a.png"), "--model", str(tiny_checkpoint)],
                           env={"COLUMNS": "80"})
    header = next(ln for ln in narrow.stdout.splitlines() if "label" in ln)
    assert header.split()[-7:] == [lbl[:3] for lbl in LABELS] and max(map(len, narrow.stdout.splitlines())) <= 80
    assert "columns at its right may be cut" not in narrow.output
    # narrower, rich cuts the last columns: a note says so (QA: they vanished without a word)
    cut = runner.invoke(app, ["predict", str(face_dir / "a.png"), "--model", str(tiny_checkpoint)],
                        env={"COLUMNS": "60"})
    assert cut.exit_code == 0 and "the table needs 80 columns and only 60 are available" in " ".join(
        cut.output.split()), cut.output


def test_predictor_logits_take_uint8_crops_only(predictor, faces48):
    """Predictor.logits divided a 0..1 float crop by 255 again and classified the near-constant result."""
    ref = predictor.logits(faces48[:2])
    assert ref.shape == (2, len(LABELS))
    for bad in (faces48[:2].astype(np.float32) / 255, faces48[:2].astype(np.float32), faces48[:2].astype(np.int16)):
        with pytest.raises(DataError, match=f"must be uint8 48 x 48 pixels .*got dtype {bad.dtype}"):
            predictor.logits(bad)
    np.testing.assert_allclose(predictor.logits(faces48[0]), ref[:1], atol=1e-5)  # one 48 x 48 crop


def test_predict_batch_refuses_what_is_not_a_batch(predictor):
    assert predictor.predict_batch(np.zeros((0, 48, 48), np.float32)) == []  # an empty float batch too
    for bad, words in ((np.zeros((48, 48, 3), np.uint8), "got shape \\(48, 48, 3\\): for one image use predict"),
                       ("face.png", "got str: use predict\\(\\) for one image"), (None, "got NoneType"), (5, "got int")):
        with pytest.raises(DataError, match=words):
            predictor.predict_batch(bad)
    assert len(predictor.predict_batch(np.zeros((2, 60, 60, 3), np.uint8))) == 2  # N colour images


def test_margins_and_normalisations_that_make_no_sense_are_refused(predictor):
    from fer_edge.predict import Predictor

    for margin in (-1, float("nan"), 2, "wide"):
        with pytest.raises(DataError, match="margin"):
            predictor.detect_and_predict(np.zeros((60, 60), np.uint8), margin=margin)
        with pytest.raises(DataError, match="margin"):
            Predictor(predictor.runtime, margin=margin)
    with pytest.raises(DataError, match="positive std"):
        Predictor(predictor.runtime, normalization={"mean": 0.5, "std": 0})


@pytest.mark.parametrize("norm, words", [
    ({"mean": 0.5}, r"normalization must be \{'mean': \.\., 'std': \.\.\}, got \{'mean': 0\.5\}"),  # KeyError
    ({"mean": "a", "std": 1}, "normalization mean and std must be numbers, got mean='a' std=1"),  # ValueError
    ((0.5, 0.25), r"must be a fer_edge.preprocess.Normalization or .*got tuple \(0\.5, 0\.25\)"),  # AttributeError
    ({"mean": [0.5], "std": None}, "mean and std must be numbers"),  # TypeError
])
def test_a_normalisation_of_the_wrong_shape_is_a_fer_edge_error(predictor, norm, words):
    """Predictor(rt, normalization=...) raised KeyError, ValueError or AttributeError for these."""
    from fer_edge.predict import Predictor
    from fer_edge.preprocess import Normalization

    with pytest.raises(DataError, match=words):
        Predictor(predictor.runtime, normalization=norm)
    with pytest.raises(DataError, match="positive std"):
        Predictor(predictor.runtime, normalization=Normalization(0.5, -1))
    p = Predictor(predictor.runtime, normalization={"mean": "0.5", "std": np.float32(0.25)})
    assert p.normalization == Normalization(0.5, 0.25) and type(p.normalization.std) is float


def test_fer_edge_load_is_predict_load(artifacts, faces48):
    import fer_edge

    assert fer_edge.load().describe()["model"] == load_default_model_name()
    p = fer_edge.load(artifacts["onnx"], threads=1, exact_int8=True)
    assert p.runtime.threads == 1 and p.runtime.describe()["exact_int8"] is True
    with pytest.raises(ArtifactError, match="nope.onnx: no such file$"):
        fer_edge.load(artifacts["onnx"].parent / "nope.onnx")


def load_default_model_name() -> str:
    from fer_edge.weights import DEFAULT_MODEL, PRETRAINED

    return PRETRAINED[DEFAULT_MODEL].architecture


def test_load_refuses_an_object_that_is_no_path_or_name():
    import fer_edge
    from fer_edge.errors import ArtifactError

    with pytest.raises(ArtifactError, match="takes a path or a shipped model name .*not a int: 5"):
        fer_edge.load(5)


# -- a broken model's outputs, and the runtime error's wording ---------------------------------------
@pytest.fixture(scope="module")
def nan_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint with one weight tensor set to NaN: its logits are all NaN."""
    import torch

    from fer_edge.checkpoint import save_checkpoint

    payload = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point() and v.numel() > 1)
    payload["state_dict"][name] = torch.full_like(payload["state_dict"][name], float("nan"))
    for k in ("format", "fer_edge_version"):
        payload.pop(k, None)
    return save_checkpoint(tmp_path_factory.mktemp("nan") / "nan_weights.pt", payload)


NOT_FINITE = r"nan_weights.pt: the model's outputs \(logits\) are not finite numbers \(NaN\)"


def test_a_model_with_nan_outputs_is_an_error_in_the_api(nan_checkpoint, faces48, tmp_path, stub_detector):
    import fer_edge

    p = fer_edge.load(nan_checkpoint)
    with pytest.raises(ArtifactError, match=NOT_FINITE):
        p.predict(faces48[0])
    with pytest.raises(ArtifactError, match=NOT_FINITE + " for 3 of 3 faces"):
        p.predict_batch(faces48[:3])
    with pytest.raises(ArtifactError, match=NOT_FINITE):
        p.logits(faces48[:2])
    img = tmp_path / "face.png"
    Image.fromarray(faces48[0]).resize((96, 96)).save(img)
    for detect in (False, True):  # a broken model is a setup error: it raises, not an "error" result per image
        with pytest.raises(ArtifactError, match=NOT_FINITE):
            p.predict_image(img, detect_faces=detect)
    with pytest.raises(ArtifactError, match=NOT_FINITE):
        p.detect_and_predict(img)


class _InfRuntime:
    """A runtime whose second face of each call gets an infinite logit."""

    name = "stub"
    path = "stub.onnx"

    def run(self, x):
        out = np.zeros((len(x), len(LABELS)), np.float32)
        if len(x) > 1:
            out[1, 3] = np.inf
        return out


def test_one_infinite_logit_fails_the_batch():
    from fer_edge.predict import Predictor

    p = Predictor(_InfRuntime(), labels=LABELS, normalization={"mean": 0.5, "std": 0.25})
    assert p.predict(np.zeros((48, 48), np.uint8)).label == LABELS[0]  # one face: finite, fine
    with pytest.raises(ArtifactError, match=r"stub.onnx: .*not finite numbers \(inf\) for 1 of 3 faces"):
        p.predict_batch(np.zeros((3, 48, 48), np.uint8))


@pytest.mark.parametrize("json_out", [True, False])
def test_cli_a_model_with_nan_outputs_fails_the_run(face_dir, nan_checkpoint, json_out):
    r = _cli(face_dir / "a.png", face_dir / "b.jpg", "--model", nan_checkpoint, "--no-detect-faces",
             *(["--json"] if json_out else []))
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit) and "Traceback" not in r.output  # a message, no traceback
    err = _joined(r.stderr)
    assert f"error: {nan_checkpoint}: the model's outputs (logits) are not finite numbers (NaN)" in err
    assert r.stdout.strip() == ""  # no result line, and never a bare NaN in the JSON
    assert "NaN" not in r.stdout and "angry" not in r.stdout


def test_a_runtime_that_does_not_run_the_file_names_the_option_of_each_interface(face_dir):
    import fer_edge

    with pytest.raises(ArtifactError) as e:
        fer_edge.load("nano", runtime="onnxruntime")
    assert "(leave out the runtime= argument to have it chosen from the file)" in str(e.value)
    assert "--runtime" not in str(e.value)
    r = _cli(face_dir, "--model", "nano", "--runtime", "onnxruntime", "--no-detect-faces")
    assert r.exit_code == 1
    assert ("error: runtime onnxruntime does not run nano.pt: fer-edge runs that file type in pytorch (leave out "
            "--runtime to have it chosen from the file)") in _joined(r.stderr)


def test_an_artifact_that_failed_its_export_gate_is_used_with_a_warning(artifacts, face_dir, tmp_path):
    """predict ran an artifact its export had marked 'failed' and said nothing."""
    import json
    import shutil

    from fer_edge.cli import app
    from fer_edge.predict import load

    folder = tmp_path / "export"
    shutil.copytree(artifacts["onnx"].parent, folder)
    onnx = folder / artifacts["onnx"].name
    assert load(onnx).warnings == []  # as exported (not validated): nothing to say
    m = json.loads((folder / "manifest.json").read_text())
    entry = next(e for e in m["artifacts"] if e["file"] == onnx.name)
    entry["validation"] = {"status": "failed", "reason": "top-1 agreement 95.00% < 98.50%"}
    (folder / "manifest.json").write_text(json.dumps(m))
    pred = load(onnx)
    assert len(pred.warnings) == 1 and "failed the parity gate of the export that wrote it (top-1 agreement " \
        "95.00% < 98.50%)" in pred.warnings[0]
    r = runner.invoke(app, ["predict", "-m", str(onnx), "--no-detect-faces", str(face_dir / "a.png")])
    assert r.exit_code == 0, r.output
    err = " ".join(r.stderr.split())
    assert "warning: " in err and "failed the parity gate of the export that wrote it" in err, err
    # the file replaced after the export: the manifest's result, failed or passed, is not this file's
    import onnx as onnx_lib

    proto = onnx_lib.load(str(onnx))
    proto.doc_string = "replaced after the export"  # the same network, other bytes
    onnx_lib.save(proto, str(onnx))
    for status in ("failed", "passed"):
        entry["validation"] = {"status": status}
        (folder / "manifest.json").write_text(json.dumps(m))
        warnings = load(onnx).warnings
        assert len(warnings) == 1, warnings
        assert "is not the file its" in warnings[0] and "SHA-256 differs" in warnings[0], warnings
        assert f"what the manifest records of it (parity gate: {status}) does not apply to it" in warnings[0], \
            warnings
    shutil.copy(artifacts["onnx"], onnx)  # the exported file back: the recorded 'passed' holds, nothing to say
    assert load(onnx).warnings == []
    # an unreadable manifest: predicting does not verify exports, so no warning and no error
    (folder / "manifest.json").write_text("{broken")
    assert load(onnx).warnings == []


def test_a_folder_as_the_model_points_at_the_model_files_in_it(artifacts, tmp_path):
    """An export or run folder said "cannot tell the target of ..." and listed suffixes."""
    from fer_edge.errors import ArtifactError
    from fer_edge.predict import load

    export_dir = artifacts["onnx"].parent
    with pytest.raises(ArtifactError, match=r"is a folder: give one model file in it, e\.g\. .*_fp32\.onnx \(it holds "):
        load(export_dir)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(artifacts["checkpoint"].read_bytes())
    (run / "best.pt").write_bytes(artifacts["checkpoint"].read_bytes())
    with pytest.raises(ArtifactError, match=r"e\.g\. .*run/best\.pt \(it holds best\.pt, last\.pt\)"):
        load(run)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="is a folder without a model file"):
        load(tmp_path / "empty")


def test_a_folder_hint_puts_models_that_run_here_first_and_says_where_the_others_run(tmp_path, monkeypatch):
    """A Core ML package was offered as the model to use on Linux, where it cannot run."""
    import sys

    from fer_edge.errors import ArtifactError
    from fer_edge.predict import load

    folder = tmp_path / "exp"
    (folder / "a_fp32.mlpackage").mkdir(parents=True)
    (folder / "b_int8.onnx").write_bytes(b"")
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(ArtifactError) as e:
        load(folder)
    assert f"e.g. {folder / 'b_int8.onnx'} (it holds b_int8.onnx, a_fp32.mlpackage (runs on macOS))" in str(e.value)
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(ArtifactError) as e:
        load(folder)
    assert f"e.g. {folder / 'a_fp32.mlpackage'} (it holds a_fp32.mlpackage, b_int8.onnx)" in str(e.value)
    # only Core ML packages, off macOS: no model to offer
    (folder / "b_int8.onnx").unlink()
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(ArtifactError) as e:
        load(folder)
    assert ("is a folder, and none of the models in it runs on this machine (it holds a_fp32.mlpackage (runs on "
            "macOS)): give a checkpoint") in str(e.value) and "e.g." not in str(e.value)

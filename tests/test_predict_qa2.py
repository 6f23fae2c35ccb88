"""fer-edge predict QA, second pass: face detection from threads, folder walks through symlinks, very large photos,
argument checks, model suffixes in any case, and runs where every input is an earlier annotated copy."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fer_edge.errors import DataError
from fer_edge.faces import detector_available

runner = CliRunner()


@pytest.fixture(scope="session")
def predictor(tiny_checkpoint):
    from fer_edge.predict import load

    return load(tiny_checkpoint)


@pytest.fixture(scope="session")
def face_photos() -> list:
    """Small photos with faces (matplotlib's grace_hopper.jpg, shrunk, mirrored, side by side), as PIL images."""
    ok, why = detector_available()
    if not ok:
        pytest.skip(f"OpenCV's Haar face detector is unavailable: {why}")
    try:
        from matplotlib import cbook

        p = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except Exception as e:  # matplotlib without its sample data
        pytest.skip(f"matplotlib sample photo grace_hopper.jpg not available ({e})")
    with Image.open(p) as im:
        gh = im.convert("RGB").resize((171, 200))
    pair = Image.new("RGB", (342, 200))
    pair.paste(gh, (0, 0))
    pair.paste(gh.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (171, 0))
    return [gh, pair, gh.resize((214, 250))]


def _cli(*args):
    from fer_edge.cli import app

    return runner.invoke(app, ["predict", *map(str, args)])


# -- 1. one predictor shared by threads ----------------------------------------------------------
def test_a_predictor_shared_by_threads_finds_the_faces_it_finds_alone(tiny_checkpoint, face_photos, monkeypatch):
    """cv2.CascadeClassifier is not thread-safe: one shared by every predictor gave other boxes or raised cv2.error
    when threads detected at once. Each thread now has its own."""
    import fer_edge.faces as faces
    from fer_edge.predict import load

    monkeypatch.setattr(faces, "_DEFAULT_DETECTOR", None)  # the real default detector, as an app gets it
    p = load(tiny_checkpoint)
    alone = [[(f.box, f.label) for f in p.detect_and_predict(im)] for im in face_photos]
    assert [len(a) for a in alone] == [1, 2, 1], alone

    def one(k: int):
        try:
            return [(f.box, f.label) for f in p.detect_and_predict(face_photos[k % 3])] == alone[k % 3]
        except Exception as e:  # cv2.error, among others, before the fix
            return f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(one, range(48)))
    assert got == [True] * 48, [g for g in got if g is not True][:3]


# -- 2. folders reached through symbolic links -----------------------------------------------------
def test_linked_folders_are_followed_once_and_dangling_links_are_reported(tmp_path, tiny_checkpoint, predictor,
                                                                          monkeypatch):
    from fer_edge.predict import collect_inputs

    monkeypatch.setattr("fer_edge.faces._DEFAULT_DETECTOR", _WholeImage())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("L", (48, 48), 90).save(elsewhere / "linked.png")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("L", (48, 48), 150).save(photos / "own.png")
    try:
        (photos / "trip").symlink_to(elsewhere, target_is_directory=True)
        (photos / "loop").symlink_to(photos, target_is_directory=True)  # a link back up: walked once, no loop
        (photos / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    except OSError as e:  # Windows without the right to make links
        pytest.skip(f"cannot make symbolic links here ({e})")
    items = collect_inputs([photos])
    assert [i.relative.as_posix() for i in items if i.error is None] == ["own.png", "trip/linked.png"]
    (bad,) = [i for i in items if i.error]
    assert bad.source == str(photos / "gone.jpg") and "symbolic link to" in bad.error and "deleted.jpg" in bad.error
    r = _cli(photos, "--json", "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    assert "gone.jpg" in r.stderr and "2 faces classified, 0 without a face, 1 failed" in " ".join(r.stderr.split())


class _WholeImage:
    """Stands in for the Haar cascade: the whole image is one face."""

    def detect(self, image):
        from fer_edge.faces import Box, load_image

        w, h = load_image(image).size
        return [Box(0, 0, w, h)]


# -- 4. and 7. arguments -------------------------------------------------------------------------------
def test_a_bad_margin_raises_once_instead_of_failing_the_image(predictor, tmp_path):
    face = tmp_path / "face.png"
    Image.new("L", (48, 48), 120).save(face)
    for detect in (True, False):
        with pytest.raises(DataError, match="margin must be a finite number from 0 to 1"):
            predictor.predict_image(face, detect_faces=detect, margin=99)
    assert predictor.predict_image(face, detect_faces=False, margin=0.2).status == "ok"


def test_predict_batch_says_how_to_pass_grayscale_images_of_another_size(predictor):
    with pytest.raises(DataError, match=r"pass x\[\.\.\., None\] \(N x H x W x 1\)"):
        predictor.predict_batch(np.zeros((5, 96, 96), np.uint8))
    assert len(predictor.predict_batch(np.zeros((5, 96, 96), np.uint8)[..., None])) == 5
    with pytest.raises(DataError, match=r"use predict\(\)$"):  # one colour image: no such advice
        predictor.predict_batch(np.zeros((96, 96, 3), np.uint8))


# -- 5. model suffixes in any case ------------------------------------------------------------------------
def test_model_suffixes_are_matched_in_any_case(tiny_checkpoint, tmp_path, predictor):
    import shutil

    import fer_edge
    from fer_edge.runtimes import runtime_for_path
    from fer_edge.targets import find_target

    assert {s: runtime_for_path(s).name for s in ("NANO.ONNX", "m.Xml", "m.TS", "BEST.PT", "m.PTH")} == {
        "NANO.ONNX": "onnxruntime", "m.Xml": "openvino", "m.TS": "torchscript", "BEST.PT": "pytorch",
        "m.PTH": "pytorch"}
    assert find_target("Model.MLPackage/").name == "coreml" and find_target("notes.txt") is None
    upper = tmp_path / "BEST.PT"
    shutil.copy(tiny_checkpoint, upper)
    face = np.full((48, 48), 100, np.uint8)
    assert fer_edge.load(upper).predict(face).label == predictor.predict(face).label
    from fer_edge.benchmarks.artifacts import artifact_from_file

    # `fer-edge bench BEST.PT` said "cannot tell the target of BEST.PT" (bench's own suffix check had a case)
    assert artifact_from_file(upper).target == "checkpoint"


# -- 6. nothing left to classify ------------------------------------------------------------------------------
def test_a_run_on_earlier_annotated_copies_only_says_there_is_nothing_to_classify(tmp_path, tiny_checkpoint,
                                                                                  monkeypatch):
    monkeypatch.setattr("fer_edge.faces._DEFAULT_DETECTOR", _WholeImage())
    Image.new("L", (48, 48), 100).save(tmp_path / "a.png")
    ann = tmp_path / "ann"
    assert _cli(tmp_path / "a.png", "--model", tiny_checkpoint, "--annotate", ann).exit_code == 0
    r = _cli(ann / "a.png", "--model", tiny_checkpoint, "--annotate", ann)
    err = " ".join(r.stderr.split())
    assert r.exit_code == 1, r.output
    assert "error: nothing left to classify: every input is an earlier annotated copy in" in err
    assert "0 failed" not in err and r.stdout.strip() == ""


# -- 3. very large photos -----------------------------------------------------------------------------------
def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` pixels (a decompression bomb's header), with one tiny IDAT."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_phone_photos_of_108_and_200_mp_are_read_reduced_without_a_warning(tmp_path, predictor):
    import warnings

    from fer_edge.preprocess import load_image

    big = tmp_path / "phone200mp.jpg"
    Image.new("L", (16320, 12240), 128).save(big, quality=50)  # a flat colour: ~2 MB on disk
    mid = tmp_path / "phone108mp.jpg"
    Image.new("RGB", (12000, 9000), (150, 120, 100)).save(mid, quality=50)
    small = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)).save(small)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail here
        assert load_image(big).size == (4080, 3060)  # 1/4 of each side: 12.5 MP
        reduced = load_image(mid)
        assert reduced.size == (3000, 2250) and reduced.mode == "RGB"
        r = predictor.predict_image(big, detect_faces=False)
        assert r.status == "ok" and (r.width, r.height) == (4080, 3060)
    with Image.open(small) as im:  # a photo of a usual size is read as before, at full size
        assert np.array_equal(np.asarray(load_image(small)), np.asarray(im.convert("RGB")))


def test_a_decompression_bomb_is_one_inputs_clear_error(tmp_path):
    from fer_edge.preprocess import load_image

    bomb = _png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(DataError, match="bomb.png: cannot read image: it is too large"):
        load_image(bomb)


def test_the_cli_prints_no_raw_decompression_bomb_warning(tmp_path, tiny_checkpoint, monkeypatch):
    import warnings

    from PIL import Image as PILImage

    monkeypatch.setattr("fer_edge.faces._DEFAULT_DETECTOR", _WholeImage())
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1_000_000)  # so that a quick PNG stands for a 90 MP one
    Image.new("L", (1200, 1000), 100).save(tmp_path / "large.png")
    with warnings.catch_warnings(record=True) as caught:  # (pytest would catch a warning before stderr shows it)
        warnings.simplefilter("always")
        r = _cli(tmp_path / "large.png", "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    assert not [w for w in caught if issubclass(w.category, PILImage.DecompressionBombWarning)]
    assert "DecompressionBomb" not in r.stderr and "1 face classified" in r.stderr


# -- Ctrl-C midway -------------------------------------------------------------------------------
@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_an_interrupted_predict_shows_what_it_classified(tiny_checkpoint, tmp_path, monkeypatch, as_json):
    """QA: Ctrl-C (or SIGTERM) midway through a folder lost every result in table mode (the table is printed at
    the end) and said only "the command stopped before it finished"."""
    from fer_edge.predict import Predictor

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(np.full((48, 48), 40 * i, np.uint8)).save(folder / f"im{i}.png")
    real, calls = Predictor.predict_image, {"n": 0}

    def interrupted_at_the_third(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Predictor, "predict_image", interrupted_at_the_third)
    res = _cli(folder, "--model", tiny_checkpoint, "--no-detect-faces", *(["--json"] if as_json else []))
    assert res.exit_code == 130, res.output
    kept = "their JSON lines are above" if as_json else "the table above holds them"
    assert f"interrupted: 2 of 5 inputs done ({kept})" in " ".join(res.stderr.split()), res.stderr
    assert res.stderr.count("interrupted:") == 1
    assert "im0.png" in res.stdout and "im1.png" in res.stdout and "im2.png" not in res.stdout

"""fer-edge predict QA, fifth pass: transparency composited onto white everywhere an image is read, files of several
frames say which frame was classified, the face detector's scaling (wide panoramas, --min-face for small faces),
files a folder scan skips are counted, symbolic-link duplicates keep the real name, and clearer messages for "-",
unexpanded patterns and empty files."""
from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fer_edge.errors import DataError
from fer_edge.faces import Box, load_image
from test_predict import haar  # noqa: F401 - a fixture

runner = CliRunner()


@pytest.fixture(scope="session")
def predictor(tiny_checkpoint):
    from fer_edge.predict import load

    return load(tiny_checkpoint)


@pytest.fixture(scope="session")
def portrait(haar) -> Image.Image:
    """A real photo with one face (matplotlib's grace_hopper.jpg, 512 x 600; the detector's box is ~231 px)."""
    try:
        from matplotlib import cbook

        p = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    except Exception as e:  # matplotlib without its sample data
        pytest.skip(f"matplotlib sample photo grace_hopper.jpg not available ({e})")
    with Image.open(p) as im:
        return im.convert("RGB")


class WholeImage:
    """A detector stand-in: the whole image is one face (plumbing tests need no cascade)."""

    def detect(self, image):
        w, h = load_image(image).size
        return [Box(0, 0, w, h)]


@pytest.fixture
def whole_image(monkeypatch):
    monkeypatch.setattr("fer_edge.faces._DEFAULT_DETECTOR", WholeImage())


def _cli(*args):
    from fer_edge.cli import app

    return runner.invoke(app, ["predict", *map(str, args)])


def _joined(text: str) -> str:
    return " ".join(text.split())


def _json_lines(result) -> list[dict]:
    return [json.loads(ln) for ln in result.stdout.splitlines() if ln.strip()]


def _face(size=(40, 40)) -> np.ndarray:
    """A uint8 RGB picture with structure in every channel (so a wrong composite shows)."""
    y, x = np.mgrid[0:size[1], 0:size[0]]
    return np.stack([(x * 6) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)


def _rgba(hidden: tuple[int, int, int], semi: bool = False) -> Image.Image:
    """A 56 x 56 picture: the face opaque in the middle (half transparent with ``semi``), a transparent border whose
    hidden colour is ``hidden``."""
    a = np.zeros((56, 56, 4), np.uint8)
    a[..., :3] = hidden
    a[8:48, 8:48, :3] = _face()
    a[8:48, 8:48, 3] = 128 if semi else 255
    return Image.fromarray(a, "RGBA")


def _by_hand(im: Image.Image) -> Image.Image:
    """What a user gets flattening ``im`` onto white themselves."""
    return Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA")).convert("RGB")


# -- 1. transparency ------------------------------------------------------------------------------------
@pytest.mark.parametrize("semi", [False, True], ids=["opaque-face", "half-transparent-face"])
def test_transparent_pixels_are_composited_onto_white_whatever_colour_they_hide(tmp_path, predictor, semi):
    """QA: convert("L") dropped the alpha, so two files that look the same (a transparent border over black, over
    white, over red) gave different crops and answers; now each is the picture flattened onto white."""
    from fer_edge.preprocess import to_gray48

    paths = []
    for name, hidden in (("black", (0, 0, 0)), ("white", (255, 255, 255)), ("red", (255, 0, 0))):
        _rgba(hidden, semi).save(p := tmp_path / f"hidden_{name}.png")
        paths.append(p)
    flat = _by_hand(Image.open(paths[0]))
    assert flat.getpixel((0, 0)) == (255, 255, 255)
    for p in paths:
        np.testing.assert_array_equal(np.asarray(load_image(p).convert("RGB")), np.asarray(flat))
        np.testing.assert_array_equal(to_gray48(p), to_gray48(flat))
    answers = [predictor.predict(p).probs for p in paths] + [predictor.predict(flat).probs]
    for a in answers[1:]:
        np.testing.assert_array_equal(a, answers[0])


def test_every_kind_of_transparency_is_flattened_onto_white(tmp_path):
    """LA, PA, premultiplied RGBa, a palette PNG with transparent entries (tRNS as bytes), a GIF's transparent
    index, a 16-bit PNG's transparent gray level and an RGBA array: all composited onto white."""
    from fer_edge.preprocess import to_gray48

    rgba = _rgba((0, 0, 0))
    white = np.asarray(_by_hand(rgba).convert("L"))
    gray_la = Image.merge("LA", [rgba.convert("L"), rgba.getchannel("A")])
    cases = {"LA": gray_la, "La": gray_la.convert("La"), "RGBa": rgba.convert("RGBa"), "array": np.asarray(rgba)}
    for name, im in cases.items():
        np.testing.assert_array_equal(np.asarray(load_image(im).convert("L")), white, err_msg=name)
        np.testing.assert_array_equal(to_gray48(im), to_gray48(white), err_msg=name)
    # a palette: transparent entries as bytes (PNG tRNS) and as one index (GIF)
    pal = rgba.convert("P")
    pal.save(png := tmp_path / "pal.png")
    with Image.open(png) as raw:
        assert raw.mode == "P" and isinstance(raw.info.get("transparency"), bytes)
        expected = np.asarray(_by_hand(raw))
    np.testing.assert_array_equal(np.asarray(load_image(png).convert("RGB")), expected)
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p.paste(0, (0, 0, 4, 8))  # the left half: index 0, transparent
    p.save(gif := tmp_path / "t.gif", transparency=0)
    got = np.asarray(load_image(gif).convert("RGB"))
    assert (got[:, :4] == 255).all() and (got[:, 4:] == (200, 10, 10)).all()
    deep = np.full((8, 8), 40000, np.uint16)
    deep[:, :4] = 0
    Image.fromarray(deep).save(png16 := tmp_path / "t16.png", transparency=0)
    got = np.asarray(load_image(png16))
    assert (got[:, :4] == 255).all() and (got[:, 4:] == round(40000 / 257)).all()
    # the opaque images of before are unchanged
    opaque = np.asarray(rgba)[8:48, 8:48]
    np.testing.assert_array_equal(np.asarray(load_image(opaque)), opaque[..., :3])


def test_the_face_detector_and_annotation_see_the_flattened_picture(tmp_path, predictor, monkeypatch):
    """The detector's input and the annotated copy were converted from the raw RGB too (a transparent border over
    black drawn black)."""
    from fer_edge.predict import annotate

    seen = []

    class Recorder(WholeImage):
        def detect(self, image):
            seen.append(np.asarray(load_image(image).convert("L")))
            return super().detect(image)

    monkeypatch.setattr(predictor, "_detector", Recorder())  # (the session's predictor keeps the detector it used)
    _rgba((0, 0, 0)).save(p := tmp_path / "a.png")
    r = predictor.predict_image(p, keep_image=True)
    assert r.status == "ok" and seen[0][0, 0] == 255
    drawn = annotate(p, [])
    assert drawn.getpixel((0, 0)) == (255, 255, 255)


MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "La", "PA", "RGBa", "RGBX",
         "I;16", "I;16B"]


def test_no_raw_pillow_warning_from_any_image_mode(tmp_path, predictor, monkeypatch):
    """QA: a palette PNG with transparency printed Pillow's "Palette images with Transparency expressed in bytes
    should be converted to RGBA images" UserWarning (twice with --annotate), naming no file."""
    from fer_edge.faces import crop
    from fer_edge.predict import annotate, write_annotated
    from fer_edge.preprocess import to_gray48

    monkeypatch.setattr(predictor, "_detector", WholeImage())

    _rgba((0, 0, 0)).convert("P").save(trans := tmp_path / "pal_trans.png")
    images = [trans]
    for mode in MODES:
        im = Image.new(mode, (16, 16))
        if mode == "P":
            im.putpalette(list(range(256)) * 3)
        images.append(im)
    for mode, t in (("L", 0), ("RGB", (0, 0, 0)), ("P", 0)):
        im = Image.new(mode, (16, 16))
        im.save(buf := io.BytesIO(), "PNG", transparency=t)
        images.append(Image.open(io.BytesIO(buf.getvalue())))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test, naming itself
        for im in images:  # every conversion predict makes: the detector's, the crop's, the annotation's
            img = load_image(im)
            img.convert("L")
            to_gray48(crop(img, Box(2, 2, 12, 12)))
            annotate(img, [])
        r = predictor.predict_image(trans, keep_image=True)  # and the whole path once
        assert r.status == "ok", r.error
        write_annotated(r.image, r.faces, tmp_path / "out.png")


# -- 2. files of several frames -----------------------------------------------------------------------
def _frames(tmp_path, suffix: str) -> tuple[Path, Image.Image]:
    first = Image.fromarray(_face((48, 48))[..., 0]).convert("L")
    second = Image.fromarray(255 - _face((48, 48))[..., 1]).convert("L")
    path = tmp_path / f"anim{suffix}"
    kw = {"duration": 100, "loop": 0} if suffix == ".gif" else {}
    first.save(path, save_all=True, append_images=[second], **kw)
    return path, first


@pytest.mark.parametrize("suffix", [".gif", ".tif", ".webp"])
def test_a_file_of_several_frames_says_which_frame_was_classified(tmp_path, predictor, suffix):
    """QA: an animated GIF or WebP, a multi-page TIFF: frame 0 was classified without a word."""
    from fer_edge.preprocess import load_image_frames

    path, first = _frames(tmp_path, suffix)
    img, frame, frames = load_image_frames(path)
    assert (frame, frames) == (0, 2)
    r = predictor.predict_image(path, detect_faces=False)
    assert (r.frames, r.frame, r.note) == (2, 0, "frame 1 of 2 classified")
    assert r.to_dict()["note"] == "frame 1 of 2 classified" and r.to_dict()["frames"] == 2
    np.testing.assert_allclose(r.faces[0].probs, predictor.predict(load_image(path)).probs)
    if suffix != ".webp":  # (lossy: not the same pixels)
        np.testing.assert_array_equal(np.asarray(img.convert("L")), np.asarray(first))
    still = tmp_path / "still.png"
    first.save(still)
    r = predictor.predict_image(still, detect_faces=False)
    assert (r.frames, r.note) == (1, None) and r.to_dict()["note"] is None
    with Image.open(path) as im:  # a PIL image at another frame: that frame, and said so
        im.seek(1)
        im.load()
        assert predictor.predict_image(im, detect_faces=False).note == "frame 2 of 2 classified"
        if suffix != ".webp":
            np.testing.assert_array_equal(np.asarray(load_image(im).convert("L")), 255 - _face((48, 48))[..., 1])
    with Image.open(path) as im:
        im.load()
    r = predictor.predict_image(im, detect_faces=False)  # its file closed: read as it is, left at its frame
    assert r.status == "ok" and im.tell() == 0


def test_the_cli_notes_the_frame_in_the_table_and_in_json(tmp_path, tiny_checkpoint, monkeypatch):
    path, _ = _frames(tmp_path, ".gif")
    Image.new("L", (48, 48), 90).save(tmp_path / "still.png")
    r = _cli(tmp_path, "--json", "--no-detect-faces", "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    rows = {Path(x["image"]).name: x for x in _json_lines(r)}
    assert rows["anim.gif"]["note"] == "frame 1 of 2 classified" and rows["anim.gif"]["frames"] == 2
    assert rows["still.png"]["note"] is None and rows["still.png"]["frames"] == 1
    monkeypatch.setenv("COLUMNS", "150")
    r = _cli(path, "--no-detect-faces", "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    assert "(frame 1 of 2)" in r.stdout


def test_a_phones_mpo_jpeg_is_one_picture(tmp_path, predictor):
    """An MPO's second frame is a preview or depth map: no note for every phone photo."""
    from fer_edge.preprocess import load_image_frames

    a = Image.fromarray(_face((64, 48)))
    try:
        a.save(p := tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=[a.resize((32, 24))])
    except (KeyError, ValueError, OSError) as e:  # a Pillow without MPO writing
        pytest.skip(f"cannot write an MPO here ({e})")
    with Image.open(p) as im:
        assert im.format == "MPO" and im.n_frames == 2
    assert load_image_frames(p)[1:] == (0, 1)
    assert predictor.predict_image(p, detect_faces=False).note is None


# -- 3. the detector's scaling and --min-face ---------------------------------------------------------
def _background(size, seed=0) -> Image.Image:
    """A photo-like background: smooth random colours."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(40, 220, (6, 40, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)


def test_a_face_as_tall_as_a_panorama_is_found(portrait):
    """QA: a 12000 x 600 panorama with a 300-pixel face was shrunk to 1280 x 64 (its longer side to 1280) and its
    face not found. A 16000 x 600 one shrunk so makes this 231-pixel face 18 pixels, under the cascade's 24-pixel
    window; the copy is now limited by area (5724 x 215, the face 83 pixels)."""
    from fer_edge.faces import FaceDetector

    pan = _background((16000, 600), seed=1)
    pan.paste(portrait, (8000, 0))
    faces = FaceDetector().detect(pan)
    assert any(abs(b.x - 8149) < 40 and abs(b.y - 100) < 40 and 180 < b.w < 290 for b in faces), faces
    assert FaceDetector(max_side=1280).detect(pan) == []  # the old rule, still available, cannot find it
    d = FaceDetector()
    assert round(d.working_scale(4000, 3000) * 4000) == 1280  # an ordinary 4:3 photo: the same copy as before
    assert d.working_scale(12000, 600) * 12000 * d.working_scale(12000, 600) * 600 <= 1280 * 960 * 1.001


def _crowd(portrait, face: int, n: int = 4) -> tuple[Image.Image, list[tuple[int, int]]]:
    """A 4000 x 3000 photo of ``n`` people whose faces are ``face`` pixels; and where each face is."""
    k = face / 231
    person = portrait.resize((round(512 * k), round(600 * k)))
    photo = _background((4000, 3000))
    where = []
    for i in range(n):
        x, y = 300 + i * 900, 1300 + (i % 2) * 400
        photo.paste(person, (x, y))
        where.append((x + round(149 * k), y + round(100 * k)))
    return photo, where


def _found(boxes, where, face) -> int:
    return sum(any(abs(b.x - x) < face * 0.3 and abs(b.y - y) < face * 0.3 and abs(b.w - face) < face * 0.3
                   for b in boxes) for x, y in where)


def test_min_face_finds_small_faces_in_a_large_photo(portrait, predictor, tmp_path, monkeypatch):
    """QA: a 4000 x 3000 photo of ten 110-pixel faces gave none (the default smallest face is 4% of the shorter side,
    120 pixels); --min-face (pixels of the image) keeps the detector's copy large enough to find them."""
    from fer_edge.faces import FaceDetector

    monkeypatch.setattr(predictor, "_detector", FaceDetector())

    photo, where = _crowd(portrait, 90)
    assert _found(FaceDetector().detect(photo), where, 90) == 0  # the default is unchanged
    assert _found(FaceDetector(min_face=80).detect(photo), where, 90) == len(where)
    got = predictor.detect_and_predict(photo, min_face=80)  # (the call's min_face reaches the shared detector)
    assert _found([f.box for f in got], where, 90) == len(where)


def test_cli_min_face_is_plumbed_and_checked(portrait, tiny_checkpoint, tmp_path):
    photo, where = _crowd(portrait, 90, n=2)
    photo.save(p := tmp_path / "crowd.jpg", quality=92)
    r = _cli(p, "--json", "--min-face", "80", "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    assert _found([Box(*f["box"]) for f in _json_lines(r)[0]["faces"]], where, 90) == 2


@pytest.mark.parametrize("value, words", [("0", "must be a positive whole number of pixels"),
                                          ("-5", "must be a positive whole number of pixels"),
                                          ("2.5", "integer"), ("abc", "integer")])
def test_min_face_must_be_a_positive_whole_number(value, words, tiny_checkpoint, tmp_path):
    Image.new("L", (48, 48), 90).save(p := tmp_path / "a.png")
    r = _cli(p, "--min-face", value, "--model", tiny_checkpoint)
    out = _joined(r.output)
    assert r.exit_code == 2 and "Invalid value for '--min-face'" in out and words in out, r.output


def test_min_face_without_face_detection_is_refused(tiny_checkpoint, tmp_path, predictor):
    from fer_edge.faces import check_min_face

    Image.new("L", (48, 48), 90).save(p := tmp_path / "a.png")
    r = _cli(p, "--min-face", "40", "--no-detect-faces", "--model", tiny_checkpoint)
    assert r.exit_code == 2 and "--no-detect-faces" in _joined(r.output), r.output
    for bad in (0, -1, 2.5, True, "40"):
        with pytest.raises(DataError, match="min_face must be a positive whole number"):
            check_min_face(bad)
        with pytest.raises(DataError, match="min_face"):
            predictor.predict_image(p, min_face=bad)
    assert check_min_face(np.int64(40)) == 40 and check_min_face(None) is None


# -- 4. files a folder scan skips ----------------------------------------------------------------------
def test_a_folder_scan_counts_and_names_the_files_it_skips(tmp_path, tiny_checkpoint, whole_image):
    """QA: `predict mixed` said "4 inputs" and never mentioned noext, notes.txt, .hidden.jpg or pic.jfif."""
    from fer_edge.predict import collect_inputs

    d = tmp_path / "mixed"
    (d / "sub").mkdir(parents=True)
    face = Image.fromarray(_face((48, 48)))
    for name in ("a.jpg", "pic.jfif", "b.JPE", "sub/c.tif", "noext", ".hidden.jpg"):
        face.save(d / name, format="TIFF" if name.endswith(".tif") else "JPEG")
    (d / "notes.txt").write_text("x")
    skipped = []
    items = collect_inputs([d], skipped=skipped)
    assert sorted(it.path.name for it in items) == ["a.jpg", "b.JPE", "c.tif", "pic.jfif"]
    assert sorted((k.path.name, k.reason) for k in skipped) == [(".hidden.jpg", "hidden"), ("noext", "suffix"),
                                                              ("notes.txt", "suffix")]
    r = _cli(d, "--json", "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    err = _joined(r.stderr)
    assert "3 files in the folders skipped" in err, err
    assert "2 without an image suffix" in err and "notes.txt" in err and "noext" in err, err
    assert "1 hidden" in err and ".hidden.jpg" in err, err
    assert "4 inputs" in err
    # a folder of other files only: its error says what was there
    (other := tmp_path / "other").mkdir()
    (other / "readme.md").write_text("x")
    r = _cli(other, "--model", tiny_checkpoint)
    assert r.exit_code == 1 and "directory has no images" in _joined(r.stderr) and "readme.md" in r.stderr


# -- 5. symbolic links to a file of the same folder ----------------------------------------------------
def test_a_symlink_duplicate_is_listed_under_the_real_name(tmp_path, tiny_checkpoint, whole_image):
    """QA: `link.jpg -> one.jpg` beside it: the result used the link's name and the note said the real file was
    "dropped"."""
    from fer_edge.predict import collect_inputs, drop_duplicates

    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_face((48, 48))).save(d / "one.png")
    try:
        os.symlink("one.png", d / "link.png")  # sorts first
    except (OSError, NotImplementedError) as e:
        pytest.skip(f"cannot make symbolic links here ({e})")
    kept, dropped = drop_duplicates(collect_inputs([d]))
    assert [it.path.name for it in kept] == ["one.png"] and [it.path.name for it in dropped] == ["link.png"]
    kept, dropped = drop_duplicates(collect_inputs([d / "link.png", d / "one.png"]))
    assert [it.path.name for it in kept] == ["one.png"]
    r = _cli(d, "--json", "--model", tiny_checkpoint)
    assert r.exit_code == 0, r.output
    assert [Path(x["image"]).name for x in _json_lines(r)] == ["one.png"]
    err = _joined(r.stderr)
    assert f"{d / 'link.png'} (same file as {d / 'one.png'}, listed under that name)" in err, err
    r = _cli(d / "one.png", d / "one.png", "--json", "--model", tiny_checkpoint)
    assert f"{d / 'one.png'} (named more than once)" in _joined(r.stderr)


# -- 6. messages ---------------------------------------------------------------------------------------
def test_stdin_patterns_and_empty_files_get_messages_that_say_what_is_wrong(tmp_path, tiny_checkpoint, predictor,
                                                                          monkeypatch):
    """QA: "-: no such file or directory", "'*.gif': no such file" and "cannot identify image file" for a 0-byte
    file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    r = _cli("-", "*.gif", "shots/img[1].png", "empty.jpg", "--no-detect-faces", "--model", tiny_checkpoint)
    assert r.exit_code == 1
    err = _joined(r.stderr)
    assert "-: reading an image from standard input is not supported: give image files or folders" in err, err
    assert "*.gif: no such file or directory (it looks like a file name pattern: the shell expands one" in err, err
    assert "img[1].png: no such file or directory (it looks like a file name pattern" in err, err
    assert "empty.jpg: cannot read image: the file is empty (0 bytes)" in err, err
    assert "cannot identify" not in err
    with pytest.raises(DataError, match="the file is empty"):
        load_image(tmp_path / "empty.jpg")
    assert predictor.predict_image(tmp_path / "empty.jpg").error.endswith("the file is empty (0 bytes)")
    r = _cli("missing.png", "--no-detect-faces", "--model", tiny_checkpoint)
    assert "missing.png: no such file or directory" in r.stderr and "pattern" not in r.stderr

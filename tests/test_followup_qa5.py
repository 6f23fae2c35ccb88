"""Follow-up of QA pass 5 (a regression review of its predict and data fixes): a 48x48 gray PNG with a transparent
gray level decodes as predict reads it, a 16-bit RGB PNG's transparent colour is compared on 16 bits, opaque RGBA is
not composited, distill_round's --work check knows FER2013.csv in any case, linked folders list their files under the
real path whatever the directory order, skipped files are counted once, a CSV's Usage case note is said on every
load, PublicTest never stands for a folder's test/, and a CSV spelling the Kaggle names in another case gets them."""
from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fer_edge.data import default_train_split, default_val_split, list_splits, load_split
from fer_edge.data.synthetic import make_synthetic, write_csv, write_folder
from fer_edge.errors import DataError

runner = CliRunner()


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("FER_EDGE_CACHE_DIR", str(d))
    return d


def _symlink(link: Path, target: str) -> None:
    try:
        os.symlink(target, link)
    except (OSError, NotImplementedError) as e:
        pytest.skip(f"cannot make symbolic links here ({e})")


# --------------------------------------------------------------------------- 1. gray PNG with a transparent level


def test_a_48x48_gray_png_with_a_transparent_level_decodes_as_predict_reads_it(tmp_path, own_cache):
    """The folder decoder's fast path returned the raw pixels of any 48x48 mode-L image, so training and eval saw
    the colour under the transparent level while predict saw white (RGBA, LA and P files were flattened)."""
    from fer_edge.data import _folder
    from fer_edge.preprocess import load_image, to_gray48

    pixels = np.tile(np.arange(48, dtype=np.uint8) * 5, (48, 1))
    pixels[:, :10] = 0  # the transparent level: a black border a program left there
    root = tmp_path / "d"
    (root / "train" / "happy").mkdir(parents=True)
    png = root / "train" / "happy" / "x.png"
    Image.fromarray(pixels, "L").save(png, transparency=0)
    with Image.open(png) as im:
        assert im.mode == "L" and im.size == (48, 48) and im.info.get("transparency") == 0  # falsy, but present
    expected = pixels.copy()
    expected[pixels == 0] = 255
    seen_by_predict = np.asarray(load_image(png).convert("L"))
    np.testing.assert_array_equal(seen_by_predict, expected)
    decoded, flags = _folder.decode_one(str(png))
    np.testing.assert_array_equal(decoded, expected)
    assert flags == 0  # 48x48 gray: not counted as converted
    np.testing.assert_array_equal(load_split(root, "train", progress=False).images[0].numpy(), expected)
    np.testing.assert_array_equal(to_gray48(png), expected)
    # an opaque one keeps the fast path and its pixels
    Image.fromarray(pixels, "L").save(png)
    np.testing.assert_array_equal(_folder.decode_one(str(png))[0], pixels)


def test_the_cache_version_moved_past_the_entries_that_held_raw_pixels():
    """Entries of version 3 hold the raw pixels of such files (and CSV splits named by a single lower-case
    spelling): they must not be served."""
    from fer_edge.data.loading import CACHE_VERSION

    assert CACHE_VERSION >= 4


# --------------------------------------------------------------------------- 2. 16-bit RGB PNG with tRNS


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_rgb16(pixels: list[tuple[int, int, int]], clear: tuple[int, int, int], interlaced: bool) -> bytes:
    """A 16-bit RGB PNG of one row of ``pixels`` (at most 3), with the transparent colour ``clear`` (tRNS)."""
    raw = [struct.pack(">3H", *p) for p in pixels]
    if interlaced:  # Adam7 for a 3 x 1 image: pass 1 holds x=0, pass 4 x=2, pass 6 x=1
        rows = [raw[0], raw[2], raw[1]] if len(raw) == 3 else raw
        data = b"".join(b"\0" + r for r in rows)
    else:
        data = b"\0" + b"".join(raw)
    ihdr = struct.pack(">IIBBBBB", len(pixels), 1, 16, 2, 0, 0, 1 if interlaced else 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"tRNS", struct.pack(">3H", *clear))
            + _chunk(b"IDAT", zlib.compress(data)) + _chunk(b"IEND", b""))


@pytest.mark.parametrize("interlaced", [False, True], ids=["plain", "interlaced"])
def test_a_16_bit_rgb_png_makes_the_pixels_of_its_transparent_colour_white(tmp_path, interlaced):
    """Pillow reads the file as 8-bit RGB but keeps the 16-bit tRNS colour (0, 0, 5): compared with the 8-bit
    pixels, the pixel (0, 0, 0x0500) (8-bit (0, 0, 5)) turned white and the transparent (0, 0, 5) stayed black."""
    from fer_edge.preprocess import load_image

    clear = (0, 0, 5)
    p = tmp_path / "rgb16.png"
    p.write_bytes(_png_rgb16([clear, (0x1234, 0x5678, 0x9ABC), (0, 0, 0x0500)], clear, interlaced))
    with Image.open(p) as im:
        assert im.mode == "RGB" and im.info["transparency"] == clear and im.tile[0][3] == "RGB;16B"
    got = np.asarray(load_image(p))
    np.testing.assert_array_equal(got[0], [[255, 255, 255], [0x12, 0x56, 0x9A], [0, 0, 5]])
    # a colour of the same high bytes but other low bytes is not transparent
    p.write_bytes(_png_rgb16([(0, 0, 6), (0, 0, 5)], clear, False))
    np.testing.assert_array_equal(np.asarray(load_image(p))[0], [[0, 0, 0], [255, 255, 255]])


def test_a_16_bit_trns_colour_on_an_image_read_already_is_compared_on_its_high_bytes():
    """Without the file (a PIL image given as it is), the 16-bit colour is compared on the 8 bits Pillow kept."""
    from fer_edge.preprocess import flatten_alpha

    im = Image.fromarray(np.array([[[0, 0, 5], [0, 0, 0], [0x12, 0, 0]]], np.uint8), "RGB")
    im.info["transparency"] = (0x1200, 0, 0x0010)  # the 8 bits Pillow kept of it: (0x12, 0, 0)
    np.testing.assert_array_equal(np.asarray(flatten_alpha(im))[0], [[0, 0, 5], [0, 0, 0], [255, 255, 255]])


# --------------------------------------------------------------------------- 3. opaque RGBA


def test_an_opaque_rgba_image_is_not_composited(tmp_path, monkeypatch):
    """A fully opaque RGBA photo was pasted onto a white image anyway (a 12 MP PNG: ~30% more load time)."""
    from fer_edge.preprocess import flatten_alpha, load_image

    rgb = np.random.RandomState(0).randint(0, 256, (20, 30, 3), dtype=np.uint8)
    p = tmp_path / "opaque.png"
    Image.fromarray(np.dstack([rgb, np.full((20, 30), 255, np.uint8)]), "RGBA").save(p)
    la = Image.fromarray(np.dstack([rgb[..., 0], np.full((20, 30), 255, np.uint8)]), "LA")

    def no_paste(*a, **k):
        raise AssertionError("an opaque image was composited")

    with monkeypatch.context() as m:
        m.setattr(Image.Image, "paste", no_paste)
        out = load_image(p)
        assert out.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(out), rgb)
        for im in (la, la.convert("La"), Image.open(p).convert("RGBa")):
            out = flatten_alpha(im)
            assert out.mode == ("L" if im.mode in ("LA", "La") else "RGB")
            np.testing.assert_array_equal(np.asarray(out), rgb[..., 0] if out.mode == "L" else rgb)
    # one transparent pixel: composited as before
    a = np.dstack([rgb, np.full((20, 30), 255, np.uint8)])
    a[0, 0, 3] = 0
    out = np.asarray(flatten_alpha(Image.fromarray(a, "RGBA")))
    assert (out[0, 0] == 255).all() and (out[1:] == rgb[1:]).all()


# --------------------------------------------------------------------------- 4. distill_round and FER2013.csv


@pytest.mark.parametrize("name", ["FER2013.csv", "Fer2013.CSV.gz", "fer2013.csv"])
def test_a_work_folder_inside_a_folder_holding_the_csv_in_any_case_is_fine(tmp_path, name):
    """The loader reads a folder holding FER2013.csv as that CSV, but distill_round's --work check looked for the
    exact lower-case names and refused a --work beside it as "inside the image folder"."""
    from fer_edge.training.distill_round import option_problems

    d = tmp_path / "csvdir"
    d.mkdir()
    write_csv(d / name, {"Training": make_synthetic(1, seed=1)})
    problems = option_problems(60, 0, d / "round", tmp_path / "o", 1, d)
    assert not [p for p in problems if "lies inside" in p], problems
    # an image folder is still refused
    img = write_folder(tmp_path / "img", {"train": make_synthetic(1, seed=2)})
    assert [p for p in option_problems(60, 0, img / "round", tmp_path / "o", 1, img) if "lies inside" in p]


# --------------------------------------------------------------------------- 5. linked folders


@pytest.fixture
def listing_order(monkeypatch):
    """Set the order os.scandir lists a folder in: ``order("links")`` (symbolic links first) or ``"real"``."""
    real_scandir = os.scandir

    class _Listing:
        def __init__(self, entries):
            self.entries = iter(entries)

        def __iter__(self):
            return self

        def __next__(self):
            return next(self.entries)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def close(self):
            pass

    def set_order(first: str):
        def scandir(path="."):
            with real_scandir(path) as it:
                entries = list(it)
            entries.sort(key=lambda e: (e.is_symlink() != (first == "links"), e.name))
            return _Listing(entries)

        monkeypatch.setattr(os, "scandir", scandir)

    return set_order


@pytest.mark.parametrize("first", ["links", "real"])
def test_a_file_under_a_linked_folder_is_listed_under_its_real_path_whatever_the_order(tmp_path, listing_order,
                                                                                     first):
    """`aa -> zz` beside `zz/one.png`: the file was listed (and annotated) as aa/one.png when the folder listed the
    link first (os.walk walked the first name met and pruned the other)."""
    from fer_edge.predict import collect_inputs, drop_duplicates

    d = tmp_path / "in"
    (d / "zz" / "deep").mkdir(parents=True)
    Image.new("L", (8, 8)).save(d / "zz" / "one.png")
    Image.new("L", (8, 8)).save(d / "zz" / "deep" / "two.png")
    _symlink(d / "aa", "zz")
    _symlink(d / "zz" / "up", "..")  # a loop: walked once
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("L", (8, 8)).save(outside / "three.png")
    _symlink(d / "bb", str(outside))  # a folder reached only through a link: listed under the link
    listing_order(first)
    kept, dropped = drop_duplicates(collect_inputs([d]))
    assert [str(it.relative) for it in kept] == ["bb/three.png", "zz/deep/two.png", "zz/one.png"]
    assert not dropped


def test_annotate_writes_the_copy_under_the_real_path(tmp_path, listing_order, tiny_checkpoint, monkeypatch):
    from fer_edge.cli import app
    from fer_edge.faces import Box

    class WholeImage:
        def detect(self, image, **kw):
            from fer_edge.preprocess import load_image

            w, h = load_image(image).size
            return [Box(0, 0, w, h)]

    monkeypatch.setattr("fer_edge.faces._DEFAULT_DETECTOR", WholeImage())
    d = tmp_path / "in"
    (d / "zz").mkdir(parents=True)
    Image.fromarray(np.random.RandomState(1).randint(0, 256, (48, 48), dtype=np.uint8)).save(d / "zz" / "one.png")
    _symlink(d / "aa", "zz")
    listing_order("links")
    out = tmp_path / "out"
    r = runner.invoke(app, ["predict", str(d), "--model", str(tiny_checkpoint), "--annotate", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == ["zz/one.png"]


# --------------------------------------------------------------------------- 6. skipped files counted once


def test_skipped_files_are_counted_once_when_a_folder_and_its_sub_folder_are_given(tmp_path, tiny_checkpoint,
                                                                                 monkeypatch):
    """`predict pin pin/empty` said 34 files skipped where there were 33."""
    from fer_edge.cli import app
    from fer_edge.predict import collect_inputs

    d = tmp_path / "pin"
    (d / "empty").mkdir(parents=True)
    Image.new("L", (48, 48)).save(d / "face.png")
    (d / "notes.txt").write_text("x")
    (d / "empty" / "readme.txt").write_text("x")
    (d / ".hidden.jpg").write_bytes(b"x")
    _symlink(tmp_path / "pinlink", str(d))
    skipped = []
    collect_inputs([d, d / "empty", tmp_path / "pinlink"], skipped=skipped)
    assert sorted(str(k.path.relative_to(d)) for k in skipped) == [".hidden.jpg", "empty/readme.txt", "notes.txt"]
    r = runner.invoke(app, ["predict", str(d), str(d / "empty"), "--no-detect-faces", "--model", str(tiny_checkpoint)])
    assert r.exit_code == 0, r.output
    err = " ".join(r.stderr.split())
    assert "note: 3 files in the folders skipped" in err, err
    assert "note: 3 files in the folders skipped, not classified: 2 without an image suffix" in err, err


# --------------------------------------------------------------------------- 7 and 9. CSV Usage spellings


def _csv_text(rows: list[tuple[str, np.ndarray, np.ndarray]]) -> str:
    lines = ["emotion,pixels,Usage"]
    for usage, images, labels in rows:
        for im, lab in zip(images, labels):
            lines.append(f"{int(lab)},{' '.join(str(int(v)) for v in im.reshape(-1))},{usage}")
    return "\n".join(lines) + "\n"


def test_the_case_note_is_said_on_every_load_cached_or_not(tmp_path, own_cache, caplog):
    """The note was logged inside the CSV decode only: a second command (a cached load) merged silently, while a
    folder's "converted N images" warning is said on each load."""
    x, y = make_synthetic(1, seed=3)
    csv = tmp_path / "mixed.csv"
    csv.write_text(_csv_text([("Training", x[1:], y[1:]), ("training", x[:1], y[:1]), ("PublicTest", x, y)]))
    for load in range(3):  # the first decodes, the others read the cache
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
            s = load_split(csv, "Training", progress=False)
        assert len(s) == len(y)
        notes = [r.getMessage() for r in caplog.records if "differing only in case" in r.getMessage()]
        assert len(notes) == 1, (load, notes)
        assert f"'training' (1 row from line {len(y) + 1}) as 'Training'" in notes[0], notes
    assert list((own_cache / "data").glob("csv-*.npz"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
        load_split(csv, "PublicTest", progress=False)  # a split of one spelling: nothing to say
    assert not [r for r in caplog.records if "differing only in case" in r.getMessage()]


def test_a_csv_spelling_the_kaggle_names_in_another_case_gets_them(tmp_path, own_cache, caplog):
    """A file of `training`/`publictest`/`privatetest` only kept those names, so `val`, `train` and `test` were
    refused ("did you mean 'publictest'?"), while a file mixing spellings got the Kaggle names."""
    x, y = make_synthetic(1, seed=4)
    csv = tmp_path / "lower.csv"
    csv.write_text(_csv_text([("training", x, y), ("publictest", x[:3], y[:3]), ("PRIVATETEST", x[:2], y[:2])]))
    assert list_splits(csv) == ["Training", "PublicTest", "PrivateTest"]
    assert default_train_split(csv) == "Training" and default_val_split(csv) == "PublicTest"
    with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
        assert len(load_split(csv, "val", progress=False)) == 3
        assert len(load_split(csv, "train", progress=False)) == len(y)
        assert len(load_split(csv, "test", progress=False)) == 2
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "'publictest' (3 rows from line" in msg and "as 'PublicTest'" in msg, msg
    assert "'PRIVATETEST' (2 rows from line" in msg and "as 'PrivateTest'" in msg, msg
    # other names keep their single spelling, without a note
    other = tmp_path / "folds.csv"
    other.write_text(_csv_text([("fold1", x, y), ("Fold2", x[:1], y[:1])]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
        assert list_splits(other) == ["Fold2", "fold1"]
        load_split(other, "fold1", progress=False)
    assert not caplog.records


def test_read_csv_alone_still_warns(tmp_path, caplog):
    from fer_edge.data import _csv

    x, y = make_synthetic(1, seed=5)
    csv = tmp_path / "lower.csv"
    csv.write_text(_csv_text([("training", x, y)]))
    with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
        assert list(_csv.read_csv(csv)) == ["Training"]
    assert "'training' (7 rows from line 2) as 'Training'" in caplog.text
    caplog.clear()
    notes = {}
    with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
        _csv.read_csv(csv, notes=notes)
    assert not caplog.records and notes == {"Training": "'training' (7 rows from line 2) as 'Training'"}


# --------------------------------------------------------------------------- 8. PublicTest never a folder's test/


def test_publictest_never_stands_for_a_folders_test_split(tmp_path, own_cache):
    """`--val-split PublicTest` on train/ + test/ selected on test/ through the alias table, which the default's
    refusal exists to prevent (the Kaggle image release's test/ is PublicTest and PrivateTest together)."""
    from fer_edge.data.loading import SPLIT_ALIASES

    assert SPLIT_ALIASES["folder"]["PublicTest"] == ("val",)
    arrays = make_synthetic(1, seed=6)
    root = write_folder(tmp_path / "d", {"train": arrays, "test": arrays})
    for name in ("PublicTest", "val"):
        with pytest.raises(DataError) as err:
            load_split(root, name, progress=False)
        msg = str(err.value)
        assert f"split {name!r} not found" in msg and "available: train, test" in msg, msg
        assert f"'test' is a test split, not taken for {name!r}" in msg, msg
        assert "test/ holds the PublicTest and PrivateTest images together" in msg, msg
        assert "name 'test' itself to measure on it" in msg and str(root / "val") in msg, msg
    assert load_split(root, "test", progress=False).split == "test"
    assert load_split(root, "PrivateTest", progress=False).split == "test"
    # a PrivateTest/ folder: named, without the Kaggle test/ remark
    priv = write_folder(tmp_path / "p", {"train": arrays, "PrivateTest": arrays})
    with pytest.raises(DataError, match=r"'PrivateTest' is a test split, not taken for 'PublicTest': name") as err:
        load_split(priv, "PublicTest", progress=False)
    assert "Kaggle" not in str(err.value)
    # with val/, PublicTest is val/ as before
    both = write_folder(tmp_path / "v", {"train": arrays, "val": arrays, "test": arrays})
    assert load_split(both, "PublicTest", progress=False).split == "val"
    # and another missing split gets no such remark
    with pytest.raises(DataError) as err:
        load_split(root, "Training2", progress=False)
    assert "test split" not in str(err.value)

"""fer_edge.data: the Kaggle CSV and image folders, split aliases, the cache, bad input, sampling."""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fer_edge.constants import LABELS
from fer_edge.data import (
    SPLIT_ALIASES,
    FerSplit,
    cache_dir,
    default_train_split,
    default_val_split,
    index_hash,
    list_splits,
    load_split,
    stratified_indices,
)
from fer_edge.data import _csv, _folder
from fer_edge.data.synthetic import make_synthetic, write_csv, write_folder
from fer_edge.errors import DataError
from fer_edge.preprocess import to_gray48

FINGERPRINT_KEYS = {"format", "source", "split", "n", "size", "mtime", "sha256"}


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    """A cache dir of this test only (the session one is shared by the session fixtures)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("FER_EDGE_CACHE_DIR", str(d))
    return d


@pytest.fixture
def small_arrays():
    return {"Training": make_synthetic(3, seed=5), "PublicTest": make_synthetic(2, seed=6)}


@pytest.fixture
def small_csv(tmp_path, small_arrays) -> Path:
    return write_csv(tmp_path / "fer2013.csv.gz", small_arrays)


@pytest.fixture
def small_folder(tmp_path, small_arrays) -> Path:
    return write_folder(tmp_path / "imgs", {"train": small_arrays["Training"], "val": small_arrays["PublicTest"]})


def _csv_text(rows: list[str], header: str = "emotion,pixels,Usage") -> str:
    return "\n".join([header, *rows]) + "\n"


def _row(label="3", pixels=None, usage="Training", n=2304) -> str:
    if pixels is None:
        pixels = " ".join(str(i % 256) for i in range(n))
    return f"{label},{pixels},{usage}"


def _write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def _check_split(s: FerSplit, images: np.ndarray, labels: np.ndarray, split: str) -> None:
    assert isinstance(s, FerSplit)
    assert s.images.dtype == torch.uint8 and tuple(s.images.shape) == (len(labels), 48, 48)
    assert s.labels.dtype == torch.int64 and tuple(s.labels.shape) == (len(labels),)
    assert np.array_equal(s.images.numpy(), images)
    assert np.array_equal(s.labels.numpy(), labels)
    assert len(s) == len(labels)
    assert s.class_counts() == np.bincount(labels, minlength=7).tolist()
    assert s.split == split and s.fingerprint["split"] == split
    assert FINGERPRINT_KEYS <= set(s.fingerprint)
    assert s.fingerprint["n"] == len(labels)
    assert s.converted == 0
    assert "tensor" not in repr(s)


# --------------------------------------------------------------------------- both formats


def test_csv_loads_every_split(synthetic_csv, synthetic_arrays):
    for split in ("Training", "PublicTest"):
        s = load_split(synthetic_csv, split)
        _check_split(s, *synthetic_arrays[split], split)
        assert s.source == os.path.abspath(synthetic_csv) == s.fingerprint["source"]
        assert s.fingerprint["format"] == "csv"
        assert s.fingerprint["size"] == synthetic_csv.stat().st_size


def test_folder_loads_and_matches_the_csv(synthetic_folder, synthetic_csv, synthetic_arrays):
    for folder_split, csv_split in (("train", "Training"), ("val", "PublicTest")):
        s = load_split(synthetic_folder, folder_split)
        _check_split(s, *synthetic_arrays[csv_split], folder_split)
        assert s.fingerprint["format"] == "folder" and s.source == os.path.abspath(synthetic_folder)
        c = load_split(synthetic_csv, csv_split)
        assert torch.equal(s.images, c.images) and torch.equal(s.labels, c.labels)
        assert s.fingerprint["sha256"] == c.fingerprint["sha256"]


def test_csv_variants_plain_crlf_bom_extra_columns(tmp_path, own_cache):
    imgs, labels = make_synthetic(1, seed=3)
    lines = ["\ufeffid,Usage,EMOTION,note,pixels"]
    for i, (im, lab) in enumerate(zip(imgs, labels)):
        lines.append(f"{i},PublicTest,{lab},x,{' '.join(map(str, im.reshape(-1)))}")
    lines.insert(3, "")  # blank lines are skipped
    path = tmp_path / "faces.csv"
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    s = load_split(path, "val")
    assert s.split == "PublicTest"
    assert np.array_equal(s.images.numpy(), imgs) and np.array_equal(s.labels.numpy(), labels)


def test_a_folder_holding_the_csv_reads_the_csv(tmp_path, own_cache, small_arrays):
    write_csv(tmp_path / "fer2013.csv.gz", small_arrays)
    (tmp_path / "images").mkdir()
    s = load_split(tmp_path, "PublicTest")
    assert s.fingerprint["format"] == "csv" and s.source == str(tmp_path / "fer2013.csv.gz")
    assert list_splits(tmp_path) == ["Training", "PublicTest"]


def test_folder_class_names_case_insensitive_other_files_ignored_natural_order(tmp_path, own_cache):
    imgs, _ = make_synthetic(1, seed=2)
    root = tmp_path / "d"
    (root / "train" / "HAPPY").mkdir(parents=True)
    (root / "train" / "Angry").mkdir(parents=True)
    (root / "train" / ".hidden").mkdir()
    Image.fromarray(imgs[0]).save(root / "train" / "HAPPY" / "x_10.png")
    Image.fromarray(imgs[1]).save(root / "train" / "Angry" / "x_2.PNG")
    Image.fromarray(imgs[2]).save(root / "train" / "HAPPY" / "x_1.bmp")
    (root / "train" / "HAPPY" / "notes.txt").write_text("not an image")
    (root / "train" / "HAPPY" / ".DS_Store").write_bytes(b"\0\1")
    (root / "train" / "README.md").write_text("files beside class folders are ignored")
    s = load_split(root, "train")
    assert s.labels.tolist() == [3, 0, 3]  # x_1, x_2, x_10
    assert np.array_equal(s.images.numpy(), imgs[[2, 1, 0]])


def test_files_not_read_are_counted_in_one_warning(tmp_path, own_cache, caplog):
    """QA: .webp/.gif files, a link to nothing named *.png and an image beside the class folders were skipped
    without a word; a file name that is not UTF-8 (a zip from Windows) crashed the cache key."""
    imgs, _ = make_synthetic(1, seed=2)
    happy = tmp_path / "d" / "train" / "happy"
    happy.mkdir(parents=True)
    Image.fromarray(imgs[0]).save(happy / "a.png")
    os.rename(os.fsencode(happy / "a.png"), os.fsencode(happy) + b"/caf\xe9.png")  # not UTF-8
    Image.fromarray(imgs[1]).save(happy / "b.webp")
    Image.fromarray(imgs[2]).save(happy / "c.webp")
    Image.fromarray(imgs[3]).save(happy / "d.gif")
    (happy / "gone.png").symlink_to(tmp_path / "nowhere.png")
    Image.fromarray(imgs[4]).save(tmp_path / "d" / "train" / "loose.png")
    with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
        s = load_split(tmp_path / "d", "train")
    assert s.labels.tolist() == [3] and np.array_equal(s.images.numpy(), imgs[:1])
    text = " ".join(r.getMessage() for r in caplog.records if "not read" in r.getMessage())
    assert ("5 files not read (2 *.webp, 1 *.gif, 1 broken links, 1 image directly in the split folder, outside "
            "the class folders); images are jpg/jpeg/png/bmp files in the class folders") in text, text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
        load_split(tmp_path / "d", "train")  # the cached copy: still said
    assert any("5 files not read" in r.getMessage() for r in caplog.records)
    from fer_edge.utils import sha256_path

    assert len(sha256_path(tmp_path / "d")) == 64  # a folder's hash reads such names too


# --------------------------------------------------------------------------- splits


def test_alias_table_is_explicit():
    assert SPLIT_ALIASES["csv"] == {"train": ("Training",), "val": ("PublicTest",), "test": ("PrivateTest",)}
    assert SPLIT_ALIASES["folder"] == {"Training": ("train",), "PublicTest": ("val",), "PrivateTest": ("test",),
                                       "train": ("Training",), "val": ("PublicTest",), "test": ("PrivateTest",)}


def test_aliases_work_for_both_forms(small_csv, small_folder, own_cache):
    assert load_split(small_csv, "train").split == "Training"
    assert load_split(small_csv, "val").split == "PublicTest"
    assert load_split(small_folder, "Training").split == "train"
    assert load_split(small_folder, "PublicTest").split == "val"
    with pytest.raises(DataError, match=r"'test' not found .*available: Training, PublicTest.*'PrivateTest'"):
        load_split(small_csv, "test")
    with pytest.raises(DataError, match="'PrivateTest' not found"):
        load_split(small_folder, "PrivateTest")
    # no fuzzy matching
    for bad in ("training", "Train", "validation"):
        with pytest.raises(DataError, match="not found"):
            load_split(small_csv, bad)


def test_folder_without_val_does_not_map_publictest_to_test(tmp_path, own_cache, small_arrays):
    root = write_folder(tmp_path / "d", {"train": small_arrays["Training"], "test": small_arrays["PublicTest"]})
    # the Kaggle image release's test/ is PublicTest and PrivateTest together: never taken for PublicTest
    with pytest.raises(DataError, match=r"'test' is a test split, not taken for 'PublicTest'"):
        load_split(root, "PublicTest")
    assert load_split(root, "PrivateTest").split == "test"
    assert list_splits(root) == ["train", "test"]
    # never the default validation split (selecting on it spends the test split), except for eval (test_ok)
    with pytest.raises(DataError, match=r"test split 'test' is not taken as the validation split by default"):
        default_val_split(root)
    assert default_val_split(root, test_ok=True) == "test"


def test_list_splits_and_defaults(small_csv, small_folder, own_cache, tmp_path, small_arrays):
    assert list_splits(small_csv) == ["Training", "PublicTest"]
    assert list_splits(small_folder) == ["train", "val"]
    assert default_train_split(small_csv) == "Training" and default_val_split(small_csv) == "PublicTest"
    assert default_train_split(small_folder) == "train" and default_val_split(small_folder) == "val"
    (small_folder / "test" / "happy").mkdir(parents=True)  # exists but empty: not listed
    assert list_splits(small_folder) == ["train", "val"]
    only_train = write_folder(tmp_path / "t", {"train": small_arrays["Training"]})
    with pytest.raises(DataError, match=r"no validation split \('val' or 'PublicTest'\).*available: train"):
        default_val_split(only_train)
    csv_train = write_csv(tmp_path / "train_only.csv", {"Training": small_arrays["Training"]})
    with pytest.raises(DataError, match=r"train_only.csv has no validation split \('PublicTest'\)"):
        default_val_split(csv_train)


@pytest.mark.parametrize(
    "names, train, val",
    [
        (("Training", "PublicTest"), "Training", "PublicTest"),  # the CSV's names as folders
        (("Training", "PublicTest", "PrivateTest"), "Training", "PublicTest"),
        (("Train", "Val"), "Train", "Val"),  # other case
        (("TRAIN", "VAL"), "TRAIN", "VAL"),
        (("training", "publictest"), "training", "publictest"),
        (("train", "Training", "val", "PublicTest"), "train", "val"),  # the folder names win
    ],
)
def test_default_folder_splits_follow_aliases_and_case(tmp_path, own_cache, small_arrays, names, train, val):
    """A folder with Training/ and PublicTest/ (or Train/ and Val/) said it had no 'train' split, with no hint."""
    arrays = [small_arrays["Training"], small_arrays["PublicTest"]]
    root = write_folder(tmp_path / "d", {n: arrays[min(i, 1)] for i, n in enumerate(names)})
    assert default_train_split(root) == train and default_val_split(root) == val
    s = load_split(root, default_train_split(root))
    assert s.split == train and len(s) == len(small_arrays["Training"][1])
    assert load_split(root, default_val_split(root)).split == val


def test_a_default_split_folder_without_class_folders_names_what_it_holds(tmp_path, own_cache, small_arrays):
    """``val/`` holding only ``val/joyful/`` said just "available: train", leaving the user to guess why."""
    root = write_folder(tmp_path / "d", {"train": small_arrays["Training"], "val": small_arrays["PublicTest"]})
    (root / "val").rename(root / "held")
    (root / "val" / "joyful").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        default_val_split(root)
    msg = str(err.value)
    assert "available: held, train" in msg or "available: train, held" in msg, msg
    assert f"{root / 'val'} holds no image in a class folder (its sub-folders: joyful; class folders are named angry, " in msg


def test_no_default_training_split_names_the_option(tmp_path, own_cache, small_arrays):
    root = write_folder(tmp_path / "d", {"fold1": small_arrays["Training"], "val": small_arrays["PublicTest"]})
    with pytest.raises(DataError) as err:
        default_train_split(root)
    msg = str(err.value)
    assert f"{root} has no 'train' split (the default split to train and to calibrate on)" in msg
    assert "Training" in msg and "any case" in msg and "available: val, fold1" in msg
    assert "--split" in msg
    assert default_val_split(root) == "val"
    with pytest.raises(DataError, match=r"looks like a single split folder"):
        default_train_split(root / "fold1")


def test_default_split_names_differing_only_in_case_are_refused(tmp_path, own_cache, small_arrays):
    root = write_folder(tmp_path / "d", {"Train": small_arrays["Training"], "VAL": small_arrays["PublicTest"]})
    shutil.copytree(root / "Train", root / "TRAIN")
    if len(_folder.split_dirs(root)) < 3:  # a case-insensitive file system
        pytest.skip("the file system does not tell Train from TRAIN")
    with pytest.raises(DataError, match=r"more than one split for 'train' .*TRAIN, Train.*--split"):
        default_train_split(root)


def test_split_name_in_other_case_gets_a_hint(tmp_path, own_cache, small_arrays):
    root = write_folder(tmp_path / "d", {"Train": small_arrays["Training"], "Val": small_arrays["PublicTest"]})
    with pytest.raises(DataError, match=r"'train' not found .*did you mean 'Train'\?"):
        load_split(root, "train")
    with pytest.raises(DataError, match=r"'PublicTest' not found .*did you mean 'Val'\?"):
        load_split(root, "PublicTest")


# --------------------------------------------------------------------------- cache


def test_cache_hit_skips_the_parser_and_one_pass_caches_all_splits(small_csv, small_arrays, own_cache, monkeypatch):
    calls = []
    real = _csv.read_csv
    monkeypatch.setattr(_csv, "read_csv", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = load_split(small_csv, "Training")
    assert len(calls) == 1
    assert list((own_cache / "data").glob("csv-*.npz"))
    second = load_split(small_csv, "Training")
    other = load_split(small_csv, "val")  # decoded by the first pass too
    assert len(calls) == 1
    assert torch.equal(first.images, second.images) and first.fingerprint == second.fingerprint
    _check_split(other, *small_arrays["PublicTest"], "PublicTest")
    load_split(small_csv, "Training", cache=False)
    assert len(calls) == 2


def test_an_unwritable_cache_decodes_a_csv_once_per_process(small_csv, tmp_path, monkeypatch, caplog):
    """QA: with a cache folder that cannot be written, one `fer-edge train` decoded the CSV four times (listing the
    splits, the defaults, the training and the validation split), warning each time."""
    import fer_edge.data.loading as loading

    (tmp_path / "notadir").write_text("x")
    monkeypatch.setenv("FER_EDGE_CACHE_DIR", str(tmp_path / "notadir"))
    monkeypatch.setattr(loading, "_UNCACHED", None, raising=False)
    calls = []
    real = _csv.read_csv
    monkeypatch.setattr(_csv, "read_csv", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
        train_split, val_split = default_train_split(small_csv), default_val_split(small_csv)
        a, b = load_split(small_csv, train_split), load_split(small_csv, val_split)
        a2 = load_split(small_csv, train_split)
    assert len(calls) == 1, calls
    assert sum("could not write the data cache" in r.getMessage() for r in caplog.records) == 1
    a.images[0, 0, 0] += 1  # a caller's change to its tensor is its own
    assert not torch.equal(a.images, a2.images) and len(b.labels) > 0
    small_csv.write_bytes(small_csv.read_bytes())  # the file written again (its time): decoded again
    os.utime(small_csv, ns=(1, 1))
    load_split(small_csv, train_split)
    assert len(calls) == 2


@pytest.mark.parametrize("form", ["csv", "folder"])
def test_an_edit_that_keeps_size_and_mtime_is_not_served_from_the_cache(form, small_arrays, tmp_path, own_cache):
    """QA: a one-digit label change put back to its old mtime (`touch -r`, `cp -p`, `rsync -a`) read the old labels
    from the cache, and --resume's "same images" check took its hash from there."""
    if form == "csv":  # a plain CSV: one label digit changed keeps the file's size
        data, split = write_csv(tmp_path / "f.csv", small_arrays), "Training"
        target = data
        edited = bytearray(data.read_bytes())
        first = edited.index(b"\n") + 1  # the first row's label
        edited[first] = ord("6") if edited[first] != ord("6") else ord("5")
        edited = bytes(edited)
    else:  # BMP files: one pixel changed keeps the size
        data = write_folder(tmp_path / "imgs", {"train": small_arrays["Training"]}, ext="bmp")
        split = "train"
        target = sorted((data / "train").rglob("*.bmp"))[0]
        img = np.array(Image.open(target))
        img[0, 0] = 255 - img[0, 0]
        buf = __import__("io").BytesIO()
        Image.fromarray(img).save(buf, format="BMP")
        edited = buf.getvalue()
    before = load_split(data, split)
    st = target.stat()
    assert len(edited) == st.st_size
    target.write_bytes(edited)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r: the old modification time
    after = load_split(data, split)
    assert after.fingerprint["sha256"] != before.fingerprint["sha256"]
    fresh = load_split(data, split, cache=False)
    assert torch.equal(after.images, fresh.images) and torch.equal(after.labels, fresh.labels)


def test_folder_cache_hit_and_invalidation(small_folder, small_arrays, own_cache, monkeypatch):
    calls = []
    real = _folder.decode
    monkeypatch.setattr(_folder, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    load_split(small_folder, "train")
    load_split(small_folder, "train")
    assert len(calls) == 1
    img = make_synthetic(1, seed=9)[0][0]
    Image.fromarray(img).save(small_folder / "train" / "sad" / "zz_new.png")
    s = load_split(small_folder, "train")
    assert len(calls) == 2 and len(s) == len(small_arrays["Training"][1]) + 1
    assert len(list((own_cache / "data").glob("folder-*.npz"))) == 1  # the old entry was replaced
    load_split(small_folder, "val", cache=False)
    assert len(list((own_cache / "data").glob("folder-*.npz"))) == 1


def test_changed_csv_is_read_again(tmp_path, own_cache, small_arrays):
    path = write_csv(tmp_path / "f.csv", small_arrays)
    assert len(load_split(path, "Training")) == 21
    write_csv(path, {"Training": make_synthetic(1, seed=1)})
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # a different mtime even on coarse clocks
    assert len(load_split(path, "Training")) == 7
    assert len(list((own_cache / "data").glob("csv-*.npz"))) == 1


@pytest.mark.parametrize("form", ["csv", "folder"])
def test_corrupt_cache_is_a_miss_and_is_rewritten(form, small_csv, small_folder, own_cache, monkeypatch, caplog):
    data, split = (small_csv, "Training") if form == "csv" else (small_folder, "train")
    first = load_split(data, split)
    (entry,) = (own_cache / "data").glob(f"{form}-*.npz")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
        again = load_split(data, split)
    assert torch.equal(first.images, again.images) and first.fingerprint == again.fingerprint
    assert any("unreadable data cache" in r.getMessage() for r in caplog.records)
    entry.write_bytes(b"garbage")
    assert torch.equal(load_split(data, split).images, first.images)
    # rewritten: the next load is a hit
    monkeypatch.setattr(_csv, "read_csv", lambda *a, **k: pytest.fail("re-parsed"))
    monkeypatch.setattr(_folder, "decode", lambda *a, **k: pytest.fail("re-decoded"))
    assert torch.equal(load_split(data, split).images, first.images)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("FER_EDGE_CACHE_DIR", str(tmp_path / "a"))
    assert cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FER_EDGE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x" / "fer-edge"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "fer-edge"


# --------------------------------------------------------------------------- conversion


def test_colour_and_wrong_size_images_are_converted_and_counted(tmp_path, own_cache, caplog):
    imgs, _ = make_synthetic(1, seed=4)
    root = tmp_path / "d"
    for c in ("happy", "sad"):
        (root / "train" / c).mkdir(parents=True)
    rgb = np.stack([imgs[0], imgs[1], imgs[2]], axis=-1)
    Image.fromarray(rgb).save(root / "train" / "happy" / "a_1.png")  # colour, 48x48
    big = make_synthetic(1, seed=4, size=64)[0][3]
    Image.fromarray(big).save(root / "train" / "happy" / "a_2.png")  # gray, 64x64
    Image.fromarray(np.repeat(big[..., None], 3, axis=-1)).save(root / "train" / "sad" / "a_3.jpg")  # both
    Image.fromarray(imgs[4]).save(root / "train" / "sad" / "a_4.png")  # already fine
    with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
        s = load_split(root, "train")
    assert s.converted == 3
    msgs = [r.getMessage() for r in caplog.records if "converted" in r.getMessage()]
    assert len(msgs) == 1 and "converted 3 of 4 images" in msgs[0] and "(2 not 48x48, 2 not 8-bit grayscale)" in msgs[0]
    expected = [to_gray48(Image.open(root / "train" / p)) for p in
                ("happy/a_1.png", "happy/a_2.png", "sad/a_3.jpg", "sad/a_4.png")]
    assert np.array_equal(s.images.numpy(), np.stack(expected))
    assert s.labels.tolist() == [3, 3, 4, 4]
    assert load_split(root, "train").converted == 3  # remembered by the cache


# --------------------------------------------------------------------------- bad input: CSV


@pytest.mark.parametrize(
    "rows, line, pattern",
    [
        ([_row(), _row(n=2303)], 3, r"pixels has 2303 values, expected 2304"),
        ([_row(), _row(n=2305)], 3, r"pixels has 2305 values"),
        ([_row(label="7")], 2, r"emotion label 7 is outside 0\.\.6"),
        ([_row(), _row(), _row(label="-1")], 4, r"emotion label -1 is outside"),
        ([_row(label="happy")], 2, r"emotion 'happy' is not an integer label 0\.\.6"),
        ([_row(), _row(pixels="12 ab " + "0 " * 2302)], 3, r"pixel value 'ab' is not an integer"),
        ([_row(pixels="300 " + "0 " * 2303)], 2, r"pixel value '300' is outside 0\.\.255"),
        ([_row(pixels="1.5 " + "0 " * 2303)], 2, r"pixel value '1.5' is not an integer"),
        ([_row(), "3,1 2 3"], 3, r"expected 3 comma-separated columns, found 2"),
        ([_row(), _row() + ",extra"], 3, r"expected 3 comma-separated columns, found 4"),  # was taken silently
        ([_row(usage=" ")], 2, r"empty Usage value"),
        ([_row(), _row(usage="Train\x00ing")], 3, r"Usage value b'Train\\x00ing' holds a control character"),
    ],
)
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_bad_csv_rows_name_file_and_line(tmp_path, own_cache, rows, line, pattern, suffix):
    path = _write(tmp_path / f"bad{suffix}", _csv_text(rows))
    with pytest.raises(DataError, match=pattern) as err:
        load_split(path, "Training")
    assert f"{path}, line {line}:" in str(err.value)


def test_a_trailing_comma_shifts_nothing_and_is_taken(tmp_path, own_cache):
    """An empty field past the header's columns (a trailing comma) is not the stray field refused above."""
    path = _write(tmp_path / "trailing.csv", _csv_text([_row() + ",", _row(label="4") + ", "]))
    assert load_split(path, "Training").labels.tolist() == [3, 4]


def test_a_usage_value_that_is_not_utf8_is_named_not_shown_garbled(tmp_path, own_cache):
    """It was listed among the splits as 'Train\ufffding', with no hint that the file's bytes were damaged."""
    path = tmp_path / "bad.csv"
    text = _csv_text([_row(), _row()]).encode()
    i = text.rindex(b"Training")
    path.write_bytes(text[:i] + b"Train\xffing" + text[i + len(b"Training"):])
    with pytest.raises(DataError, match=rf"{path}, line 3: Usage value b'Train\\xffing' holds .* not UTF-8"):
        list_splits(path)


def test_bad_row_in_a_later_block_has_the_right_line(tmp_path, own_cache, monkeypatch):
    monkeypatch.setattr(_csv, "_BLOCK", 10_000)  # many blocks, lines split across them
    rows = [_row() for _ in range(40)] + [_row(n=2000)]
    path = _write(tmp_path / "late.csv.gz", _csv_text(rows))
    with pytest.raises(DataError, match=rf"{path}, line 42: pixels has 2000 values"):
        load_split(path, "Training")


def test_missing_columns(tmp_path, own_cache):
    path = _write(tmp_path / "cols.csv", _csv_text([_row()], header="emotion,pixel,Usage"))
    with pytest.raises(DataError, match=r"line 1: missing column\(s\) pixels; .*emotion,pixels,Usage") as err:
        load_split(path, "Training")
    assert str(path) in str(err.value)
    path2 = _write(tmp_path / "noheader.csv", _csv_text([_row()], header=_row()))
    with pytest.raises(DataError, match=r"noheader.csv, line 1: missing column\(s\) emotion, pixels, Usage") as err:
        list_splits(path2)
    # QA: the message quoted all 2304 pixel values (8.5 KB)
    assert len(str(err.value)) < 400 and str(err.value).endswith(
        "line 1 reads like a data row: add the header line emotion,pixels,Usage"), str(err.value)


def test_empty_csv_and_header_only(tmp_path, own_cache):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match=rf"{empty}: the file is empty"):
        load_split(empty, "Training")
    header_only = _write(tmp_path / "h.csv", _csv_text([]))
    assert list_splits(header_only) == []
    with pytest.raises(DataError, match=rf"'Training' not found in {header_only}; available: none \(the CSV has no data rows\)"):
        load_split(header_only, "Training")


def test_truncated_or_non_text_csv(tmp_path, own_cache, small_csv):
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(small_csv.read_bytes()[:5000])
    with pytest.raises(DataError, match=rf"{cut}: cannot read the file .*truncated or corrupt"):
        load_split(cut, "Training")
    binary = tmp_path / "model.csv"
    binary.write_bytes(b"\x80\x81\xfe\xff" * 10)
    with pytest.raises(DataError, match=rf"{binary}, line 1: not a text CSV"):
        load_split(binary, "Training")

    photo = tmp_path / "face.JPG"  # QA: a photo given as --data was called "not a text CSV"
    photo.write_bytes(b"\xff\xd8\xff\xe0" * 10)
    with pytest.raises(DataError, match=rf"{photo}: a single image, where a data set is expected.*fer-edge predict"):
        load_split(photo, "Training")


def test_split_not_in_csv_lists_the_available_ones(small_csv, own_cache):
    with pytest.raises(DataError, match=rf"split 'PrivateTest' not found in {small_csv}; available: Training, PublicTest"):
        load_split(small_csv, "PrivateTest")


# --------------------------------------------------------------------------- bad input: folders and paths


def test_missing_path(tmp_path, own_cache):
    missing = tmp_path / "nope" / "fer2013.csv"
    for fn in (lambda: load_split(missing, "Training"), lambda: list_splits(missing), lambda: default_val_split(missing)):
        with pytest.raises(DataError, match=rf"{missing}: no such file or directory"):
            fn()


def test_unreadable_and_truncated_images(small_folder, own_cache):
    bad = small_folder / "train" / "fear" / "broken.jpg"
    bad.write_text("this is not a JPEG")
    with pytest.raises(DataError, match=rf"{bad}: cannot read image"):
        load_split(small_folder, "train")
    bad.unlink()
    src = next((small_folder / "val" / "happy").glob("*.png"))
    cut = small_folder / "val" / "happy" / "cut.png"
    cut.write_bytes(src.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"{cut}: cannot read image"):
        load_split(small_folder, "val")
    jpg = small_folder / "val" / "sad" / "cut.jpg"
    cut.unlink()
    Image.fromarray(make_synthetic(1, seed=3)[0][0]).save(jpg, quality=95)
    jpg.write_bytes(jpg.read_bytes()[:400])
    with pytest.raises(DataError, match=rf"{jpg}: cannot read image .*truncated"):
        load_split(small_folder, "val")


def test_unknown_class_folder_lists_the_valid_names(small_folder, own_cache):
    (small_folder / "train" / "happpy").mkdir()
    with pytest.raises(DataError) as err:
        load_split(small_folder, "train")
    msg = str(err.value)
    assert f"{small_folder / 'train' / 'happpy'}: unknown class folder 'happpy'" in msg
    assert ", ".join(LABELS) in msg


def test_class_folders_differing_only_in_case_are_refused(small_folder, own_cache):
    """FEAR/ beside fear/ is two copies of one class, not one class: refuse, naming every clash at once."""
    src = next((small_folder / "train" / "happy").glob("*.png"))
    for extra in ("HAPPY", "Fear"):
        (small_folder / "train" / extra).mkdir()
        (small_folder / "train" / extra / "x.png").write_bytes(src.read_bytes())
    (small_folder / "train" / "fear").mkdir(exist_ok=True)
    with pytest.raises(DataError) as err:
        load_split(small_folder, "train")
    msg = str(err.value)
    assert "more than one folder for the same class" in msg
    assert "fear: Fear, fear" in msg and "happy: HAPPY, happy" in msg
    shutil.rmtree(small_folder / "train" / "HAPPY")
    shutil.rmtree(small_folder / "train" / "Fear")
    assert len(load_split(small_folder, "train").labels) == len(list((small_folder / "train").glob("*/*.png")))


def test_missing_and_empty_folder_splits(small_folder, own_cache):
    with pytest.raises(DataError, match=rf"split 'test' not found in {small_folder}; available: train, val"):
        load_split(small_folder, "test")
    (small_folder / "extra" / "angry").mkdir(parents=True)
    (small_folder / "extra" / "angry" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match=rf"split 'extra' in {small_folder} is empty: no jpg/jpeg/png/bmp files"):
        load_split(small_folder, "extra")


def _nest(class_dir: Path, sub: str, names=None) -> list[Path]:
    """Move image files of ``class_dir`` (all, or ``names``) into its sub-folder ``sub``."""
    (class_dir / sub).mkdir(parents=True, exist_ok=True)
    moved = []
    for f in sorted(class_dir.glob("*.png")):
        if names is None or f.name in names:
            moved.append(f.rename(class_dir / sub / f.name))
    return moved


def test_images_in_subfolders_of_a_class_folder_are_refused(small_folder, small_arrays, own_cache, monkeypatch):
    """train/happy/more/x.png was silently dropped: the split loaded without it."""
    calls = []
    real = _folder.decode
    monkeypatch.setattr(_folder, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = load_split(small_folder, "train")  # cached
    n = len(first)
    happy = small_folder / "train" / "happy"
    img = make_synthetic(1, seed=9)[0][0]
    (happy / "more" / "deeper").mkdir(parents=True)
    Image.fromarray(img).save(happy / "more" / "x.png")
    Image.fromarray(img).save(happy / "more" / "deeper" / "y.jpg")
    (happy / "notes").mkdir()  # a sub-folder without images is fine
    (happy / "notes" / "a.txt").write_text("not an image")
    (happy / ".thumbs").mkdir()  # hidden, like every hidden entry
    Image.fromarray(img).save(happy / ".thumbs" / "t.png")
    for cache in (True, False):  # the cached copy of the split must not hide them
        with pytest.raises(DataError) as err:
            load_split(small_folder, "train", cache=cache)
        msg = str(err.value)
        assert f"{happy} holds 2 images in sub-folders (e.g. {happy / 'more' / 'x.png'})" in msg
        assert "must sit directly in their class folder" in msg
        assert ".thumbs" not in msg
    assert list_splits(small_folder) == ["train", "val"]
    assert len(load_split(small_folder, "val")) == len(small_arrays["PublicTest"][1])  # other splits unaffected
    # removed again: the same files as before, so the cache (and fingerprint) are still right
    shutil.rmtree(happy / "more")
    again = load_split(small_folder, "train")
    assert again.fingerprint == first.fingerprint and torch.equal(again.images, first.images)
    # moved up into the class folder: read like any other image
    Image.fromarray(img).save(happy / "x.png")
    moved = load_split(small_folder, "train")
    assert len(moved) == n + 1 and moved.class_counts()[3] == first.class_counts()[3] + 1
    assert moved.fingerprint["sha256"] != first.fingerprint["sha256"]
    assert len(calls) == 3  # first load, val, and after moving x.png up


def test_a_whole_split_in_subfolders_is_reported_not_called_empty(tmp_path, own_cache, small_arrays):
    """train/<class>/<class>/*.png (an archive unpacked one level too deep) said "split 'train' ... is empty"."""
    root = write_folder(tmp_path / "d", {"train": small_arrays["Training"], "val": small_arrays["PublicTest"]})
    counts = {}
    for d in sorted(p for p in (root / "train").iterdir() if p.is_dir()):
        counts[d.name] = len(_nest(d, d.name))
    assert list_splits(root) == ["train", "val"]  # listed, so that the default finds it and reports it
    assert default_train_split(root) == "train"
    with pytest.raises(DataError) as err:
        load_split(root, "train")
    msg = str(err.value)
    assert "is empty" not in msg
    assert f"{sum(counts.values())} images in sub-folders of class folders" in msg
    for name, k in counts.items():
        d = root / "train" / name
        assert f"{d} holds {k} images in sub-folders (e.g. {sorted((d / name).iterdir())[0]})" in msg


def test_an_empty_split_names_images_beside_the_class_folders(small_folder, own_cache):
    (small_folder / "extra" / "happy").mkdir(parents=True)
    src = next((small_folder / "train" / "happy").glob("*.png"))
    shutil.copy(src, small_folder / "extra" / "a.png")
    shutil.copy(src, small_folder / "extra" / "b.png")
    with pytest.raises(DataError, match=rf"split 'extra' in {small_folder} is empty: .*; 2 image files directly in "
                                        rf"{small_folder / 'extra'} are not read: put each image in its class folder"):
        load_split(small_folder, "extra")


def test_a_split_folder_given_as_root_gets_a_hint(small_folder, own_cache):
    with pytest.raises(DataError, match=rf"looks like a single split folder .*pass its parent {small_folder} and split 'train'"):
        load_split(small_folder / "train", "train")


# --------------------------------------------------------------------------- sampling


def test_stratified_indices_properties():
    labels = np.array([0] * 500 + [1] * 5 + [2] * 200 + [3] * 295)
    rng = np.random.default_rng(0)
    labels = labels[rng.permutation(len(labels))]
    idx = stratified_indices(labels, 100, seed=3)
    assert idx.dtype == np.int64 and len(idx) == 100
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < len(labels)
    counts = np.bincount(labels[idx], minlength=4)
    assert np.all(np.abs(counts - 100 * np.bincount(labels) / len(labels)) <= 1)
    assert counts[1] >= 1
    assert np.array_equal(idx, stratified_indices(torch.from_numpy(labels), 100, seed=3))
    assert not np.array_equal(idx, stratified_indices(labels, 100, seed=4))
    # every present class at least once when n allows, even a tiny one
    tiny = np.array([0] * 990 + [1] * 5 + [2] * 5)
    assert sorted(set(tiny[stratified_indices(tiny, 3, seed=0)].tolist())) == [0, 1, 2]
    assert np.bincount(tiny[stratified_indices(tiny, 10, seed=0)]).tolist() == [8, 1, 1]
    assert np.array_equal(stratified_indices(labels, len(labels), 0), np.arange(len(labels)))
    assert np.array_equal(stratified_indices(labels, 10**6, 0), np.arange(len(labels)))
    assert len(stratified_indices(labels, 0, 0)) == 0
    with pytest.raises(DataError):
        stratified_indices(labels, -1, 0)


def test_index_hash():
    idx = np.array([3, 1, 2])
    assert index_hash(idx) == hashlib.sha256(np.array([3, 1, 2], dtype="<i8").tobytes()).hexdigest()
    assert index_hash([3, 1, 2]) == index_hash(torch.tensor([3, 1, 2], dtype=torch.int32)) == index_hash(idx)
    assert index_hash(idx) != index_hash(np.sort(idx))


# --------------------------------------------------------------------------- the real data set


@pytest.mark.shared_data
def test_real_fer2013_publictest(shared_fer2013):
    s = load_split(shared_fer2013 / "fer2013.csv.gz", "PublicTest", progress=False)
    assert len(s) == 3589
    assert s.class_counts() == [467, 56, 496, 895, 653, 415, 607]
    assert list_splits(shared_fer2013) == ["Training", "PublicTest"]  # the folder resolves to its CSV

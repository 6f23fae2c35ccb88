"""fer_edge.data, second QA pass: the cache on file systems with coarse times and while the data changes, an
unwritable cache with image folders, removing stale entries, archives and odd headers/line endings given as CSV."""
from __future__ import annotations

import io
import logging
import os
import tarfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import fer_edge.data.loading as loading
from fer_edge.data import _csv, _folder, load_split
from fer_edge.data.synthetic import make_synthetic, write_csv, write_folder
from fer_edge.errors import DataError

COARSE = 1000 * 10**9  # times kept to 1000 s: any two writes of a test fall in one tick


@pytest.fixture
def own_cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("FER_EDGE_CACHE_DIR", str(d))
    monkeypatch.setattr(loading, "_UNCACHED", None)
    monkeypatch.setattr(loading, "_UNCACHED_FOLDERS", {}, raising=False)
    monkeypatch.setattr(loading, "_UNWRITABLE", set(), raising=False)
    return d


@pytest.fixture
def coarse_times(monkeypatch):
    """The cache keys see times as a file system that keeps them to a coarse tick would (no mounts in tests)."""
    real_csv, real_folder = loading._csv_identity, loading._folder_key

    def csv_identity(src):
        ident, _, st = real_csv(src)
        st = SimpleNamespace(st_size=st.st_size, st_mtime_ns=st.st_mtime_ns // COARSE * COARSE,
                             st_ctime_ns=st.st_ctime_ns // COARSE * COARSE)
        key = loading.json_digest(["csv", loading.CACHE_VERSION, str(src.path), st.st_size, st.st_mtime_ns,
                                   st.st_ctime_ns])
        return ident, key, st

    def folder_key(src, split, files):
        return real_folder(src, split, [f._replace(mtime_ns=f.mtime_ns // COARSE * COARSE,
                                                   ctime_ns=f.ctime_ns // COARSE * COARSE) for f in files])

    monkeypatch.setattr(loading, "_csv_identity", csv_identity)
    monkeypatch.setattr(loading, "_folder_key", folder_key)
    # "now" as that file system would stamp it: the decode starts in the tick the file was written in
    now = lambda: __import__("time").time_ns() // COARSE * COARSE  # noqa: E731
    monkeypatch.setattr(loading, "_now_ns", now, raising=False)


def _relabelled(path: Path, x, y) -> None:
    """Rewrite the CSV with every label changed: the same size."""
    size = path.stat().st_size
    write_csv(path, {"Training": (x, (y + 1) % 7)})
    assert path.stat().st_size == size


def test_a_same_size_rewrite_in_one_tick_is_not_served_from_the_cache(tmp_path, own_cache, coarse_times):
    """QA (stale2.py): on a file system with times to the second, a relabelled CSV written again within the second
    was served with its old labels (the key, size/mtime/ctime, was the same)."""
    x, y = make_synthetic(2, seed=0)
    path = write_csv(tmp_path / "f.csv", {"Training": (x, y)})
    assert torch.equal(load_split(path, "Training").labels, torch.from_numpy(y))
    assert list((own_cache / "data").glob("csv-*.npz"))  # a racy entry is still written, with the file's digest
    _relabelled(path, x, y)
    assert torch.equal(load_split(path, "Training").labels, torch.from_numpy((y + 1) % 7))


def test_a_same_size_image_rewrite_in_one_tick_is_not_served_from_the_cache(tmp_path, own_cache, coarse_times):
    """QA (stale3.py): the same for an image folder (a BMP keeps its size)."""
    x, y = make_synthetic(1, seed=1)
    root = write_folder(tmp_path / "imgs", {"train": (x, y)}, ext="bmp")
    first = load_split(root, "train")
    target = sorted((root / "train").rglob("*.bmp"))[0]
    img = np.array(Image.open(target))
    img[0, 0] = 255 - img[0, 0]
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="BMP")
    assert len(buf.getvalue()) == target.stat().st_size
    target.write_bytes(buf.getvalue())
    after = load_split(root, "train")
    fresh = load_split(root, "train", cache=False)
    assert not torch.equal(after.images, first.images) and torch.equal(after.images, fresh.images)


def test_a_rewrite_while_decoding_is_not_cached(tmp_path, own_cache, coarse_times, monkeypatch):
    """Another process rewrote the CSV while it was decoded: the old content was cached under the new file's key."""
    x, y = make_synthetic(2, seed=2)
    path = write_csv(tmp_path / "f.csv", {"Training": (x, y)})
    real = _csv.read_csv

    def read_then_rewrite(*a, **k):
        out = real(*a, **k)
        _relabelled(path, x, y)
        return out

    monkeypatch.setattr(_csv, "read_csv", read_then_rewrite)
    load_split(path, "Training")  # what was read: the old labels
    monkeypatch.setattr(_csv, "read_csv", real)
    assert torch.equal(load_split(path, "Training").labels, torch.from_numpy((y + 1) % 7))


def test_a_rewrite_while_decoding_is_not_cached_with_fine_times(tmp_path, own_cache, monkeypatch):
    """With nanosecond times too: a change of the file's identity during the decode writes no entry."""
    x, y = make_synthetic(2, seed=3)
    path = write_csv(tmp_path / "f.csv", {"Training": (x, y)})
    os.utime(path, ns=(10**18, 10**18))  # 2001: not racy, so only the identity check can refuse the entry
    real = _csv.read_csv

    def read_then_touch(*a, **k):
        out = real(*a, **k)
        os.utime(path, ns=(10**18 + 1, 10**18 + 1))
        return out

    monkeypatch.setattr(_csv, "read_csv", read_then_touch)
    load_split(path, "Training")
    assert not list((own_cache / "data").glob("csv-*.npz"))


def test_a_settled_file_is_cached_without_digests(tmp_path, own_cache, monkeypatch):
    x, y = make_synthetic(1, seed=4)
    path = write_csv(tmp_path / "f.csv", {"Training": (x, y)})
    monkeypatch.setattr(loading, "_now_ns", lambda: __import__("time").time_ns() + 10**10, raising=False)
    load_split(path, "Training")
    monkeypatch.setattr(loading, "_file_digest", lambda p: pytest.fail("a settled entry hashed its file"),
                        raising=False)
    monkeypatch.setattr(_csv, "read_csv", lambda *a, **k: pytest.fail("re-parsed"))
    assert torch.equal(load_split(path, "Training").labels, torch.from_numpy(y))


def test_an_unwritable_cache_decodes_a_folder_split_once_and_warns_once(tmp_path, own_cache, monkeypatch, caplog):
    """QA: an image folder with a read-only cache warned and decoded again on each load of each split."""
    (tmp_path / "notadir").write_text("x")
    monkeypatch.setenv("FER_EDGE_CACHE_DIR", str(tmp_path / "notadir"))
    root = write_folder(tmp_path / "imgs", {"train": make_synthetic(1, seed=5), "val": make_synthetic(1, seed=6)})
    calls = []
    real = _folder.decode
    monkeypatch.setattr(_folder, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    with caplog.at_level(logging.WARNING, logger="fer_edge.data"):
        a = load_split(root, "train")
        load_split(root, "val")
        a2 = load_split(root, "train")
        load_split(root, "val")
    assert len(calls) == 2, calls
    assert sum("could not write the data cache" in r.getMessage() for r in caplog.records) == 1
    a.images[0, 0, 0] += 1  # a caller's change to its tensor is its own
    assert not torch.equal(a.images, a2.images)


def test_stale_entries_are_removed_when_a_new_one_is_written(tmp_path, own_cache, monkeypatch):
    """QA: 376 of 417 cache files were for data that no longer existed. An entry of a removed source goes when the
    next entry is written; files that are not the cache's own are left alone."""
    monkeypatch.setattr(loading, "_now_ns", lambda: 0)  # nothing racy: no digests needed
    a = write_csv(tmp_path / "a.csv", {"Training": make_synthetic(1, seed=7)})
    (tmp_path / "gone").mkdir()
    gone = write_csv(tmp_path / "gone" / "fer2013.csv", {"Training": make_synthetic(1, seed=8)})
    load_split(a, "Training")
    load_split(gone, "Training")
    data = own_cache / "data"
    assert len(list(data.glob("csv-*.npz"))) == 2
    foreign = [data / "notes.npz", data / "csv-mine.npz"]
    for f in foreign:
        f.write_bytes(b"x")
    gone.unlink()
    gone.parent.rmdir()
    write_csv(a, {"Training": make_synthetic(2, seed=9)})
    load_split(a, "Training")
    (entry,) = data.glob("csv-*-*.npz")
    assert str(a) in str(np.load(entry)["meta"])
    assert all(f.exists() for f in foreign)


@pytest.mark.parametrize("kind", ["tar.gz", "tar", "zip"])
def test_an_archive_says_to_extract_the_csv(tmp_path, own_cache, kind):
    """QA: Kaggle's fer2013.tar.gz read as a CSV: "missing column(s) ... (found 'fer2013/\\x00\\x00..." """
    csv_path = write_csv(tmp_path / "fer2013.csv", {"Training": make_synthetic(1, seed=10)})
    arch = tmp_path / f"fer2013.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(arch, "w") as z:
            z.write(csv_path, "fer2013/fer2013.csv")
    else:
        with tarfile.open(arch, "w:gz" if kind == "tar.gz" else "w") as t:
            t.add(csv_path, "fer2013/fer2013.csv")
    what = "zip" if kind == "zip" else "tar"
    with pytest.raises(DataError, match=rf"{arch}: a {what} archive, not a CSV: extract fer2013.csv from it first"):
        load_split(arch, "Training")


def test_a_repeated_column_is_refused(tmp_path, own_cache):
    row = "3," + " ".join(["7"] * 2304) + ",Training,4\n"
    path = tmp_path / "dup.csv"
    path.write_text("emotion,pixels,Usage,Emotion\n" + row)
    with pytest.raises(DataError, match=r"dup.csv, line 1: the header names emotion more than once "
                                        r"\(emotion in columns 1, 4\); keep one column of each name"):
        load_split(path, "Training")


def test_cr_only_line_endings_are_read(tmp_path, own_cache):
    """QA: an old-Mac CSV (lines ending in CR) failed with Python's "open the file in universal-newline mode?"."""
    x, y = make_synthetic(1, seed=11)
    lf = write_csv(tmp_path / "lf.csv", {"Training": (x, y), "PublicTest": (x[:2], y[:2])})
    cr = tmp_path / "cr.csv"
    cr.write_bytes(lf.read_bytes().replace(b"\n", b"\r"))
    got = load_split(cr, "Training", cache=False)
    assert torch.equal(got.images, torch.from_numpy(x)) and torch.equal(got.labels, torch.from_numpy(y))
    assert len(load_split(cr, "PublicTest", cache=False)) == 2


def _entry_racy(cache: Path, kind: str):
    (entry,) = (cache / "data").glob(f"{kind}-*.npz")
    with np.load(entry, allow_pickle=False) as z:
        return __import__("json").loads(str(z["meta"][()])).get("racy")


def _no_hashing(*a, **k):
    pytest.fail("hashed a file")


@pytest.mark.parametrize("kind", ["csv", "folder"])
def test_a_racy_entry_is_written_again_without_digests_once_its_files_have_settled(tmp_path, own_cache, monkeypatch,
                                                                                   kind):
    """QA (racyf.py): a source decoded within RACY_NS of being written (unzip, then train at once) kept its
    digests, so every later cached load hashed the whole CSV or every image (0.6 s more on the full folder)."""
    x, y = make_synthetic(1, seed=12)
    if kind == "csv":
        data, split = write_csv(tmp_path / "f.csv", {"Training": (x, y)}), "Training"
    else:
        data, split = write_folder(tmp_path / "imgs", {"train": (x, y)}), "train"
    load_split(data, split)  # just written: racy
    assert _entry_racy(own_cache, kind)
    monkeypatch.setattr(_csv, "read_csv", lambda *a, **k: pytest.fail("re-parsed"))
    monkeypatch.setattr(_folder, "decode", lambda *a, **k: pytest.fail("re-decoded"))
    later = __import__("time").time_ns() + 2 * loading.RACY_NS
    monkeypatch.setattr(loading, "_now_ns", lambda: later)
    hashed = []
    real = loading._file_digest
    monkeypatch.setattr(loading, "_file_digest", lambda p: hashed.append(p) or real(p))
    assert torch.equal(load_split(data, split).labels, torch.from_numpy(y))  # checked once more, then settled
    assert hashed and _entry_racy(own_cache, kind) is None
    monkeypatch.setattr(loading, "_file_digest", _no_hashing)
    got = load_split(data, split)
    assert torch.equal(got.labels, torch.from_numpy(y)) and torch.equal(got.images, torch.from_numpy(x))


@pytest.mark.parametrize("kind", ["csv", "folder"])
def test_a_racy_entry_stays_racy_within_the_window(tmp_path, own_cache, monkeypatch, kind):
    x, y = make_synthetic(1, seed=13)
    if kind == "csv":
        data, split = write_csv(tmp_path / "f.csv", {"Training": (x, y)}), "Training"
    else:
        data, split = write_folder(tmp_path / "imgs", {"train": (x, y)}), "train"
    now = __import__("time").time_ns()
    monkeypatch.setattr(loading, "_now_ns", lambda: now)
    load_split(data, split)
    load_split(data, split)  # within 3 s of the write: a rewrite could still keep the key
    assert _entry_racy(own_cache, kind)


@pytest.mark.parametrize("kind", ["csv", "folder"])
def test_an_uncached_load_does_not_hash_the_files(tmp_path, own_cache, monkeypatch, kind):
    """QA: cache=False hashed each just-written file twice (before and after its decode) for an entry it never
    writes."""
    x, y = make_synthetic(1, seed=14)
    if kind == "csv":
        data, split = write_csv(tmp_path / "f.csv", {"Training": (x, y)}), "Training"
    else:
        data, split = write_folder(tmp_path / "imgs", {"train": (x, y)}), "train"
    monkeypatch.setattr(loading, "_file_digest", _no_hashing)
    assert torch.equal(load_split(data, split, cache=False).labels, torch.from_numpy(y))
    assert not (own_cache / "data").exists() or not list((own_cache / "data").iterdir())


def test_file_digest_is_the_files_sha256(tmp_path):
    f = tmp_path / "b.bin"
    f.write_bytes(b"abc" * 700_000)  # more than one read chunk
    assert loading._file_digest(f) == __import__("hashlib").sha256(b"abc" * 700_000).hexdigest()
    assert loading._file_digest(tmp_path / "missing") is None


@pytest.mark.parametrize("kind", ["csv", "folder"])
def test_the_in_process_copy_of_an_unwritable_cache_stops_hashing_once_settled(tmp_path, own_cache, monkeypatch,
                                                                               kind):
    (tmp_path / "notadir").write_text("x")
    monkeypatch.setenv("FER_EDGE_CACHE_DIR", str(tmp_path / "notadir"))
    x, y = make_synthetic(1, seed=15)
    if kind == "csv":
        data, split = write_csv(tmp_path / "f.csv", {"Training": (x, y)}), "Training"
    else:
        data, split = write_folder(tmp_path / "imgs", {"train": (x, y)}), "train"
    load_split(data, split)  # racy, kept in this process with its digests
    later = __import__("time").time_ns() + 2 * loading.RACY_NS
    monkeypatch.setattr(loading, "_now_ns", lambda: later)
    load_split(data, split)
    monkeypatch.setattr(loading, "_file_digest", _no_hashing)
    monkeypatch.setattr(_csv, "read_csv", lambda *a, **k: pytest.fail("re-parsed"))
    monkeypatch.setattr(_folder, "decode", lambda *a, **k: pytest.fail("re-decoded"))
    assert torch.equal(load_split(data, split).labels, torch.from_numpy(y))


def test_a_rewrite_during_a_slow_check_of_a_racy_entry_is_still_caught(tmp_path, own_cache, coarse_times,
                                                                         monkeypatch):
    """QA (race_cache.py): "settled" was judged after the content check, so a same-tick rewrite right after a
    slow check (a big folder, a slow mount) passed it, and the entry written again without its digests then
    served the old labels for good. Settled is judged before the check now: the entry keeps its digests."""
    x, y = make_synthetic(1, seed=13)
    data = write_csv(tmp_path / "f.csv", {"Training": (x, y)})
    load_split(data, "Training")  # just written: racy
    real = loading._file_digest
    start = loading._now_ns()

    def slow_check_then_rewrite(p):
        digest = real(p)
        _relabelled(data, x, y)  # another program relabels the file in its tick, just after it was hashed
        monkeypatch.setattr(loading, "_now_ns", lambda: start + 2 * loading.RACY_NS)  # the check took long
        return digest

    monkeypatch.setattr(loading, "_file_digest", slow_check_then_rewrite)
    load_split(data, "Training")
    monkeypatch.setattr(loading, "_file_digest", real)
    loading._UNCACHED = None  # as a new process
    assert not torch.equal(load_split(data, "Training").labels, torch.from_numpy(y))  # the file's new labels

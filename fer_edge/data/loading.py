"""Load FER2013 splits from the Kaggle CSV or from image folders, with a decoded-array cache.

Data forms (the ``data`` argument):

* a CSV file (``fer2013.csv`` or ``fer2013.csv.gz``, gzip detected by content): columns
  found by header name ``emotion,pixels,Usage`` (case-insensitive, extra columns
  ignored); the splits are the ``Usage`` values (``Training``, ``PublicTest``,
  ``PrivateTest``; values differing only in case are one split, a Kaggle name in another case is that split:
  :func:`fer_edge.data._csv.read_csv`; a note says so on each load of such a split);
* a folder holding ``fer2013.csv`` or ``fer2013.csv.gz`` (in any case, ``FER2013.csv``): read as that CSV;
* any other folder: image folders ``<root>/<split>/<class>/*.{jpg,jpeg,png,bmp}``, the
  splits are the sub-folder names (``train``, ``val``, ``test``), class folders match
  the 7 FER2013 names case-insensitively. Images must sit directly in their class
  folder: a class folder with images in sub-folders is a :class:`DataError` (see
  :mod:`fer_edge.data._folder`), never a split loaded without them. A folder without image
  splits that holds other CSV files is an error naming them (pass the file itself).

Split names: an existing split name is always used as given; otherwise :data:`SPLIT_ALIASES`
maps it (exactly, no fuzzy matching), so ``train``/``val``/``test`` and
``Training``/``PublicTest``/``PrivateTest`` work with both forms (a CSV's ``val`` is its
``PublicTest``; a folder ``PublicTest/`` answers to ``val`` and a folder ``val/`` to ``PublicTest``). A folder's
``test/`` answers to ``PrivateTest`` only: ``PublicTest`` asked of a folder with ``train/`` and ``test/`` is an
error saying what ``test/`` is (in the Kaggle image release, PublicTest and PrivateTest together).
The default splits (:func:`default_train_split`, :func:`default_val_split`) try the names of
:data:`DEFAULT_SPLITS` in order, each first exactly and then ignoring case, and return the
split's actual name (``Training``, ``Val``...), which :func:`load_split` accepts as given.
The default validation split is never a test split: a folder with ``train/`` and ``test/``
(or ``PrivateTest/``) but no ``val/``/``PublicTest/`` is refused, since selecting on the test
split (the best epoch, a soup) leaves no unbiased test figure, unless the caller does not
select (``test_ok=True``: ``fer-edge eval``), or the split is named explicitly.

Decoded arrays are cached as ``.npz`` under :func:`cache_dir` ``/data``, keyed by the
absolute path, the split and the file's size, mtime and ctime (for folders: the split's file
list with sizes and times), so a second load takes well under a second. One pass over a
CSV decodes and caches all its splits. Files changed within :data:`RACY_NS` of their decode
are also checked by content on each hit until they have settled (coarse file-system times); see
:func:`_decode_checked` and :func:`_settled`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fer_edge.constants import IMAGE_SIZE, LABELS, NUM_CLASSES
from fer_edge.data import _csv, _folder
from fer_edge.errors import DataError
from fer_edge.utils import json_digest, sha256_path

if TYPE_CHECKING:  # torch is imported lazily
    import torch

log = logging.getLogger("fer_edge.data")

#: How a split name that is not present is mapped, per data form; targets are tried in order.
SPLIT_ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "csv": {"train": ("Training",), "val": ("PublicTest",), "test": ("PrivateTest",)},
    # PublicTest is never a folder's test/ (in Kaggle's image release, test/ holds PublicTest and PrivateTest
    # together): asked of a folder without val/, the error says what its test split is (:func:`_test_hint`)
    "folder": {"Training": ("train",), "PublicTest": ("val",), "PrivateTest": ("test",),
               "train": ("Training",), "val": ("PublicTest",), "test": ("PrivateTest",)},
}
#: Names the default splits are looked for under, per data form, in order of preference; each is
#: matched exactly first, then ignoring case. Folders also answer to the CSV's names (the keys of
#: ``SPLIT_ALIASES["folder"]``), so a folder laid out like the CSV needs no ``--split``. A test split is never a
#: default validation split (:data:`TEST_SPLITS`): the project selects on PublicTest/val only.
DEFAULT_SPLITS: dict[str, dict[str, tuple[str, ...]]] = {
    "csv": {"train": ("Training",), "val": ("PublicTest",)},
    "folder": {"train": ("train", "Training"), "val": ("val", "PublicTest")},
}
#: Test splits, per data form: where the default validation split is missing, a folder's test split is what
#: :func:`default_val_split` refuses to select on (and falls back to with ``test_ok=True``, for callers that only
#: measure, such as ``fer-edge eval``). A CSV has no fallback: its default validation split is PublicTest.
TEST_SPLITS: dict[str, tuple[str, ...]] = {"csv": (), "folder": ("test", "PrivateTest")}
#: Files that make a folder count as a CSV data set, in order of preference (then the same names in any case).
CSV_NAMES = ("fer2013.csv", "fer2013.csv.gz")
CACHE_VERSION = 4  # 2: a CSV row with a non-empty field past the header's columns is refused
# (not raised for the splits' ``unordered_sha256``: load_split computes it for an entry written without it);
# 3: a CSV's Usage values differing only in case are one split (an entry of 2 kept ``training`` rows out of
# ``Training``); 4: a Usage value that is a Kaggle name in another case is that split (``training`` alone was a
# split of its own), a split's case note is kept in its info (said on each load), and a 48x48 grayscale image with
# a transparent gray level is composited onto white (an entry of 3 holds its raw pixels)
#: Show a progress bar when decoding at least this many image files (or a CSV this large).
PROGRESS_MIN_FILES = 1000
PROGRESS_MIN_BYTES = 16 << 20
_CANONICAL_ORDER = ("Training", "PublicTest", "PrivateTest", "train", "val", "test")


@dataclass(eq=False, repr=False)
class FerSplit:
    """One decoded split.

    ``fingerprint`` identifies the data: ``format`` ("csv" or "folder"), ``source`` (the
    absolute CSV path or folder root), ``split`` (the resolved name), ``n``, ``size`` (bytes:
    the CSV file, or the split's image files together), ``mtime`` (the CSV's, or the newest
    image's), ``sha256`` (of the images' bytes followed by the labels as little-endian int64: it depends on their
    order), ``unordered_sha256`` (of the (image, label) pairs in any order: the CSV's ``Training`` and an image
    folder's ``train`` holding the same images have the same one; see :func:`_arrays_unordered_sha256`).
    """

    images: "torch.Tensor"  # uint8 N x 48 x 48
    labels: "torch.Tensor"  # int64 N
    source: str
    split: str
    fingerprint: dict
    converted: int = 0  # how many images needed resizing or grayscale conversion

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> list[int]:
        """Images per class, in :data:`fer_edge.constants.LABELS` order (always 7 numbers)."""
        import torch

        counts = torch.bincount(self.labels.detach().cpu().long(), minlength=NUM_CLASSES)
        return [int(c) for c in counts[:NUM_CLASSES].tolist()]

    def __repr__(self) -> str:
        return (
            f"FerSplit(split={self.split!r}, n={len(self)}, source={self.source!r}, "
            f"converted={self.converted}, sha256={self.fingerprint.get('sha256', '')[:12]!r})"
        )


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Source:
    kind: str  # "csv" | "folder"
    path: Path  # absolute


#: files that are pictures, not data sets (a FER2013 CSV is read whatever its name)
_SINGLE_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _source(data) -> _Source:
    if data is None or (isinstance(data, str) and not data.strip()):
        raise DataError("no data given: pass a FER2013 CSV (fer2013.csv[.gz]) or an image folder")
    p = Path(os.path.abspath(Path(data).expanduser()))
    if not p.exists():
        raise DataError(
            f"{p}: no such file or directory (expected a FER2013 CSV such as fer2013.csv.gz, "
            f"or an image folder <root>/<split>/<class>/*.jpg)"
        )
    if p.is_dir():
        csv = folder_csv(p)
        return _Source("csv", csv) if csv is not None else _Source("folder", p)
    if not p.is_file():
        raise DataError(f"{p}: not a regular file or folder (expected a FER2013 CSV or an image folder)")
    if p.suffix.lower() in _SINGLE_IMAGE_SUFFIXES:
        raise DataError(f"{p}: a single image, where a data set is expected: a FER2013 CSV (fer2013.csv[.gz]) or "
                        "an image folder <root>/<split>/<class>/*.jpg (to classify single images: fer-edge predict)")
    return _Source("csv", p)


def folder_csv(folder: str | Path) -> Path | None:
    """The FER2013 CSV a folder is read as: its ``fer2013.csv`` or ``fer2013.csv.gz`` (:data:`CSV_NAMES`, in that
    order), else the same name in another case (``FER2013.csv``, on a case-sensitive file system); None when it holds
    none (it is read as image folders). :class:`DataError` for two names differing only in case. Everything that
    must know whether a folder is read as a CSV asks this (the loader, ``distill_round``'s check of ``--work``)."""
    p = Path(folder)
    for name in CSV_NAMES:
        if (p / name).is_file():
            return p / name
    for name in CSV_NAMES:  # FER2013.csv, Fer2013.CSV.gz... (on a case-sensitive file system)
        same = [f for f in _csv_files(p) if f.lower() == name]
        if len(same) > 1:
            raise DataError(f"{p}: more than one FER2013 CSV (names differing only in case): {', '.join(same)}; "
                            f"pass the file itself (e.g. {p / same[0]})")
        if same:
            return p / same[0]
    return None


def _csv_files(folder: Path) -> list[str]:
    """The (non-hidden) ``*.csv`` and ``*.csv.gz`` files directly in ``folder``, any case, sorted; [] when it cannot
    be listed."""
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if not e.name.startswith(".")
                          and e.name.lower().endswith((".csv", ".csv.gz")) and e.is_file())
    except OSError:
        return []


def _csv_hint(root: Path, available: list[str]) -> str:
    """``; <root> holds no image splits but CSV files: a.csv, b.csv; pass the file itself: --data <root>/a.csv`` for
    a folder read as image folders (no ``fer2013.csv[.gz]`` in it) that has no image split but CSV files."""
    if available:
        return ""
    found = _csv_files(root)
    if not found:
        return ""
    shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return (f"; {root} holds no image splits but CSV file{'s' if len(found) != 1 else ''} ({shown}), read only "
            f"when named fer2013.csv[.gz]: pass the file itself: --data {root / found[0]}")


def check_data_source(data) -> None:
    """Raise :class:`DataError` unless ``data`` names a data set fer-edge can read (a FER2013 CSV or an image
    folder), without reading it: for options checked up front even when the run may not read them."""
    _source(data)


def _order(names) -> list[str]:
    rank = {n: i for i, n in enumerate(_CANONICAL_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def _not_found(split: str, where: Path, available: list[str], kind: str, extra: str = "") -> DataError:
    targets = SPLIT_ALIASES[kind].get(split, ())
    msg = f"split {split!r} not found in {where}; available: {', '.join(available) if available else 'none'}"
    if targets:
        msg += f" ({split!r} stands for {' or '.join(repr(t) for t in targets)} here)"
    near = [a for a in available if a.lower() in {split.lower(), *(t.lower() for t in targets)}]
    if near:
        msg += f" (split names are matched exactly: did you mean {' or '.join(repr(a) for a in near)}?)"
    return DataError(msg + extra)


def _folder_hint(root: Path, dirs: list[str]) -> str:
    if dirs and all(d.lower() in LABELS for d in dirs):
        return (f"; {root} looks like a single split folder (its sub-folders are class folders): "
                f"pass its parent {root.parent} and split {root.name!r}")
    return ""


def _resolve_folder_split(src: _Source, split: str) -> str:
    dirs = _folder.split_dirs(src.path)
    if split in dirs:
        return split
    for target in SPLIT_ALIASES["folder"].get(split, ()):
        if target in dirs:
            return target
    available = [d for d in _order(dirs) if _folder.has_images(src.path / d)]
    raise _not_found(split, src.path, available, "folder",
                     _test_hint(src, split, available) + _folder_hint(src.path, dirs) + _csv_hint(src.path, available))


def _test_hint(src: _Source, split: str, available: list[str]) -> str:
    """For a validation split asked for by name (``PublicTest``, ``val``, any case) in a folder without one: what its
    test split (``test``, ``PrivateTest``) is, and why it is not taken instead; "" otherwise."""
    tests = [a for a in available if a.lower() in {t.lower() for t in TEST_SPLITS["folder"]}]
    if split.lower() not in ("publictest", "val") or not tests:
        return ""
    test = tests[0]
    kaggle = (" (in the Kaggle image release, test/ holds the PublicTest and PrivateTest images together)"
              if test.lower() == "test" else "")
    return (f"; {test!r} is a test split, not taken for {split!r}{kaggle}: name {test!r} itself to measure on it; "
            f"to select on a validation split (the best epoch, a soup), which leaves the test split an unbiased "
            f"figure, hold one out from the training images ({src.path / 'val'}/<class>/)")


def _resolve_csv_split(src: _Source, split: str, available: list[str]) -> str:
    if split in available:
        return split
    for target in SPLIT_ALIASES["csv"].get(split, ()):
        if target in available:
            return target
    extra = "" if available else " (the CSV has no data rows)"
    raise _not_found(split, src.path, available, "csv", extra)


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """``$FER_EDGE_CACHE_DIR``, else ``$XDG_CACHE_HOME/fer-edge``, else ``~/.cache/fer-edge``."""
    env = os.environ.get("FER_EDGE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "fer-edge"
    return Path.home() / ".cache" / "fer-edge"


def _cache_path(kind: str, ident: str, key: str) -> Path:
    return cache_dir() / "data" / f"{kind}-{ident[:16]}-{key[:32]}.npz"


def _arrays_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, dtype=np.uint8).data)
    h.update(np.ascontiguousarray(labels, dtype="<i8").data)
    return h.hexdigest()


def _arrays_unordered_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the (image, label) pairs in any order: each pair's SHA-256 (the image's bytes, then its label as
    little-endian int64), sorted, hashed together. The CSV's ``Training`` and an image folder's ``train`` hold the
    same pairs in another order (rows, file names), which :func:`_arrays_sha256` tells apart; this does not.
    0.13 s for FER2013's 28,709 training images (the ordered hash: 0.05 s)."""
    flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(labels), -1)
    labs = np.ascontiguousarray(labels, dtype="<i8").tobytes()
    pairs = sorted(hashlib.sha256(flat[i].tobytes() + labs[8 * i : 8 * i + 8]).digest() for i in range(len(flat)))
    return hashlib.sha256(b"".join(pairs)).hexdigest()


#: The names of the cache's own files (``_cache_path``): only these are ever removed from the cache folder.
_ENTRY_NAME = re.compile(r"(csv|folder)-[0-9a-f]{16}-[0-9a-f]{32}\.npz")
#: Cache folders this process could not write to: each is warned about once.
_UNWRITABLE: set[str] = set()


def _cache_write(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> bool:
    """Write a cache file; False (with a warning, once per cache folder and process) when the file system refuses it.

    Then remove the entries this one replaces (the same source, another identity: an edit makes them useless) and
    those of sources that no longer exist, so the folder does not fill with copies (74 MB for each full CSV).
    """
    from fer_edge.utils import atomic_path

    try:
        with atomic_path(path) as tmp:
            np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
    except OSError as e:
        if str(path.parent) not in _UNWRITABLE:
            _UNWRITABLE.add(str(path.parent))
            log.warning("could not write the data cache %s (%s); the data is decoded again by each command", path, e)
        return False
    _prune(path)
    return True


def _prune(keep: Path) -> None:
    """Remove the cache entries that ``keep`` replaces and those whose source is gone; errors are ignored (another
    process removed it first; on Windows a file another process has open cannot be removed: it stays until later).
    """
    prefix = keep.name.rsplit("-", 1)[0] + "-"
    try:
        names = [e.name for e in os.scandir(keep.parent) if _ENTRY_NAME.fullmatch(e.name) and e.name != keep.name]
    except OSError:
        return
    for name in names:
        entry = keep.parent / name
        if not name.startswith(prefix):  # another source's: removed only when that source no longer exists
            try:
                with np.load(entry, allow_pickle=False) as z:
                    source = json.loads(str(z["meta"][()])).get("source")
            except Exception:  # unreadable (being written? corrupt): left to the load that meets it
                continue
            if not isinstance(source, str) or os.path.lexists(source):
                continue
        with contextlib.suppress(OSError):
            entry.unlink()


#: A source whose modification or status-change time is this close to the start of its decode (or later) is
#: "racy" (git's word): on a file system that keeps times to the second (ext2/ext3 with 128-byte inodes, HFS+, some
#: network mounts) or to 2 s (FAT), a same-size rewrite within that tick keeps the size and both times, so the cache
#: key cannot tell the new content from the decoded one. Such files' content digests are kept with the entry and
#: checked on each hit (a racy entry of a CSV hashes the file on each load: still far faster than decoding it)
#: until the first hit after its files have settled, which writes the entry again without them (:func:`_settled`).
RACY_NS = 3_000_000_000


def _now_ns() -> int:
    return time.time_ns()


def _changed_ns(st) -> int:
    return max(st.st_mtime_ns, st.st_ctime_ns)


def _settled(changed_ns: int) -> bool:
    """True when a source last changed at ``changed_ns`` (its files' latest modification or status-change time) is
    no longer racy: a rewrite now falls in a later tick and changes the cache key. A verified hit of a racy entry
    then writes it again without its digests, so that later hits do not hash the files each time (a fresh
    ``unzip`` and a first decode at once: every cached load of the full image folder took 0.6 s more, for ever)."""
    return changed_ns < _now_ns() - RACY_NS


def _file_digest(path) -> str | None:
    """sha256 of a file's bytes; None when it cannot be read."""
    try:
        return sha256_path(path)
    except OSError:
        return None


def _verified(digests: dict | None, paths: dict[str, str]) -> bool:
    """True when each racy file of an entry (``{name: sha256}``, None: none) still holds the decoded bytes."""
    return not digests or all(name in paths and _file_digest(paths[name]) == d for name, d in digests.items())


def _decode_checked(racy: dict[str, str], decode, identity, key: str, cache: bool = True):
    """``(decode(), digests or None)``: the digests of the ``racy`` files (``{name: path}``) to keep with the entry;
    None (do not cache) when the source changed while it was decoded: ``identity()`` after the decode is not
    ``key`` (the cache key taken before it), or a racy file's content changed (a same-tick rewrite keeps the key).
    ``cache=False``: nothing will be cached, so nothing is checked (hashing the racy files twice for nothing)."""
    if not cache:
        return decode(), None
    before = {name: _file_digest(p) for name, p in racy.items()}
    out = decode()
    try:
        same = identity() == key
    except (OSError, DataError):  # removed, or a folder that no longer scans
        same = False
    after = {name: _file_digest(p) for name, p in racy.items()}
    if not same or after != before or None in before.values():
        log.debug("the data changed while it was decoded: not cached")
        return out, None
    return out, before


def _cache_read(path: Path, key: str, splits: list[str] | None):
    """(meta, {split: (images, labels)}) from a cache file, or None when absent or unusable.

    ``splits=None`` reads the metadata only. A corrupt file is reported and treated as a miss.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"][()]))
            if meta.get("version") != CACHE_VERSION or meta.get("key") != key:
                raise ValueError("metadata does not match")
            out = {}
            for s in splits or []:
                info = meta["splits"][s]
                images = z[f"images_{info['id']}"]
                labels = z[f"labels_{info['id']}"]
                n = int(info["n"])
                if images.dtype != np.uint8 or images.shape != (n, IMAGE_SIZE, IMAGE_SIZE):
                    raise ValueError(f"images of split {s!r} have shape {images.shape}")
                if labels.dtype != np.int64 or labels.shape != (n,):
                    raise ValueError(f"labels of split {s!r} have shape {labels.shape}")
                if n and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
                    raise ValueError(f"labels of split {s!r} are out of range")
                out[s] = (images, labels)
        return meta, out
    except Exception as e:  # zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError...
        log.warning("ignoring unreadable data cache %s (%s); decoding again", path, e)
        return None


def _split_meta(sid: int, images: np.ndarray, labels: np.ndarray, **extra) -> dict:
    return {"id": sid, "n": int(len(labels)), "sha256": _arrays_sha256(images, labels),
            "unordered_sha256": _arrays_unordered_sha256(images, labels), **extra}


# --------------------------------------------------------------------------- progress


@contextlib.contextmanager
def _progress_bar(enabled: bool, description: str, unit: str = "files"):
    """Yields ``update(done, total)``; a transient rich bar on a terminal, else None."""
    if not enabled:
        yield None
        return
    from fer_edge.console import WideConsole

    console = WideConsole(stderr=True)  # (a COLUMNS of 0, as some containers set, counts as unset: rich drew nothing)
    if not console.is_terminal:
        yield None
        return
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn)

    count = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    with Progress(TextColumn("{task.description}"), BarColumn(), count, TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


# --------------------------------------------------------------------------- CSV


def _csv_identity(src: _Source) -> tuple[str, str, os.stat_result]:
    st = src.path.stat()
    ident = json_digest(["csv", str(src.path)])
    # the status-change time too: an edit that keeps the size and sets the modification time back (touch -r,
    # cp -p, rsync -a, tar) changes it, so the cache never serves the file's old content
    key = json_digest(["csv", CACHE_VERSION, str(src.path), st.st_size, st.st_mtime_ns, st.st_ctime_ns])
    return ident, key, st


def _csv_decode(src: _Source, progress: bool) -> tuple[dict, dict]:
    big = src.path.stat().st_size >= PROGRESS_MIN_BYTES
    notes: dict[str, str] = {}
    with _progress_bar(progress and big, f"Reading {src.path.name}", unit="bytes") as update:
        splits = _csv.read_csv(src.path, progress=update, notes=notes)
    # a split's note (Usage values read under another spelling) is kept with it, and said on each load of it
    metas = {name: _split_meta(i, im, lab, **({"case_note": notes[name]} if name in notes else {}))
             for i, (name, (im, lab)) in enumerate(splits.items())}
    return splits, metas


#: The last CSV decode whose cache file could not be written (a read-only cache folder): ``(cache key, splits,
#: split infos, racy digests)``, so that the other loads of one command (the split names, the training and
#: validation splits) do not decode the whole file again, each with the same warning. One file is kept; only
#: when uncached.
_UNCACHED: tuple[str, dict, dict, dict | None] | None = None


def _csv_metas(src: _Source, cache: bool, progress: bool):
    """(cache path, key, split infos, decoded splits or None when the infos came from the cache)."""
    global _UNCACHED
    ident, key, st = _csv_identity(src)
    path = _cache_path("csv", ident, key)
    here = {"": str(src.path)}
    if cache:
        # judged before the content is checked: a rewrite during a slow check, in the file's own tick, would pass
        # it, and an entry written again without its digests would then serve the old data for good
        settled = _settled(_changed_ns(st))
        if _UNCACHED is not None and _UNCACHED[0] == key and _verified(_UNCACHED[3], here):
            if _UNCACHED[3] and settled:
                _UNCACHED = (*_UNCACHED[:3], None)
            return path, key, _UNCACHED[2], _UNCACHED[1]
        hit = _cache_read(path, key, None)
        if hit is not None and _verified(hit[0].get("racy"), here):
            if hit[0].get("racy") and settled:
                return path, key, hit[0]["splits"], _csv_settle(src, path, key, hit[0]["splits"])
            return path, key, hit[0]["splits"], None
    splits, metas, digests = _csv_decode_checked(src, progress, key, st, cache)
    if cache and digests is not None:
        _csv_cache_write(src, path, key, splits, metas, digests)
    return path, key, metas, splits


def _csv_decode_checked(src: _Source, progress: bool, key: str, st,
                        cache: bool = True) -> tuple[dict, dict, dict | None]:
    """:func:`_csv_decode` and the digests to cache it with under ``key`` (:func:`_decode_checked`): None, not
    cacheable. ``st``: the file's status when ``key`` was taken; ``cache=False``: nothing checked, None."""
    racy = {} if _settled(_changed_ns(st)) else {"": str(src.path)}
    (splits, metas), digests = _decode_checked(racy, lambda: _csv_decode(src, progress),
                                               lambda: _csv_identity(src)[1], key, cache)
    return splits, metas, digests


def _csv_settle(src: _Source, path: Path, key: str, metas: dict) -> dict | None:
    """Write the verified racy entry ``path`` of a settled CSV again without its digests (:func:`_settled`); its
    splits as read for that (None when unreadable: the load reads or decodes them as after any hit). A failed
    write is treated as any other (:func:`_csv_cache_write`)."""
    hit = _cache_read(path, key, _order(metas))
    if hit is None:
        return None
    _csv_cache_write(src, path, key, hit[1], metas, {})
    return hit[1]


def _csv_cache_write(src: _Source, path: Path, key: str, splits: dict, metas: dict, digests: dict) -> None:
    global _UNCACHED
    arrays = {}
    for name, (im, lab) in splits.items():
        arrays[f"images_{metas[name]['id']}"] = im
        arrays[f"labels_{metas[name]['id']}"] = lab
    written = _cache_write(path, arrays, {"version": CACHE_VERSION, "key": key, "format": "csv",
                                          "source": str(src.path), "splits": metas, "racy": digests or None})
    _UNCACHED = None
    if not written:
        for im, lab in splits.values():  # shared by the loads that follow: each load_split takes a copy
            im.flags.writeable = lab.flags.writeable = False
        _UNCACHED = (key, splits, metas, digests or None)


def _csv_load(src: _Source, split: str, cache: bool, progress: bool):
    """(resolved split, (images, labels), info): one decode of the whole file on a cache miss."""
    path, key, metas, splits = _csv_metas(src, cache, progress)
    resolved = _resolve_csv_split(src, split, _order(metas))
    if splits is None:
        hit = _cache_read(path, key, [resolved])
        if hit is not None:
            return resolved, hit[1][resolved], metas[resolved]
        # metadata readable but arrays not: decode again
        splits, metas, digests = _csv_decode_checked(src, progress, key, src.path.stat())
        if digests is not None:
            _csv_cache_write(src, path, key, splits, metas, digests)
    return resolved, splits[resolved], metas[resolved]


def _csv_splits(src: _Source) -> list[str]:
    _, _, metas, _ = _csv_metas(src, cache=True, progress=True)
    return _order(metas)


# --------------------------------------------------------------------------- folders


def _folder_key(src: _Source, split: str, files) -> tuple[str, str]:
    ident = json_digest(["folder", str(src.path), split])
    h = hashlib.sha256()
    h.update(json.dumps(["folder", CACHE_VERSION, str(src.path), split]).encode())
    for f in files:
        h.update(f"\0{f.rel}\0{f.size}\0{f.mtime_ns}\0{f.ctime_ns}".encode("utf-8", "surrogateescape"))
    return ident, h.hexdigest()


def _restat(files):
    """``files`` with their sizes and times now: the entry's key covers the files decoded (another file added
    meanwhile changes the next scan's key)."""
    out = []
    for f in files:
        st = os.stat(f.path)
        out.append(f._replace(size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns))
    return out


#: Folder splits whose cache file could not be written (a read-only cache folder), as ``_UNCACHED`` for a CSV:
#: ``{entry name prefix: (cache key, (images, labels), info, racy digests)}``, the latest decode of each split.
_UNCACHED_FOLDERS: dict[str, tuple[str, tuple[np.ndarray, np.ndarray], dict, dict | None]] = {}


def _folder_load(src: _Source, split: str, cache: bool, progress: bool):
    split_dir = src.path / split
    files = _folder.scan(split_dir)  # refuses images in sub-folders of class folders
    if not files:
        loose = _folder.loose_images(split_dir)
        extra = (f"; {loose} image file{'s' if loose != 1 else ''} directly in {split_dir} "
                 f"{'are' if loose != 1 else 'is'} not read: put each image in its class folder") if loose else ""
        unread = _folder.unread_files(split_dir)
        if unread:
            extra += f"; its class folders hold {_folder.describe_unread(unread)}, not read: convert them"
        raise DataError(
            f"split {split!r} in {src.path} is empty: no {'/'.join(e.lstrip('.') for e in _folder.IMAGE_EXTENSIONS)} "
            f"files in class folders {split_dir}/<class>/ (classes: {', '.join(LABELS)}){extra}"
        )
    ident, key = _folder_key(src, split, files)
    path = _cache_path("folder", ident, key)
    here = {f.rel: f.path for f in files}
    info = None
    arrays = None
    if cache:
        settled = _settled(max((max(f.mtime_ns, f.ctime_ns) for f in files), default=0))  # before the check (as CSVs)
        kept = _UNCACHED_FOLDERS.get(ident)
        if kept is not None and kept[0] == key and _verified(kept[3], here):
            _, arrays, info, _ = kept
            if kept[3] and settled:
                _UNCACHED_FOLDERS[ident] = (*kept[:3], None)
        else:
            hit = _cache_read(path, key, [split])
            if hit is not None and _verified(hit[0].get("racy"), here):
                info = hit[0]["splits"][split]
                arrays = hit[1][split]
                if hit[0].get("racy") and settled:  # written again without the digests (:func:`_settled`)
                    _folder_cache_write(src, ident, path, key, split, arrays, info, {})
    if arrays is None:
        def decode():
            with _progress_bar(progress and len(files) >= PROGRESS_MIN_FILES,
                               f"Decoding {src.path.name}/{split}") as update:
                return _folder.decode(_folder.natural_order(files), progress=update)

        racy = {f.rel: f.path for f in files if not _settled(max(f.mtime_ns, f.ctime_ns))}
        (images, labels, flags), digests = _decode_checked(
            racy, decode, lambda: _folder_key(src, split, _restat(files))[1], key, cache)
        info = _split_meta(0, images, labels,
                           converted=int(np.count_nonzero(flags)),
                           resized=int(np.count_nonzero(flags & _folder.RESIZED)),
                           not_gray=int(np.count_nonzero(flags & _folder.NOT_GRAY)))
        arrays = (images, labels)
        if cache and digests is not None:
            _folder_cache_write(src, ident, path, key, split, arrays, info, digests)
    size = sum(f.size for f in files)
    mtime = max(f.mtime_ns for f in files) / 1e9
    return arrays, info, size, mtime


def _folder_cache_write(src: _Source, ident: str, path: Path, key: str, split: str, arrays, info: dict,
                        digests: dict) -> None:
    """Write a folder split's entry; when the cache folder refuses it, keep the arrays in this process instead."""
    images, labels = arrays
    _UNCACHED_FOLDERS.pop(ident, None)
    if not _cache_write(path, {"images_0": images, "labels_0": labels},
                        {"version": CACHE_VERSION, "key": key, "format": "folder",
                         "source": str(src.path), "splits": {split: info}, "racy": digests or None}):
        images.flags.writeable = labels.flags.writeable = False  # shared: each load_split takes a copy
        _UNCACHED_FOLDERS[ident] = (key, arrays, info, digests or None)


# --------------------------------------------------------------------------- public API


def list_splits(data: str | Path) -> list[str]:
    """The splits of ``data`` that exist and hold at least one image.

    A folder split whose images are all in sub-folders of class folders is listed, so that
    loading it reports them (:func:`load_split` refuses such a split).

    For a CSV this decodes (and caches) the whole file once, so a following
    :func:`load_split` is fast.
    """
    src = _source(data)
    if src.kind == "csv":
        return _csv_splits(src)
    return [d for d in _order(_folder.split_dirs(src.path)) if _folder.has_images(src.path / d)]


def _default_split(src: _Source, role: str, available: list[str], names: tuple[str, ...] | None = None) -> str | None:
    """The first :data:`DEFAULT_SPLITS` name of ``role`` (or of ``names``) in ``available`` (exactly, then ignoring
    case)."""
    for name in DEFAULT_SPLITS[src.kind][role] if names is None else names:
        if name in available:
            return name
        same = [a for a in available if a.lower() == name.lower()]
        if len(same) > 1:
            option = "--split" if role == "train" else "--val-split"
            raise DataError(
                f"{src.path}: more than one split for {name!r} (names differing only in case): "
                f"{', '.join(same)}; name one ({option}) or merge them"
            )
        if same:
            return same[0]
    return None


def _looked_for(src: _Source, role: str, test_ok: bool = False) -> str:
    names = DEFAULT_SPLITS[src.kind][role] + (TEST_SPLITS[src.kind] if test_ok and role == "val" else ())
    return f"looked for {', '.join(names)}, in any case"


def _unusable_default_folders(src: _Source, role: str, available: list[str], test_ok: bool = False) -> str:
    """``; <root>/val holds no image in a class folder (it holds: joyful)`` for each folder that has a default
    split's name but no images where a split keeps them, so a misnamed class folder is named; class folders that
    hold only files of other types (``.webp``) are said to, with how many of which suffix."""
    if src.kind != "folder":
        return ""
    wanted = {n.lower() for n in DEFAULT_SPLITS["folder"][role]
              + (TEST_SPLITS["folder"] if test_ok and role == "val" else ())}
    out = ""
    for d in _folder.split_dirs(src.path):
        if d.lower() in wanted and d not in available:
            inside = _folder.split_dirs(src.path / d)
            unread = _folder.unread_files(src.path / d)
            if unread and inside and all(c.lower() in LABELS for c in inside):
                out += (f"; {src.path / d} holds no image in its class folders ({', '.join(inside)}): they hold "
                        f"{_folder.describe_unread(unread)}, not read (images are "
                        f"{'/'.join(e.lstrip('.') for e in _folder.IMAGE_EXTENSIONS)} files): convert them")
                continue
            held = f"its sub-folders: {', '.join(inside)}" if inside else "it has no sub-folders"
            out += (f"; {src.path / d} holds no image in a class folder ({held}; class folders are named "
                    f"{', '.join(LABELS)})")
    return out


def _test_refusal(src: _Source, test: str, available: list[str], options: str, hint: str) -> DataError:
    """The error for a folder whose only candidate validation split is its test split ``test`` (``hint``: why a
    folder with a validation split's name is not one, from :func:`_unusable_default_folders`)."""
    named = f" ({options}: {test!r})" if "," in options else f" ({options} {test})"
    how = (f", or, to select on {test!r} anyway, knowing its accuracy is then no longer an unbiased test figure, "
           f"name it{named}") if options else ""
    return DataError(
        f"{src.path} has no validation split ({_looked_for(src, 'val')}); available: {', '.join(available)}{hint}. "
        f"Its test split {test!r} is not taken as the validation split by default: selecting on it (the best epoch, "
        f"a soup) would leave no unbiased test accuracy. Hold out a validation split from the training images "
        f"({src.path / 'val'}/<class>/){how}")


def _default_or_error(data: str | Path, role: str, missing: str, options: str, test_ok: bool = False) -> str:
    """The default ``role`` split of ``data`` (:func:`_default_split`), or a DataError: ``<path> has no
    <missing> (looked for ...); available: ...; name one (<options>)`` (without that clause when ``options`` is
    empty: the caller cannot choose a split). A validation split missing where a folder has a test split
    (:data:`TEST_SPLITS`): that split with ``test_ok``, else the error of :func:`_test_refusal`."""
    src = _source(data)
    available = list_splits(data)
    name = _default_split(src, role, available)
    if name is None and role == "val" and TEST_SPLITS[src.kind]:
        test = _default_split(src, role, available, TEST_SPLITS[src.kind])
        if test is not None:
            if test_ok:
                return test
            raise _test_refusal(src, test, available, options, _unusable_default_folders(src, role, available))
    if name is None:
        hint = _folder_hint(src.path, _folder.split_dirs(src.path)) if src.kind == "folder" else ""
        hint += _unusable_default_folders(src, role, available, test_ok)
        if src.kind == "folder":
            hint += _csv_hint(src.path, available)
        name_one = f"; name one ({options})" if options else ""
        raise DataError(f"{src.path} has no {missing} ({_looked_for(src, role, test_ok)}); available: "
                        f"{', '.join(available) or 'none'}{name_one}{hint}")
    return name


def default_train_split(data: str | Path, options: str = "fer-edge train --split, export --calib-split") -> str:
    """The training split: ``"Training"`` for a CSV; ``"train"``, else ``"Training"``, for image folders.

    Names are matched exactly, then ignoring case, and the split's actual name is returned
    (``Train`` for a folder ``Train/``). A :class:`DataError` when there is none, naming ``options`` as the
    ways to choose another (``""``: none, for a caller without such an option).
    """
    primary = DEFAULT_SPLITS[_source(data).kind]["train"][0]
    return _default_or_error(data, "train", f"{primary!r} split (the default split to train and to calibrate on)",
                             options)


def default_val_split(data: str | Path,
                      options: str = "fer-edge train --val-split, eval --split, export --val-split",
                      *, test_ok: bool = False) -> str:
    """The validation split: ``"PublicTest"`` for a CSV; ``"val"``, else ``"PublicTest"``, for image folders.

    Names are matched exactly, then ignoring case, and the split's actual name is returned
    (``Val`` for a folder ``Val/``). A :class:`DataError` when there is none, naming ``options`` as in
    :func:`default_train_split`.

    A folder without one but with a test split (``test``, else ``PrivateTest``: :data:`TEST_SPLITS`, the common
    Kaggle layout ``train/`` + ``test/``) is refused with an error saying so and how to name it, as selecting on a
    test split (the best epoch, a soup) leaves no unbiased test figure; ``test_ok=True`` returns that split instead,
    for callers that only measure and select nothing (``fer-edge eval``).
    """
    src = _source(data)
    shown = ("PublicTest",) if src.kind == "csv" else ("val", "PublicTest") + (TEST_SPLITS["folder"] if test_ok else ())
    return _default_or_error(data, "val", f"validation split ({' or '.join(repr(c) for c in shown)})", options,
                             test_ok)


def load_split(data: str | Path, split: str, *, cache: bool = True, progress: bool = True) -> FerSplit:
    """Decode one split of a FER2013 CSV or image-folder data set.

    ``split`` is a CSV ``Usage`` value or a folder name, or an alias from
    :data:`SPLIT_ALIASES`. ``cache=False`` neither reads nor writes the decoded-array
    cache; ``progress=False`` hides the progress bar of a first decode.
    Raises :class:`DataError` for a missing path or split, an empty split or bad rows/files.
    """
    import torch

    src = _source(data)
    split = str(split)
    if src.kind == "csv":
        st = src.path.stat()
        split, (images, labels), info = _csv_load(src, split, cache, progress)
        converted = 0
        size, mtime = st.st_size, st.st_mtime
        if info.get("case_note"):  # on each load, cached or not, as a folder's conversion count below
            log.warning("%s: %s: %s", src.path, _csv.CASE_NOTE, info["case_note"])
    else:
        split = _resolve_folder_split(src, split)
        (images, labels), info, size, mtime = _folder_load(src, split, cache, progress)
        converted = int(info.get("converted", 0))
        if converted:
            log.warning(
                "%s: converted %d of %d images to 48x48 grayscale (%d not 48x48, %d not 8-bit grayscale)",
                src.path / split, converted, len(labels), info.get("resized", 0), info.get("not_gray", 0),
            )
    if len(labels) == 0:
        raise DataError(f"split {split!r} in {src.path} is empty")
    if not images.flags.writeable:
        images = images.copy()
    if not labels.flags.writeable:
        labels = labels.copy()
    fingerprint = {
        "format": src.kind,
        "source": str(src.path),
        "split": split,
        "n": int(len(labels)),
        "size": int(size),
        "mtime": float(mtime),
        "sha256": info["sha256"],
        # cache entries written before this digest existed lack it: computed from the arrays on each load then
        "unordered_sha256": info.get("unordered_sha256") or _arrays_unordered_sha256(images, labels),
    }
    return FerSplit(
        images=torch.from_numpy(np.ascontiguousarray(images)),
        labels=torch.from_numpy(np.ascontiguousarray(labels)),
        source=str(src.path),
        split=split,
        fingerprint=fingerprint,
        converted=converted,
    )

"""Image-folder data sets: ``<root>/<split>/<class>/*.{jpg,jpeg,png,bmp}``.

Class folders are matched case-insensitively to the 7 FER2013 class names; files are
ordered by a natural sort of their file names (then class), so ``x_2`` comes before
``x_10`` and numbered exports keep their original row order. Hidden entries, files
directly in a split folder and other file types (and links to nothing) are not read: one
warning per split counts them by kind, so a folder of ``.webp`` files is not lost in silence (a split with no image
at all is an error that counts them: :func:`unread_files`).

Images must sit directly in their class folder: a class folder whose sub-folders (at any
depth, hidden ones excepted) hold image files is refused by :func:`scan` with a
:class:`DataError` naming the class folder, how many images are nested and one of them,
rather than silently loading the split without them. Sub-folders without images are
ignored. The check runs on every load, before the decoded-data cache is consulted, so a
cached copy of the split never hides nested images; once they are moved up, the split's
file list (and so the cache key and fingerprint) includes them like any other image.

Images are decoded with Pillow in a thread pool; anything that is not 8-bit grayscale
48x48 goes through :func:`fer_edge.preprocess.to_gray48` and is counted, and so does a 48x48 grayscale image
with a transparent gray level (a PNG's ``tRNS``; not counted), so that it gets the pixels ``fer-edge predict``
classifies: transparent pixels composited onto white.
"""
from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from fer_edge.constants import IMAGE_SIZE, LABELS
from fer_edge.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
_CLASS_INDEX = {name: i for i, name in enumerate(LABELS)}
_CHUNK = 256

#: bit flags returned per image
RESIZED = 1
NOT_GRAY = 2


class FileEntry(NamedTuple):
    rel: str  # "<class folder>/<file>"
    path: str
    label: int
    size: int
    mtime_ns: int
    ctime_ns: int = 0  # changes with any write, also one that sets mtime back (touch -r, cp -p, rsync -a)


def _natural_key(name: str):
    # isdecimal, not isdigit: ``\d`` matches decimal digits only (any script: int() reads them), while isdigit is
    # also true of ``²`` or ``①``, which int() refuses (a file named ``x²`` raised ValueError in every command)
    return tuple(int(t) if t.isdecimal() else t.lower() for t in re.split(r"(\d+)", name))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def split_dirs(root: Path) -> list[str]:
    """Names of the (non-hidden) sub-folders of ``root``."""
    try:
        with os.scandir(root) as it:
            return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    except OSError as e:
        raise DataError(f"{root}: cannot list the folder ({e.strerror or e})") from None


def class_dirs(split_dir: Path, strict: bool) -> list[tuple[str, int]]:
    """(folder name, class index) of a split folder's class folders.

    ``strict`` raises a :class:`DataError` for a folder that is not a FER2013 class.
    """
    out = []
    try:
        with os.scandir(split_dir) as it:
            entries = sorted((e.name for e in it if not e.name.startswith(".") and e.is_dir()))
    except OSError as e:
        raise DataError(f"{split_dir}: cannot list the folder ({e.strerror or e})") from None
    for name in entries:
        idx = _CLASS_INDEX.get(name.lower())
        if idx is None:
            if strict:
                raise DataError(
                    f"{split_dir / name}: unknown class folder {name!r}; class folders must be named "
                    f"(case-insensitively) one of: {', '.join(LABELS)}"
                )
            continue
        out.append((name, idx))
    if strict:
        by_class: dict[int, list[str]] = {}
        for name, idx in out:
            by_class.setdefault(idx, []).append(name)
        clashes = [f"{LABELS[idx]}: {', '.join(names)}" for idx, names in sorted(by_class.items()) if len(names) > 1]
        if clashes:
            raise DataError(
                f"{split_dir}: more than one folder for the same class (names are matched case-insensitively): "
                f"{'; '.join(clashes)}. Merge them into one folder per class, or remove the extra ones"
            )
    return out


def _nested_images(class_dir: Path):
    """Paths of the image files in the (non-hidden) sub-folders of ``class_dir``, at any depth.

    Yielded lazily in sorted order (so the first one is a stable example); symlinked
    folders are followed once, loops are not.
    """
    seen: set[tuple[int, int]] = set()

    def walk(d: str, top: bool):
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:
                return
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            return
        subdirs = []
        for e in entries:
            try:
                if e.is_dir():
                    subdirs.append(e.path)
                elif not top and _is_image(e.name) and e.is_file():
                    yield e.path
            except OSError:
                continue
        for sub in subdirs:
            yield from walk(sub, False)

    yield from walk(str(class_dir), True)


def loose_images(split_dir: Path) -> int:
    """How many image files sit directly in ``split_dir`` (outside any class folder); ignored."""
    try:
        with os.scandir(split_dir) as it:
            return sum(1 for e in it if not e.name.startswith(".") and _is_image(e.name) and e.is_file())
    except OSError:
        return 0


def _unread_kind(e: os.DirEntry) -> str | None:
    """Why a class folder's entry is not read as an image (``*.webp``, ``broken links``...); None: it is read, or it
    is a folder (nested images are :func:`scan`'s business)."""
    if e.is_dir():
        return None
    if _is_image(e.name):
        return None if e.is_file() else "broken links" if e.is_symlink() else "not regular files"
    suffix = os.path.splitext(e.name)[1].lower()
    return f"*{suffix}" if suffix else "without extension"


def unread_files(split_dir: Path) -> dict[str, int]:
    """How many (non-hidden) entries of ``split_dir``'s class folders are not read, by kind (``*.webp``, ``without
    extension``, ``broken links``...): for the errors of a split with no image that holds files of other types."""
    out: dict[str, int] = {}
    for name, _ in class_dirs(split_dir, strict=False):
        try:
            with os.scandir(split_dir / name) as it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    kind = _unread_kind(e)
                    if kind is not None:
                        out[kind] = out.get(kind, 0) + 1
        except OSError:
            continue
    return out


def describe_unread(unread: dict[str, int]) -> str:
    """``5 files (3 *.webp, 2 *.gif)``: the counts of :func:`unread_files`, the most common kind first."""
    total = sum(unread.values())
    parts = ", ".join(f"{n} {kind}" for kind, n in sorted(unread.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{total} file{'s' if total != 1 else ''} ({parts})"


def has_images(split_dir: Path) -> bool:
    """True when a class folder of ``split_dir`` holds at least one image file.

    Images in sub-folders of class folders count too, so that such a split is listed
    and loading it reports them (see :func:`scan`) instead of it silently vanishing.
    """
    classes = class_dirs(split_dir, strict=False)
    for name, _ in classes:
        try:
            with os.scandir(split_dir / name) as it:
                if any(_is_image(e.name) and not e.name.startswith(".") and e.is_file() for e in it):
                    return True
        except OSError:
            continue
    return any(next(_nested_images(split_dir / name), None) is not None for name, _ in classes)


def _nested_error(split_dir: Path, nested: list[tuple[Path, int, str]]) -> DataError:
    total = sum(n for _, n, _ in nested)
    parts = "; ".join(
        f"{d} holds {n} image{'s' if n != 1 else ''} in sub-folders (e.g. {example})" for d, n, example in nested
    )
    return DataError(
        f"split {split_dir.name!r} in {split_dir.parent}: found {total} image{'s' if total != 1 else ''} "
        f"in sub-folders of class folders: {parts}. Images must sit directly in "
        f"their class folder ({split_dir}/<class>/*.png): move them up, or move them out of the data set"
    )


def scan(split_dir: Path) -> list[FileEntry]:
    """The split's image files with labels, sizes and mtimes, sorted by relative path.

    Raises a :class:`DataError` when a class folder holds image files in sub-folders.
    """
    files: list[FileEntry] = []
    with_subdirs: list[Path] = []
    unread: dict[str, int] = {}  # what in the class folders is not read, by kind: warned about
    for name, idx in class_dirs(split_dir, strict=True):
        d = split_dir / name
        has_subdir = False
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.name.startswith("."):
                        continue
                    if _is_image(e.name) and e.is_file():
                        st = e.stat()
                        files.append(FileEntry(f"{name}/{e.name}", e.path, idx, st.st_size, st.st_mtime_ns,
                                               st.st_ctime_ns))
                    elif e.is_dir():
                        has_subdir = True
                    else:
                        kind = _unread_kind(e)
                        if kind is not None:
                            unread[kind] = unread.get(kind, 0) + 1
        except OSError as e:
            raise DataError(f"{d}: cannot list the folder ({e.strerror or e})") from None
        if has_subdir:
            with_subdirs.append(d)
    nested = []
    for d in with_subdirs:
        paths = _nested_images(d)
        first = next(paths, None)
        if first is not None:
            nested.append((d, 1 + sum(1 for _ in paths), first))
    if nested:
        raise _nested_error(split_dir, nested)
    loose = loose_images(split_dir)
    if files and (unread or loose):
        parts = [f"{n} {kind}" for kind, n in sorted(unread.items(), key=lambda kv: (-kv[1], kv[0]))]
        if loose:
            parts.append(f"{loose} image{'s' if loose != 1 else ''} directly in the split folder, outside the class "
                          "folders")
        logging.getLogger("fer_edge.data").warning(
            "%s: %d file%s not read (%s); images are %s files in the class folders", split_dir,
            sum(unread.values()) + loose, "s" if sum(unread.values()) + loose != 1 else "", ", ".join(parts),
            "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS))
    files.sort()
    return files


def natural_order(files: list[FileEntry]) -> list[FileEntry]:
    """``files`` in the order images are stored: natural sort of the file name, then class."""
    return sorted(files, key=lambda f: (_natural_key(f.rel.rsplit("/", 1)[1]), f.label, f.rel))


def decode_one(path: str) -> tuple[np.ndarray, int]:
    """A file -> (uint8 48 x 48, flags). EXIF orientation is honoured, as in ``to_gray48``."""
    from PIL import Image, ImageOps

    from fer_edge.preprocess import to_gray48

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
    except Exception as e:  # PIL raises many types for bad or truncated files
        raise DataError(f"{path}: cannot read image ({e})") from None
    flags = 0
    if im.size != (IMAGE_SIZE, IMAGE_SIZE):
        flags |= RESIZED
    if im.mode != "L":
        flags |= NOT_GRAY
    if not flags and "transparency" not in im.info:  # (a transparent gray level is composited onto white below)
        return np.asarray(im, dtype=np.uint8), 0
    try:
        return to_gray48(im), flags
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot convert image to 48x48 grayscale ({e})") from None


def decode(files: list[FileEntry], progress=None, workers: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(uint8 N x 48 x 48, int64 labels, uint8 flags) for ``files``, decoded in a thread pool.

    ``progress(done, total)`` is called as chunks finish, if given. The first bad file
    (in file order) raises its :class:`DataError`.
    """
    import PIL.Image  # noqa: F401  (imported once here, not concurrently by the workers)

    n = len(files)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    flags = np.zeros(n, dtype=np.uint8)
    labels = np.fromiter((f.label for f in files), dtype=np.int64, count=n)

    def work(start: int) -> int:
        stop = min(start + _CHUNK, n)
        for i in range(start, stop):
            images[i], flags[i] = decode_one(files[i].path)
        return stop - start

    if workers is None:
        workers = min(8, 2 * (os.cpu_count() or 1))
    done = 0
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fer-edge-decode") as ex:
        futures = [ex.submit(work, s) for s in range(0, n, _CHUNK)]
        try:
            for fut in futures:
                done += fut.result()
                if progress is not None:
                    progress(done, n)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return images, labels, flags

"""Fast reader for the Kaggle FER2013 CSV (``emotion,pixels,Usage``, optionally gzipped).

The file is read in blocks of a few MB (decompressed in a background thread, zlib
releases the GIL); each block's pixel strings are parsed at once with numpy on the raw
bytes, so the 32k-row, 270 MB file parses in seconds. Every check reports the file and
its physical line number.
"""
from __future__ import annotations

import csv
import gzip
import logging
import queue
import threading
import zlib
from pathlib import Path

import numpy as np

from fer_edge.constants import IMAGE_SIZE, NUM_CLASSES, NUM_PIXELS
from fer_edge.errors import DataError

REQUIRED_COLUMNS = ("emotion", "pixels", "usage")
_SHOWN = {"emotion": "emotion", "pixels": "pixels", "usage": "Usage"}  # as the Kaggle header spells them
_BLOCK = 8 << 20
_LABEL_BYTES = {str(i).encode(): i for i in range(NUM_CLASSES)}
_SPACE, _TAB, _CR, _NL = 32, 9, 13, 10
#: The Kaggle file's Usage values: Usage values that differ only in case from one of these are that split.
KAGGLE_USAGES = ("Training", "PublicTest", "PrivateTest")


class _Reader:
    """Yields (decompressed block, bytes of the file consumed so far); a thread reads ahead."""

    def __init__(self, path: Path):
        self.path = path
        self.raw = open(path, "rb")
        magic = self.raw.read(2)
        self.raw.seek(0)
        self.fh = gzip.GzipFile(fileobj=self.raw, mode="rb") if magic == b"\x1f\x8b" else self.raw
        self.queue: queue.Queue = queue.Queue(maxsize=3)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="fer-edge-csv-reader", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                block = self.fh.read(_BLOCK)
                if not block:
                    break
                if not self._put((block, self.raw.tell())):
                    return
            self._put(None)
        except BaseException as e:  # EOFError, BadGzipFile, zlib.error, OSError
            self._put(e)

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                if isinstance(item, (EOFError, OSError, zlib.error)):
                    raise DataError(f"{self.path}: cannot read the file ({item}); is it truncated or corrupt?")
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.fh.close()
        self.raw.close()


def _archive_error(path: Path, head: bytes) -> DataError | None:
    """The error for a tar or zip archive given as the CSV (Kaggle's original ``fer2013.tar.gz``), else None: read
    as text its header line was ``fer2013/\\x00\\x00...`` or bytes that are not UTF-8."""
    kind = "a zip archive" if head[:4] == b"PK\x03\x04" else "a tar archive" if head[257:262] == b"ustar" else None
    if kind is None:
        return None
    return DataError(f"{path}: {kind}, not a CSV: extract fer2013.csv from it first")


def _lines(reader: _Reader):
    """Yields (lines of a block, position) with lines split on \\n, the last partial line carried over.

    A file whose lines end in CR only (old Mac) is read as if they ended in \\n: its first CR is not followed by
    \\n (a FER2013 field never holds a CR, so every CR of such a file ends a line)."""
    carry = b""
    cr_only = None
    for block, pos in reader:
        if cr_only is None:
            err = _archive_error(reader.path, block)
            if err is not None:
                raise err
            cr = block.find(b"\r")
            nl = block.find(b"\n")
            # the first CR comes before any \n and is not the CR of a CRLF (a CR ending the block: decided on it)
            cr_only = cr >= 0 and (nl < 0 or cr < nl) and cr + 1 < len(block) and block[cr + 1] != _NL
        if cr_only:
            block = block.replace(b"\r", b"\n")
        lines = (carry + block if carry else block).split(b"\n")
        carry = lines.pop()
        yield lines, pos
    if carry:
        yield [carry], None


def _token_at(buf: bytes, pos: int) -> str:
    """The whitespace-delimited token around ``pos`` (for messages)."""
    start = pos
    while start > 0 and buf[start - 1] not in b" \t\n":
        start -= 1
    end = pos
    while end < len(buf) and buf[end] not in b" \t\n":
        end += 1
    tok = buf[start:end].decode("utf-8", "replace")
    return tok if len(tok) <= 20 else tok[:20] + "..."


def parse_pixels(buf: bytes, nrows: int, fail) -> np.ndarray:
    """``nrows`` newline-terminated rows of 2304 whitespace-separated integers -> uint8 nrows x 2304.

    Vectorised over the raw bytes: a few whole-buffer numpy operations find where each
    number ends, and its value comes from the (at most 3) digits before. ``fail(row,
    message)`` raises the error for a 0-based row of ``buf``.
    """
    pad = 3  # so e - 1, e - 2 stay inside the array
    a = np.frombuffer(b" " * pad + buf + b" ", dtype=np.uint8)
    dig = a - 48  # wraps around for non-digits
    isd = dig < 10
    nl = a == _NL
    nlpos = np.flatnonzero(nl)
    if len(nlpos) != nrows:  # cannot happen for lines split on \n
        fail(0, "pixels field spans several lines")
    n_digits = int(np.count_nonzero(isd))
    if n_digits + int(np.count_nonzero(a == _SPACE)) + nrows != len(a):  # something besides digits, " ", "\n"
        ok = isd | nl | (a == _SPACE) | (a == _TAB) | (a == _CR)
        if not ok.all():
            pos = int(np.argmin(ok))
            fail(int(np.searchsorted(nlpos, pos)), f"pixel value {_token_at(a.tobytes(), pos)!r} is not an integer 0..255")
    e = np.flatnonzero(isd[:-1] > isd[1:])  # the last digit of each number
    per_row = np.diff(np.searchsorted(e, nlpos), prepend=0)
    bad = np.flatnonzero(per_row != NUM_PIXELS)
    if len(bad):
        row = int(bad[0])
        fail(row, f"pixels has {int(per_row[row])} values, expected {NUM_PIXELS} ({IMAGE_SIZE}x{IMAGE_SIZE})")
    q = (dig + 1) * isd  # 1..10 for a digit, 0 otherwise
    q0 = q[e].astype(np.uint16)
    e -= 1
    q1 = q[e].astype(np.uint16)
    e -= 1
    q2 = q[e].astype(np.uint16)
    e += 2
    has1 = q1 > 0
    has2 = has1 & (q2 > 0)
    vals = q0 - 1
    vals += (q1 - has1) * 10  # (digit + 1) - 1 where there is a digit, else 0
    vals += (q2 - has2) * has2 * 100
    if n_digits != len(e) + int(np.count_nonzero(has1)) + int(np.count_nonzero(has2)):
        # some number has more than 3 digits: leading zeros or out of range (rare, slow)
        for i in np.flatnonzero(has2):
            if isd[e[i] - 3]:
                start = int(e[i]) - 3
                while isd[start - 1]:
                    start -= 1
                vals[i] = min(int(a[start:e[i] + 1].tobytes()), 256)
    over = np.flatnonzero(vals > 255)
    if len(over):
        pos = int(e[over[0]])
        fail(int(np.searchsorted(nlpos, pos)), f"pixel value {_token_at(a.tobytes(), pos)!r} is outside 0..255")
    return vals.astype(np.uint8).reshape(nrows, NUM_PIXELS)


def _split_fields(line: bytes, path: Path, lineno: int) -> list[bytes]:
    if b'"' not in line:
        return line.split(b",")
    try:
        row = next(csv.reader([line.decode("utf-8")]))
    except (csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{path}, line {lineno}: malformed CSV row ({e})") from None
    return [f.encode() for f in row]


def _parse_header(line: bytes, path: Path) -> tuple[list[str], dict[str, int]]:
    try:
        text = line.decode("utf-8-sig").rstrip("\r")
    except UnicodeDecodeError:
        raise DataError(f"{path}, line 1: not a text CSV (expected the header emotion,pixels,Usage)") from None
    try:
        cols = next(csv.reader([text])) if text.strip() else []
    except csv.Error as e:
        raise DataError(f"{path}, line 1: malformed CSV header ({e})") from None
    index: dict[str, int] = {}
    for i, c in enumerate(cols):
        index.setdefault(c.strip().lower(), i)
    # a repeated column fer-edge reads (emotion,pixels,Usage,emotion): which one holds the data is a guess
    at = {c: [str(i + 1) for i, x in enumerate(cols) if x.strip().lower() == c] for c in REQUIRED_COLUMNS}
    repeated = [c for c in REQUIRED_COLUMNS if len(at[c]) > 1]
    if repeated:
        where = "; ".join(f"{_SHOWN[c]} in columns {', '.join(at[c])}" for c in repeated)
        raise DataError(f"{path}, line 1: the header names {', '.join(_SHOWN[c] for c in repeated)} more than once "
                        f"({where}); keep one column of each name")
    missing = [c for c in REQUIRED_COLUMNS if c not in index]
    if missing:
        shown = ", ".join(repr(c if len(c) <= 40 else c[:37] + "...") for c in cols[:10]) or "nothing"
        more = f" and {len(cols) - 10} more" if len(cols) > 10 else ""
        headless = (len(cols) >= 2 and cols[0].strip().isdigit()
                    and len(cols[1].split()) > 100)  # a label, then a pixel string: a data row
        raise DataError(
            f"{path}, line 1: missing column(s) {', '.join(_SHOWN[m] for m in missing)}; "
            f"a FER2013 CSV needs the header emotion,pixels,Usage (found {shown}{more})"
            + ("; line 1 reads like a data row: add the header line emotion,pixels,Usage" if headless else "")
        )
    return cols, index


def read_csv(path: str | Path, progress=None, notes: dict[str, str] | None = None
             ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every split of a FER2013 CSV: ``{Usage: (uint8 N x 48 x 48, int64 N)}`` in file order.

    Usage values are stripped of surrounding whitespace; values that differ only in case (``training`` beside
    ``Training``) are one split, and a value that is one of :data:`KAGGLE_USAGES` in another case is that split,
    under the Kaggle spelling (``training``, even alone, is ``Training``, so the aliases ``train``/``val``/``test``
    and the default splits find it as in Kaggle's file); other values differing only in case are one split under
    the spelling met first. Each such split gets a note naming its spellings, their rows and the line each is first
    met on (:data:`CASE_NOTE` says what they are): put in ``notes`` (``{split: note}``) when given, so that a caller
    caching the splits can repeat it on each load; logged as a warning otherwise.
    ``progress(done_bytes, total_bytes)`` is called as the file is read, if given.
    """
    path = Path(path)
    total = path.stat().st_size
    try:
        reader = _Reader(path)
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror or e})") from None
    usages: dict[bytes, int] = {}
    names: list[str] = []
    first_line: list[int] = []  # the line each Usage spelling is first met on
    image_parts: list[np.ndarray] = []
    label_parts: list[np.ndarray] = []
    code_parts: list[np.ndarray] = []
    lineno = 0
    header = None
    try:
        for lines, pos in _lines(reader):
            if header is None:
                if not lines:
                    continue
                lineno = 1
                cols, index = _parse_header(lines[0], path)
                ie, ip, iu = index["emotion"], index["pixels"], index["usage"]
                need = max(ie, ip, iu) + 1
                ncols = len(cols)
                header = True
                lines = lines[1:]
            pix: list[bytes] = []
            row_lines: list[int] = []
            labels: list[int] = []
            codes: list[int] = []
            for line in lines:
                lineno += 1
                if line.endswith(b"\r"):
                    line = line[:-1]
                if not line or line.isspace():
                    continue
                fields = _split_fields(line, path, lineno)
                # a field too many (a stray comma) shifts the fields; an empty one (a trailing comma) does not
                if len(fields) < need or any(f.strip() for f in fields[ncols:]):
                    raise DataError(
                        f"{path}, line {lineno}: expected {ncols} comma-separated columns, found {len(fields)}"
                    )
                lab = _LABEL_BYTES.get(fields[ie])
                if lab is None:
                    tok = fields[ie].strip()
                    try:
                        lab = int(tok)
                    except ValueError:
                        raise DataError(
                            f"{path}, line {lineno}: emotion {tok.decode('utf-8', 'replace')!r} is not an integer label 0..6"
                        ) from None
                    if not 0 <= lab < NUM_CLASSES:
                        raise DataError(f"{path}, line {lineno}: emotion label {lab} is outside 0..{NUM_CLASSES - 1}")
                u = fields[iu]
                code = usages.get(u)
                if code is None:
                    try:
                        name = u.strip().decode("utf-8")
                    except UnicodeDecodeError:
                        name = None
                    if name is None or not name.isprintable():
                        raise DataError(f"{path}, line {lineno}: Usage value {u.strip()!r} holds a control character "
                                        "or bytes that are not UTF-8 text (the file is damaged?)")
                    if not name:
                        raise DataError(f"{path}, line {lineno}: empty Usage value (expected e.g. Training, PublicTest)")
                    if name in names:
                        code = names.index(name)
                    else:
                        code = len(names)
                        names.append(name)
                        first_line.append(lineno)
                    usages[u] = code
                pix.append(fields[ip])
                row_lines.append(lineno)
                labels.append(lab)
                codes.append(code)
            if pix:
                def fail(row: int, msg: str, _rl=row_lines):
                    raise DataError(f"{path}, line {_rl[row]}: {msg}")

                image_parts.append(parse_pixels(b"\n".join(pix) + b"\n", len(pix), fail))
                label_parts.append(np.asarray(labels, dtype=np.int64))
                code_parts.append(np.asarray(codes, dtype=np.int64))
            if progress is not None and pos is not None:
                progress(pos, total)
    finally:
        reader.close()
    if header is None:
        raise DataError(f"{path}: the file is empty (expected the header emotion,pixels,Usage)")
    if not image_parts:
        return {}
    images = np.concatenate(image_parts).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    labels_all = np.concatenate(label_parts)
    codes_all = np.concatenate(code_parts)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    found: dict[str, str] = {}
    for name, codes in _merge_case(names, first_line, np.bincount(codes_all, minlength=len(names)), found).items():
        sel = np.isin(codes_all, codes) if len(codes) > 1 else codes_all == codes[0]
        out[name] = (np.ascontiguousarray(images[sel]), np.ascontiguousarray(labels_all[sel]))
    if notes is not None:
        notes.update(found)
    elif found:
        logging.getLogger("fer_edge.data").warning("%s: %s: %s", path, CASE_NOTE, "; ".join(found.values()))
    return out


#: What a note of :func:`read_csv` is about (the note itself: ``'training' (3 rows from line 2) as 'Training'``).
CASE_NOTE = "Usage values differing only in case are read as one split, under the Kaggle spelling where there is one"


def _merge_case(names: list[str], first_line: list[int], rows, notes: dict[str, str]) -> dict[str, list[int]]:
    """``{split name: [codes of its Usage spellings]}``, in the order the splits are first met: the spellings that
    differ only in case are one split, under the Kaggle spelling where the value is one in another case (see
    :func:`read_csv`); ``notes`` gets ``{split: note}`` for each split read under a name other than its rows' own
    (several spellings, or a Kaggle name in another case), naming the spellings, their rows and the line each is
    first met on."""
    groups: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        groups.setdefault(name.lower(), []).append(k)
    out: dict[str, list[int]] = {}
    for fold, codes in groups.items():
        canonical = next((u for u in KAGGLE_USAGES if u.lower() == fold), None)
        name = canonical if canonical is not None else names[codes[0]]
        out[name] = codes
        if len(codes) > 1 or names[codes[0]] != name:
            spellings = ", ".join(f"{names[k]!r} ({int(rows[k])} row{'s' if rows[k] != 1 else ''} from line "
                                  f"{first_line[k]})" for k in codes)
            notes[name] = f"{spellings} as {name!r}"
    return out

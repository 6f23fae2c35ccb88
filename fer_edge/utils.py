"""Small helpers: atomic writes, hashing, signals."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator


#: Environment defaults of every fer-edge command, the ``fer-edge`` CLI and the ``python -m fer_edge...`` scripts (a
#: user's own setting wins): ONNX Runtime's telemetry off. Its import otherwise writes a device id and an event
#: database under ~/.cache/Microsoft/DeveloperTools for upload; a tool that trains and benchmarks locally has no
#: business doing that unasked. (Importing ``fer_edge`` as a library changes nothing: the application decides.)
COMMAND_ENVIRONMENT = {"ORT_DISABLE_TELEMETRY": "1"}


def command_environment() -> None:
    """Set :data:`COMMAND_ENVIRONMENT`'s defaults in this process: the first thing a command does, before anything
    imports onnxruntime. OpenVINO's telemetry is off too (:func:`openvino_telemetry_opted_in`)."""
    import sys

    for key, value in COMMAND_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "").replace("_", "")
    if not encoding.startswith("utf") and hasattr(sys.stdout, "reconfigure"):
        # output that goes to a file or pipe on Windows is in the ANSI code page (cp1252), which cannot hold every
        # file name, path or label a command prints: a character it lacks is written as an escape (as Python's
        # stderr does) rather than ending the command in a UnicodeEncodeError after its work is done
        try:
            sys.stdout.reconfigure(errors="backslashreplace")
        except (ValueError, OSError):  # a closed or unusual stream: printing will say so itself
            pass
    if "openvino_telemetry" not in sys.modules and not openvino_telemetry_opted_in():
        # OpenVINO's converter and NNCF import openvino_telemetry, whose Telemetry() starts a process that posts
        # usage events to Google Analytics unless a consent file says no (a Ctrl-C also printed that process's
        # traceback); it has no environment switch, and both fall back to their built-in stubs when the import
        # fails, which a None entry makes it do
        sys.modules["openvino_telemetry"] = None


def openvino_telemetry_opted_in() -> bool:
    """Whether the user opted in to OpenVINO's telemetry (its consent file, ``~/intel/openvino_telemetry`` or
    ``%LOCALAPPDATA%/Intel Corporation/openvino_telemetry``, holds ``1``: ``opt_in_out --opt_in``)."""
    if os.name == "nt":
        base, sub = os.environ.get("LOCALAPPDATA"), "Intel Corporation"
    else:
        base, sub = os.path.expanduser("~"), "intel"
    try:
        return bool(base) and Path(base, sub, "openvino_telemetry").read_text().strip() == "1"
    except (OSError, UnicodeDecodeError):
        return False


#: How fer-edge writes its text files (reports, CSVs, tables): UTF-8 whatever the locale (Windows' default is its
#: ANSI code page, which cannot hold every file name or label), and with no newline translation (Windows' text mode
#: turns ``\n`` into ``\r\n``, and a CSV writer's ``\r\n`` into ``\r\r\n``: a blank row after every row).
TEXT_FILE = {"encoding": "utf-8", "newline": ""}


def temp_beside(dest: str | os.PathLike, suffix: str | None = None) -> Path:
    """A free temporary name beside ``dest`` (``.tmp-<stem>-*<suffix>``, the destination's suffix unless given), not
    yet created: its writer creates the file, with the modes it would give ``dest`` (mkstemp's are owner-only). A
    folder that cannot be written is an OSError naming ``dest``, not a random name that never existed."""
    dest = Path(dest)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{dest.stem}-", suffix=dest.suffix if suffix is None else suffix,
                                   dir=dest.parent)
    except OSError as e:
        raise type(e)(e.errno, e.strerror or str(e), str(dest)) from None
    os.close(fd)
    os.unlink(tmp)
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str | None = None, overwrite: bool = True,
                durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds.

    Works for files and directories (e.g. ``.mlpackage``): a folder at ``dest`` is replaced only by a folder
    (an earlier ``.mlpackage``); a file never replaces a folder (``IsADirectoryError``, the folder untouched), so
    an output path that names a user's folder cannot delete it. The temporary name keeps the destination's
    suffix (some writers insist on it), so an interrupted write leaves ``.tmp-*`` debris, never a half-written
    file under the real name.

    ``overwrite=False`` (files only): the rename fails with ``FileExistsError`` if ``dest`` exists by then, even
    one created by another process while the block ran (a hard link, which never replaces, in place of the
    rename; where the file system has no hard links, a check just before the rename).

    ``durable=True`` (files): the temporary file's data reaches the disk (``fsync``) before the rename, so a power
    loss right after cannot leave an empty file under the real name (checkpoints).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    sfx = dest.suffix if suffix is None else suffix
    tmp_path = temp_beside(dest, sfx)
    try:
        yield tmp_path
        if durable and tmp_path.is_file():
            try:  # opened for writing: Windows' fsync refuses a read-only descriptor (EBADF)
                fd = os.open(tmp_path, os.O_RDWR)
            except PermissionError:  # a writer that made its file read-only: POSIX syncs it read-only too
                fd = os.open(tmp_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if dest.is_dir() and not dest.is_symlink():
            if not tmp_path.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a folder: a file is not written over it", str(dest))
            shutil.rmtree(dest)
        if overwrite:
            os.replace(tmp_path, dest)
        else:
            _link_no_replace(tmp_path, dest)
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask_modes(tree: str | os.PathLike) -> None:
    """Give a folder written by a library that makes its files owner-only (coremltools' ``save``: 600 files, 700
    folders) the modes a plain ``open`` would: 666 and 777 less the umask, keeping the owner's execute bits."""
    mask = current_umask()
    root = Path(tree)
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            f = Path(dirpath) / name
            if not f.is_symlink():
                executable = f.stat().st_mode & 0o100
                os.chmod(f, (0o777 if executable else 0o666) & ~mask)


def hold_lock(path: str | os.PathLike):
    """Take the advisory ``flock`` on the lock file ``path`` (created if need be) for a process writing a folder:
    the open file, to give to :func:`release_lock`; None where the system has no ``fcntl`` (Windows: no lock).
    The system releases it when the process ends, however it ends. Raises :class:`BlockingIOError` while another
    process holds it. The file locked is checked to be still the one at ``path`` (not one its holder removed as
    it ended, which would lock nothing)."""
    try:
        import fcntl
    except ImportError:
        return None
    for _ in range(3):
        fh = open(path, "a")  # noqa: SIM115 - held open until release_lock
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            break
        try:
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                return fh
        except OSError:
            pass
        fh.close()
    raise BlockingIOError(errno.EAGAIN, "held by another process", str(path))


def release_lock(path: str | os.PathLike, lock) -> None:
    """Release a lock :func:`hold_lock` took (None: nothing), removing its file."""
    if lock is None:
        return
    with contextlib.suppress(OSError):
        Path(path).unlink()
    lock.close()


def _link_no_replace(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)  # raises FileExistsError rather than replace dest; src is removed by the caller
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if dest.exists() or dest.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists", str(dest)) from None
        os.replace(src, dest)


def _nearest_existing(p: Path, candidates) -> Path | None:
    """The first of ``candidates`` (``p`` or its parents, nearest first) that exists, a dangling link included."""
    return next((q for q in candidates if q.exists() or q.is_symlink()), None)


def _unwritable(q: Path) -> str | None:
    """Why this process cannot create entries in the existing folder ``q``, or None when it can.

    ``os.access`` answers from the permission bits, which root passes everywhere, also in folders no file can
    be made in (/proc, /sys, a read-only mount): so a writable-looking folder is tried with a folder made and
    removed at once."""
    if not os.access(q, os.W_OK | os.X_OK):
        return "read-only file system" if _read_only_mount(q) else "permission denied"
    import tempfile

    try:
        probe = tempfile.mkdtemp(prefix=".fer-edge-probe-", dir=q)
    except OSError as e:
        return f"no file can be made there: {e.strerror or e}"
    try:
        os.rmdir(probe)
    except OSError:  # made, so writable; an append-only folder (chattr +a) keeps what is made in it
        pass
    return None


def _read_only_mount(q: Path) -> bool:
    """Whether ``q`` lies on a file system mounted read-only (``EROFS``: no permission would let a file be made)."""
    try:
        return bool(os.statvfs(q).f_flag & getattr(os, "ST_RDONLY", 1))
    except (OSError, AttributeError):  # no statvfs (Windows): the permission bits are all that is known
        return False


def path_inside(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """Whether ``path`` is ``root`` or lies inside it, once both are resolved (symbolic links, ``..``); neither
    need exist."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def check_not_in_data(out: str | os.PathLike, sources, error: type[Exception], consequence: str,
                      option: str = "--out") -> None:
    """Refuse, before any work, an output path ``out`` that is, or lies inside, an image-folder data set the command
    reads (``sources``: ``(how it was given, path)`` pairs; a CSV is a file, which nothing can lie in): what the
    command writes there would become part of that data set, read by every later command on it (the command's
    own rerun included) as images, classes or splits. ``consequence`` says what that would do, in the message."""
    for given, data in sources:
        if data is None or not Path(data).is_dir():
            continue
        if path_inside(out, data):
            where = "is" if Path(out).resolve() == Path(data).resolve() else "lies inside"
            raise error(f"{option} {out} {where} {data}, the image-folder data set {given}: {consequence}; pick an "
                        f"{option} outside it")


def check_writable_dir(path: str | os.PathLike, option: str, error: type[Exception],
                       advice: str | None = None) -> Path:
    """Refuse, before any work, a folder to write into that is an existing file, lies under one, or sits in a
    folder this process may not write.

    The folder itself need not exist yet (it is made when the first output is written). ``advice`` replaces the
    message's closing "choose another <option>".
    """
    p = Path(path)
    q = _nearest_existing(p, (p, *p.parents))
    if q is not None and not q.is_dir():
        where = "is" if q == p else f"lies under {q}, which is"
        raise error(f"{option} {p} {where} a file, not a folder (not a directory): "
                    f"{advice or f'choose another {option}'}")
    if q is not None and (why := _unwritable(q)):
        raise error(f"{option} {p}: cannot write into {q} ({why})")
    return p


def check_output_file(path: str | os.PathLike, option: str, error: type[Exception],
                      example: str = "report.json") -> Path:
    """Refuse, before any work, an output file path that names an existing folder (an atomic write would not
    replace it), lies under a file, or sits in a folder this process may not write. ``example``: a file name
    the message suggests inside such a folder."""
    p = Path(path)
    if str(path) == "" or p.is_dir():
        raise error(f"{option} {str(path)!r} is a folder, not a file: give a file path (e.g. {p / example})")
    q = _nearest_existing(p, p.parents)
    if q is not None and not q.is_dir():
        raise error(f"{option} {p}: {q} is a file, not a folder (not a directory): choose another {option}")
    if q is not None and (why := _unwritable(q)):
        raise error(f"{option} {p}: cannot write into {q} ({why})")
    return p


def write_text_atomic(dest: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``dest`` atomically, as UTF-8 with its line endings as given (:data:`TEXT_FILE`)."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, **TEXT_FILE)


def json_text(obj) -> str:
    """``obj`` as strict JSON text: a float that is not finite (NaN, inf), which ``json`` writes as
    ``NaN``/``Infinity`` that strict parsers (JavaScript's, Go's) refuse, as ``null``; other objects as their
    ``str``."""
    return json.dumps(finite_or_null(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"


def write_json_atomic(dest: str | os.PathLike, obj) -> None:
    """Write ``obj`` as strict JSON (:func:`json_text`), atomically. A write error that names no file (a full
    disk) is raised naming ``dest``."""
    try:
        write_text_atomic(dest, json_text(obj))
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or str(e), str(dest)) from None
        raise


def finite_or_null(obj):
    """``obj`` with every float in it (in dicts, lists and tuples; numpy's too) that is not finite replaced by None."""
    import math
    import numbers

    if isinstance(obj, numbers.Real) and not isinstance(obj, numbers.Integral):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def sha256_path(path: str | os.PathLike) -> str:
    """SHA-256 of a file, or of a directory's files (sorted relative paths and contents)."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode("utf-8", "surrogateescape"))
            h.update(b"\0")
            _update_file(h, f)
    else:
        _update_file(h, path)
    return h.hexdigest()


def _update_file(h, f: Path) -> None:
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def path_size(path: str | os.PathLike) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def human_size(n: int | None) -> str:
    """Bytes as ``512 B``, ``3.6 MB``...; ``-`` for None."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def json_digest(obj) -> str:
    """SHA-256 of ``obj``'s canonical JSON (sorted keys, no spaces): the same value whatever its file's bytes."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_json_file(path: str | os.PathLike, default_name: str, what: str, error: type[Exception],
                   strict: bool = False) -> tuple[Path, object]:
    """Read ``path`` (or ``path/default_name`` for a folder) as JSON; ``error`` names the file when that fails.
    ``strict``: NaN and Infinity, which Python's json reads though they are not JSON, are refused too."""
    def no_constant(name: str):
        raise ValueError(f"{name} is not JSON (fer-edge writes null for a number it does not have)")

    p = Path(path)
    if p.is_dir():
        p = p / default_name
    if not p.is_file():
        raise error(f"{p}: {what} not found")
    try:
        return p, json.loads(p.read_text(), **({"parse_constant": no_constant} if strict else {}))
    except (OSError, ValueError) as e:
        raise error(f"{p}: not a readable {what} ({e})") from None


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM (``kill PID``, a job scheduler's stop) raises ``KeyboardInterrupt`` as Ctrl-C does.

    Long jobs then take their interrupt path (say where the last checkpoint is, close loggers) instead of dying
    silently. A shell starts background jobs (``cmd &``) with SIGINT ignored, so ``kill PID`` is how such a job is
    stopped. Outside the main thread, where Python cannot install handlers, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        # None: the previous handler was installed outside Python and cannot be put back; the default is the
        # nearest Python can restore (and restoring None would raise TypeError over the job's own outcome)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def mark_reported(e: BaseException) -> BaseException:
    """Mark an interrupt whose ``interrupted:`` line was already printed (the trainer's resume advice), so the
    CLI's catch-all (:func:`fer_edge.cli.common.handle_errors`) exits 130 without a second line; returns ``e``."""
    e.fer_edge_reported = True
    return e


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """While active, Ctrl-C (SIGINT) and SIGTERM are held, then raised as ``KeyboardInterrupt`` when the block ends.

    For library calls that swallow an interrupt raised inside them: ``torch.onnx.export`` runs weakref callbacks
    where a ``KeyboardInterrupt`` is printed as "Exception ignored in ..." and lost, so a Ctrl-C there let the
    job carry on. A signal the process ignores (SIGINT in a shell's background job) stays ignored. Outside the
    main thread, where Python cannot install handlers, this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
    if held:
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(held[0]).name}")

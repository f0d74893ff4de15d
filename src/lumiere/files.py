"""Outputs written so that a failure leaves nothing partial, and file-system errors in plain words.

Every file the library and the ``lumiere`` command write for a user (clips, grids, data sets,
metrics, JSON reports) goes through ``atomic_write``: the bytes go to a hidden temporary file in
the destination folder, which is fsynced and renamed onto the destination (``os.replace``, atomic
on POSIX) only when the write succeeded. A full disk, a read-only file system or a kill mid-write
leaves the previous file (or none), never a truncated one. Checkpoints and exported models use the
same idea for folders (``lumiere.checkpoint``).

    check_writable(path, name)     -> ``OutputError`` before any work if ``path`` cannot be written
    atomic_write(path)             -> context manager: a temporary path, renamed onto ``path``
    staged_folder(out_dir)         -> context manager: a sibling staging folder moved into ``out_dir``
    describe_os_error(err)         -> "PATH: no space left on device (12.0 KiB free)"
    is_machine_fault(err)          -> True for a full disk, a read-only file system, an I/O error

``OutputError`` (``lumiere.errors``) keeps the ``errno``, so a front end can tell a fault of the
machine (exit code 1) from a path the user should change (exit code 2).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lumiere.errors import OutputError

# errno values that are faults of the machine, not of the path asked for: the same command works
# once space is freed or the file system is writable again.
MACHINE_FAULTS = frozenset(
    {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.ENOMEM, errno.EMFILE}
)
_PARTIAL = ".partial"  # infix of a temporary file or folder that becomes an output once complete


def is_machine_fault(error: BaseException) -> bool:
    """Whether ``error`` is an ``OSError`` that a full disk, a read-only file system or a device
    failure raises (the machine's fault, not a wrong path)."""
    return isinstance(error, OSError) and error.errno in MACHINE_FAULTS


def _free_text(path: Path) -> str:
    """ " (12.0 KiB free)" for the file system holding ``path``, or "" when it cannot be told."""
    from lumiere.pipelines.memory import format_bytes

    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return f" ({format_bytes(shutil.disk_usage(folder).free)} free)"
            except OSError:
                return ""
    return ""


def os_reason(error: OSError, where: str | os.PathLike | None = None) -> str:
    """The cause of ``error`` in lower case ("no space left on device"), with the free space of
    ``where``'s file system for a full disk; the library's own message where there is no errno."""
    if error.errno is None or not error.strerror:
        return str(error)
    reason = error.strerror[:1].lower() + error.strerror[1:]
    if error.errno in (errno.ENOSPC, errno.EDQUOT) and where is not None:
        reason += _free_text(Path(where))
    return reason


def describe_os_error(error: OSError) -> str:
    """``error`` in one line naming its file: ``out/a.mp4: no space left on device (0 B free)``."""
    if error.filename is None:
        return os_reason(error)
    target = Path(os.fsdecode(error.filename))
    return f"{target}: {os_reason(error, target.parent)}"


def _output_error(error: OSError, path: Path) -> OutputError:
    """``error`` as an ``OutputError`` naming ``path`` (errno kept; EIO where there was none)."""
    code = error.errno if error.errno is not None else errno.EIO
    return OutputError(code, f"cannot write {path}: {os_reason(error, path.parent)}")


def check_writable(path: str | os.PathLike, name: str = "output", folder: bool = False) -> None:
    """Raise ``OutputError`` now, before any work, if ``path`` cannot be written.

    ``folder``: ``path`` is an output folder (created if missing), else an output file. Refused: a
    file path that is an existing folder, a folder path that is an existing file, a path under a
    regular file, a folder that cannot be written (permissions or a read-only file system: tried by
    creating and removing a file there, which is what counts, also for root) and a full disk.
    ``name`` is how the message names the path (e.g. "argument -o/--output").
    """
    path = Path(path)
    if not folder and path.is_dir():
        raise OutputError(errno.EISDIR, f"{name}: {path} is a folder; give a file name")
    if folder and path.exists() and not path.is_dir():
        raise OutputError(errno.ENOTDIR, f"{name}: {path} is a file, not a folder")
    existing = path if folder and path.is_dir() else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(errno.ENOTDIR, f"{name}: {path} is under {existing}, which is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=f".lumiere-write-test{_PARTIAL}")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(
            error.errno or errno.EIO, f"{name}: cannot write in {existing}: {os_reason(error, existing)}"
        ) from error
    if shutil.disk_usage(existing).free == 0:
        raise OutputError(errno.ENOSPC, f"{name}: no space left on the device of {existing} (0 B free)")


def _umask() -> int:
    """The process's umask (what ``open`` and ``mkdir`` take off 0o666 / 0o777)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file (or a folder's entries) to the disk."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder (same extension, so writers that pick a format
    by extension keep working); when the block ends without an error, the file is fsynced (with
    ``fsync``) and renamed onto ``path``. On any error the temporary file is removed and an
    ``OSError`` becomes an ``OutputError`` naming ``path`` (errno kept); nothing partial remains.
    The folder is created if missing."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.stem}.", suffix=f"{_PARTIAL}{path.suffix}"
        )
        os.close(handle)
    except OSError as error:
        raise _output_error(error, path) from error
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0o600; outputs are ordinary files
        if fsync:
            fsync_path(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            temporary.unlink()
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            raise _output_error(error, path) from error
        raise


def write_text_atomic(path: str | os.PathLike, text: str, fsync: bool = True) -> Path:
    """``Path(path).write_text(text)`` through ``atomic_write``."""
    with atomic_write(path, fsync=fsync) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def staged_folder(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder beside ``out_dir`` to fill; on success its entries are moved into
    ``out_dir`` (created if missing; same-named entries replaced), on any error it is removed, so a
    data set cut short by a full disk leaves ``out_dir`` as it was."""
    out_dir = Path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=_PARTIAL))
    except OSError as error:
        raise _output_error(error, out_dir) from error
    try:
        yield staging
        if not out_dir.exists():
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0o700
            os.replace(staging, out_dir)
            return
        for entry in sorted(staging.iterdir()):
            os.replace(entry, out_dir / entry.name)
        staging.rmdir()
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and not isinstance(error, OutputError):
            raise _output_error(error, out_dir) from error
        raise

"""Atomic file writes: an artifact is written to a temporary name, then renamed into place.

Every failure of the file system (a read-only disk, a full one, a target that is a folder,
a parent that is a file, no permission) is a :class:`WriteError` naming the path and the
OS's reason, and no temporary file is left behind.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from convspec.specs.errors import ConvspecError
from convspec.specs.readfile import describe_mode

__all__ = ["WriteError", "atomic_write", "atomic_write_bytes", "atomic_write_text", "ensure_folder"]


class WriteError(ConvspecError):
    """A file or folder convspec must write cannot be written: ``PATH: cannot write (REASON)``.

    Attributes:
        path: what was to be written.
        reason: the OS's reason, in words (``read-only file system``, ``no space left on device``).
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(os.fspath(path), reason)  # Why both in args: the error pickles across processes.
        self.path = os.fspath(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: cannot write ({self.reason})"


_REASONS = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "it is a folder",
    errno.ENOTDIR: "a parent is a file, not a folder",
    errno.EEXIST: "a file is in the way of a folder",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EFBIG: "the file is too large for this file system",
}


def os_reason(e: OSError) -> str:
    """An OSError's reason in words (``no space left on device``)."""
    return _REASONS.get(e.errno or 0) or (e.strerror or str(e)).lower()


def ensure_folder(folder: str | os.PathLike) -> Path:
    """``mkdir -p folder`` with a WriteError naming the folder (a parent that is a file, read-only disk...).

    Raises:
        WriteError: the folder cannot be made, or the path is a file.
    """
    folder = Path(folder)
    for above in (folder, *folder.parents):  # name the file in the way, not the folder below it
        if above.exists() or above.is_symlink():
            if not above.is_dir():
                raise WriteError(above, "it is a file, not a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteError(folder, "a parent is a file, not a folder") from None
    except OSError as e:
        raise WriteError(folder, os_reason(e)) from None
    return folder


def _new_file_mode() -> int:
    mask = os.umask(0o022)  # Why set-and-restore: reading the umask has no other portable call
    os.umask(mask)
    return 0o666 & ~mask


_NEW_FILE_MODE = _new_file_mode()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, fsync, then rename to ``path``; nothing half-written survives.

    Why hand-written: it is six lines, and the temp file must sit in the target's folder
    for ``os.replace`` to be atomic.

    Raises:
        WriteError: the target is a folder, its parent cannot be made (a file is in the way,
            read-only disk, no permission), or writing fails (full disk...): the temporary
            file is removed first. Errors that ``write`` raises itself, other than OSError,
            pass through unchanged (after the same clean-up).
    """
    path = Path(path)
    _check_target(path)
    try:
        ensure_folder(path.parent)
    except WriteError as e:  # name the file asked for, and what is in its way
        raise WriteError(path, f"{e.path}: {e.reason}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(path, os_reason(e)) from None
    os.close(fd)
    try:
        # Why: mkstemp makes the file 0600; an artifact gets the mode any new file gets (umask),
        # or keeps the one it had, so a model.onnx can be served by another user.
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = _NEW_FILE_MODE
        os.chmod(tmp, mode)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and not isinstance(e, ConvspecError):
            raise WriteError(path, os_reason(e)) from None
        if isinstance(e, Exception) and not isinstance(e, ConvspecError) and _disk_full(path.parent):
            # Why: torch.save and others report a full disk as RuntimeError("... failed writing file")
            raise WriteError(path, "no space left on device") from None
        raise
    return path


def _check_target(path: Path) -> None:
    """Refuse a target that a rename would destroy rather than write: a folder, a device, a FIFO.

    Why: ``os.replace`` swaps the directory entry, so ``--out /dev/null`` run as root would put
    a regular file in place of the device node for every process on the machine.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing, a dangling link, a parent that is a file: ensure_folder/mkstemp name it
        return
    if stat.S_ISDIR(mode):
        raise WriteError(path, "it is a folder")
    if not stat.S_ISREG(mode):
        raise WriteError(path, f"it is {describe_mode(mode)}, not a regular file; convspec replaces files only")


def _disk_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (see :func:`atomic_write`).

    A file name that is not UTF-8 in ``text`` (a lone surrogate, as Python decodes it) is written
    back as the bytes it was, as the OS would print it.
    """
    return atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))


def json_text(data, *, indent: int | None = None, ensure_ascii: bool = True) -> str:
    """Strict JSON (RFC 8259) of ``data``: NaN and infinities become ``null``, numpy numbers plain ones.

    Why: Python's ``json`` writes ``NaN``, which JavaScript's ``JSON.parse`` and other strict readers
    refuse; an undefined metric (the AUC of a class absent from the test split) is ``null``, as
    ``evaluate --format json`` writes it.
    """
    return json.dumps(_finite(data), indent=indent, ensure_ascii=ensure_ascii, allow_nan=False)


def _finite(x):
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (bool, int, str)) or x is None:
        return x
    if hasattr(x, "tolist") and not isinstance(x, float):  # numpy scalars and arrays
        return _finite(x.tolist())
    try:
        f = float(x)
    except (TypeError, ValueError):
        return str(x)
    return f if math.isfinite(f) else None

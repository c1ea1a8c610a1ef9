"""Reading the user's files safely: regular files only, and never more than a size limit.

Every file convspec reads (spec, CSV, split.json, JSON metadata, images, ONNX models) goes
through this module, so a FIFO, a device such as ``/dev/zero`` or a folder given where a file
belongs is refused at once with a one-line message, and no file is read past its kind's limit.

Torch-free and dependency-free; ``convspec.runtime`` and ``convspec.compiler`` use it too.

Example:
    >>> text = read_text("labels.csv", "csv")          # str, at most LIMITS["csv"] bytes
    >>> with open_regular("cat.png", "image") as f:     # a binary file object, size checked
    ...     header = f.read(8)
    >>> doc = read_json("runs/x/split.json", "split")  # parsed, "is not valid JSON (line 3, ...)"
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any, BinaryIO

from .errors import ConvspecError

__all__ = [
    "LIMITS",
    "FileReadError",
    "check_regular",
    "describe_mode",
    "open_regular",
    "parse_json",
    "read_bytes",
    "read_json",
    "read_text",
]

MB = 1 << 20
# Why these numbers: generous for real files (a 100k-row CSV is ~5 MB, a 24 MP PNG ~40 MB),
# finite so that a mistake cannot read until the kernel kills the process.
LIMITS: dict[str, int] = {
    "spec": 16 * MB,  # the loader's own limit is smaller (yamlio.MAX_BYTES, 1 MB), with a FILE:1:1 message
    "csv": 512 * MB,
    "split": 512 * MB,
    "json": 64 * MB,
    "image": 256 * MB,
    "model": 4096 * MB,
    "checkpoint": 8192 * MB,
    "cache": 1 << 62,  # a decoded data set on disk (data.cache: disk): as large as the data
    "weights": 1 << 62,  # backbone or training.init weights: a large backbone's file is many GB
    "file": 256 * MB,
}
_WHAT = {
    "spec": "a spec file",
    "csv": "a CSV file",
    "split": "a split.json",
    "json": "a JSON file",
    "image": "an image file",
    "model": "an ONNX model",
    "checkpoint": "a checkpoint",
    "cache": "a disk cache file",
    "weights": "a weights file",
    "file": "a file",
}


class FileReadError(ConvspecError):
    """A file that cannot be read: missing, not a regular file, too large, unreadable.

    ``str()`` is ``PATH: REASON`` (``/dev/zero: is a device, not a regular file``). Not an
    OSError on purpose: code catching OSError around a read must not swallow the reason.

    Attributes:
        path: the file as given.
        reason: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(os.fspath(path), reason)  # Why both in args: the error pickles across processes.
        self.path = os.fspath(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def describe_mode(mode: int) -> str:
    """What a non-regular file is, for messages: ``a folder``, ``a FIFO (named pipe)``, ``a device``..."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _limit(kind: str, limit: int | None) -> int:
    return LIMITS.get(kind, LIMITS["file"]) if limit is None else int(limit)


def _mb(n: int) -> str:
    return f"{n / MB:,.0f} MB" if n >= MB else f"{n:,} bytes"


def _check_stat(path: str, st: os.stat_result, kind: str, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        what = describe_mode(st.st_mode)
        raise FileReadError(path, f"is {what}, not a regular file" if what.startswith("a ") else what)
    if st.st_size > limit:
        raise FileReadError(
            path, f"is larger than {_mb(limit)}, the limit for {_WHAT.get(kind, 'a file')} ({st.st_size:,} bytes)"
        )


def check_regular(path: str | os.PathLike, kind: str = "file", limit: int | None = None) -> os.stat_result:
    """Stat ``path`` (following links) and refuse anything but a regular file within the limit.

    Args:
        path: the file.
        kind: a key of :data:`LIMITS` (``spec``, ``csv``, ``split``, ``json``, ``image``, ``model``...).
        limit: bytes; default ``LIMITS[kind]``.

    Returns:
        The ``os.stat_result``.

    Raises:
        FileReadError: missing (``file not found`` / ``broken link``), a folder, FIFO, device or
            socket, larger than the limit, or not accessible.
    """
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        reason = "broken link (target not found)" if os.path.islink(name) else "file not found"
        raise FileReadError(name, reason) from None
    except PermissionError:
        raise FileReadError(name, "permission denied") from None
    except OSError as e:  # ELOOP, ENAMETOOLONG, ENOTDIR ("a/file.txt/x")
        raise FileReadError(name, f"cannot read ({e.strerror or e})") from None
    _check_stat(name, st, kind, _limit(kind, limit))
    return st


def open_regular(path: str | os.PathLike, kind: str = "file", limit: int | None = None) -> BinaryIO:
    """Open a regular file for binary reading, after :func:`check_regular`; the caller closes it.

    Why O_NONBLOCK and an fstat after opening: a FIFO put in the file's place between the
    stat and the open must not block ``open`` (it would wait for a writer forever).

    Raises:
        FileReadError: as :func:`check_regular`.
    """
    name = os.fspath(path)
    lim = _limit(kind, limit)
    check_regular(name, kind, lim)
    try:
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        raise FileReadError(name, "permission denied") from None
    except OSError as e:
        raise FileReadError(name, f"cannot read ({e.strerror or e})") from None
    try:
        _check_stat(name, os.fstat(fd), kind, lim)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, kind: str = "file", limit: int | None = None) -> bytes:
    """The whole file, at most ``limit`` bytes (default ``LIMITS[kind]``).

    Raises:
        FileReadError: as :func:`check_regular`, or the file grew past the limit while read.
    """
    lim = _limit(kind, limit)
    with open_regular(path, kind, lim) as f:
        try:
            data = f.read(lim + 1)  # Why +1: a file whose size the OS misreports (/proc) still stops
        except OSError as e:
            raise FileReadError(os.fspath(path), f"cannot read ({e.strerror or e})") from None
    if len(data) > lim:
        raise FileReadError(os.fspath(path), f"is larger than {_mb(lim)}, the limit for {_WHAT.get(kind, 'a file')}")
    return data


def read_text(path: str | os.PathLike, kind: str = "file", limit: int | None = None, encoding: str = "utf-8") -> str:
    """The whole file as text (``utf-8`` by default; ``utf-8-sig`` drops a byte-order mark).

    Raises:
        FileReadError: as :func:`read_bytes`, or the bytes are not text in ``encoding``
            (``is not UTF-8 text (byte 0xff at offset 12)``).
    """
    data = read_bytes(path, kind, limit)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        label = "UTF-8" if encoding.lower().replace("_", "-").startswith("utf-8") else encoding
        raise FileReadError(
            os.fspath(path), f"is not {label} text (byte 0x{data[e.start]:02x} at offset {e.start})"
        ) from None


def parse_json(text: str | bytes) -> Any:
    """``json.loads``, with nesting past the recursion limit a ``ValueError`` like any other bad JSON.

    Why: ``[[[...]]]`` 100,000 deep raises RecursionError, which readers catching ValueError
    (every malformed-JSON handler) let through as a traceback.
    """
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_json(path: str | os.PathLike, kind: str = "json", limit: int | None = None) -> Any:
    """The file parsed as JSON (UTF-8), within the size limit of ``kind`` (``split`` for split.json).

    Raises:
        FileReadError: as :func:`read_text`, or not JSON (``is not valid JSON (line 3, column 7: ...)``).
    """
    text = read_text(path, kind, limit)
    try:
        return parse_json(text)
    except json.JSONDecodeError as e:
        raise FileReadError(
            os.fspath(path), f"is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    except ValueError as e:
        raise FileReadError(os.fspath(path), f"is not valid JSON ({e})") from None

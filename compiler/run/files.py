"""Writing into a run folder (or any output folder): OS errors become one line naming the path.

A full disk, a read-only folder, a file where a folder should be (or the reverse) are the
user's environment, not bugs: they end as a :class:`WriteError` (exit 1) naming the path and
the reason, and the atomic writers leave nothing half-written. Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from convspec.runtime.files import WriteError as RuntimeWriteError
from convspec.specs import ConvspecError

MARKER = ".convspec-run"  # in every run folder (and tune folder): data listing skips such folders


class WriteError(RuntimeWriteError):
    """An output that cannot be written: read-only, full disk, a folder in the way, ...

    A :class:`convspec.runtime.files.WriteError` (the writers' own) with a whole message, so
    that one ``except`` catches both.
    """

    def __init__(self, message: str):
        ConvspecError.__init__(self, message)
        self.path, self.reason = "", message

    def __str__(self) -> str:
        return self.args[0]


_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space and run it again",
    errno.EDQUOT: "disk quota exceeded; free some space and run it again",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "it is a folder (remove it or choose another path)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file is in the way of a folder",
}


def describe(e: OSError) -> str:
    """A short reason for an OS error: the hint for its errno, else its strerror."""
    return _HINTS.get(e.errno or 0) or e.strerror or type(e).__name__


def write_error(path: str | os.PathLike, e: OSError, what: str = "") -> WriteError:
    """The one-line error for failing to write ``path``; ``what`` names it (e.g. "the checkpoint")."""
    if isinstance(e, WriteError):
        return e
    return WriteError(f"{path}: cannot write{' ' + what if what else ''}: {describe(e)}")


@contextlib.contextmanager
def writing(path: str | os.PathLike, what: str = "") -> Iterator[None]:
    """Turn an OSError raised while writing ``path`` into a :class:`WriteError` naming it."""
    try:
        yield
    except ConvspecError:
        raise
    except OSError as e:
        raise write_error(path, e, what) from None


def check_output_folder(folder: str | os.PathLike, what: str) -> None:
    """Refuse, before any work, an output folder that cannot be created or written.

    ``folder`` may not exist yet: then its nearest existing ancestor must be a writable folder.
    Nothing is created (a probe file is made and removed at once). ``what`` names the option
    (e.g. "--out").

    Raises:
        WriteError: ``folder`` (or an ancestor) is a file, or the folder is not writable.
    """
    folder = Path(folder)
    probe = folder
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        kind = "a file" if probe.is_file() else "a broken link" if not probe.exists() else "a device or pipe"
        where = f"{folder}" if probe == folder else f"{folder} (its parent {probe})"
        raise WriteError(f"{what} {where}: is {kind}, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".convspec-probe.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise WriteError(f"{what} {folder}: cannot write in {probe}: {describe(e)}") from None


def listed_data_root(spec) -> Path | None:
    """The folder whose listing is the data (a folder source's path); None for CSV and builtin data.

    Why not a CSV's root: a CSV names its files row by row, so a run folder beside them is never
    read as data; only a listed folder would pick up a run's plots as images.
    """
    src = spec.data.source
    return Path(src.path) if src.type == "folder" else None


def check_run_out(out: str | os.PathLike, spec, *, allow_in_data: bool = False, what: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be written or lies inside the data.

    A run folder inside a folder source's ``path`` would be listed as data by the next run (its
    plots as a class named ``runs``); ``allow_in_data`` (``--allow-out-in-data``) permits it, and
    the run folder's ``.convspec-run`` marker then keeps data listing away from it.

    Raises:
        WriteError: ``out`` is a file, not writable, or inside the data root (unless allowed).
    """
    check_output_folder(out, what)
    root = listed_data_root(spec)
    if root is None or allow_in_data:
        return
    where, inside = Path(os.path.realpath(out)), Path(os.path.realpath(root))
    if where == inside or inside in where.parents:
        raise WriteError(
            f"{what} {out}: inside the data folder {root} (data.source), where the next run would read its "
            "plots as images; give an --out outside the data, or pass --allow-out-in-data"
        )

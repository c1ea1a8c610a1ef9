"""Decoding a data set's files into one uint8 ``(N, C, H, W)`` array, through the cache.

Each image is decoded by the runtime's loader (:mod:`convspec.runtime.images`), on threads;
:func:`decode_files` says which files failed. No torch here.

Caching (``data.cache``):

- ``memory``: decoded into RAM; also kept for the rest of the process (one data set at a
  time), so repeated loads of the same data (tuning trials) decode nothing.
- ``disk``: decoded once into ``<cache_dir>/images/<key>.npy`` and opened later with
  ``np.load(mmap_mode="r")``: pages come from the OS page cache, RAM is not needed for the
  whole set. ``cache_dir`` defaults to ``$CONVSPEC_CACHE`` or ``~/.cache/convspec``. The key
  hashes the file list with each file's size and mtime, the channels, size, resize and bits_stored, and
  the loader's and Pillow's versions: a changed, added or removed file misses the cache.
- ``auto``: ``memory`` when the decoded array is under 2 GiB, else ``disk``.
- ``none``: decoded into RAM for this call only; nothing is kept or written.

Builtin data sets (``digits``) are built in RAM whatever the mode: there is no file to decode.
The disk cache is never pruned (a changed file makes a new entry); writing an entry says how much
the others hold, so that stale copies are found before they fill the disk. A cache folder that
cannot be written (read-only, full) is not an error: a warning says so and the images are
decoded into memory instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from convspec.runtime.datasets import DataError
from convspec.runtime.files import WriteError, atomic_write, atomic_write_text
from convspec.runtime.images import ImageError, decode_into
from convspec.specs.readfile import FileReadError, check_regular, read_json

from .memory import available_bytes, gib

AUTO_MEMORY_LIMIT = 2 << 30  # bytes: ``cache: auto`` keeps smaller data sets in RAM
# Bump when decoding or resizing changes the pixels: old disk caches then miss.
# 2: grey models decode a JPEG's luma plane (draft "L"); pixels moved by <= 1 level.
# 3: JPEGs larger than needed decode at M/8 scale (libjpeg-turbo's scaled IDCT), not 1/2, 1/4, 1/8.
# 4: a letterbox's content box follows the file's own aspect, not a scaled decode's rounded one.
# 5: float images up to 2 (not 1) are on the 0..1 scale (modes.FLOAT_UNIT_TOP).
LOADER_VERSION = 5

Log = Callable[[str], None]


def default_cache_dir() -> Path:
    """``$CONVSPEC_CACHE``, else ``~/.cache/convspec``."""
    return Path(os.environ.get("CONVSPEC_CACHE") or Path.home() / ".cache" / "convspec")


_MEMO_LOCK = threading.Lock()
_MEMO: dict[str, tuple[np.ndarray, list[int], list[tuple[str, str]]]] = {}


def _cache_key(files: list[str], channels: int, size: tuple[int, int], resize: str, bits_stored: int) -> str:
    """Hash of everything the decoded array depends on (file identity by size and mtime)."""
    import PIL

    h = hashlib.sha256()
    h.update(json.dumps([LOADER_VERSION, PIL.__version__, channels, list(size), resize, bits_stored]).encode())
    for f in files:
        try:
            st = os.stat(f)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\n{os.path.abspath(f)}\0{stamp}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:32]


def decode_files(files, channels, size, resize, *, bits_stored, mode, cache_dir, on_error, log, progress, workers):
    """Decode through the cache ``mode``. Returns ``(images, kept, bad)`` as :func:`load_images`."""
    n = len(files)
    nbytes = n * channels * size[0] * size[1]
    asked, disk_unusable, room = mode, False, available_bytes()
    if mode == "auto":
        mode = "memory" if nbytes < AUTO_MEMORY_LIMIT and (room is None or 2 * nbytes <= room) else "disk"  # 2x: margin
    key = _cache_key(files, channels, size, resize, bits_stored) if mode in ("memory", "disk") else ""

    def finish(result):
        images, kept, bad = result
        if on_error == "error" and bad:
            raise ImageError(*bad[0])
        return result

    if mode == "memory":
        with _MEMO_LOCK:
            hit = _MEMO.get(key)
        if hit is not None:
            log(f"data: {len(hit[1])} decoded images from memory")
            return finish(hit)
    if mode == "disk":
        folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        hit = _disk_read(folder / "images", key, (channels, *size))
        if hit is not None:
            log(f"data: {len(hit[1])} decoded images from the disk cache {folder / 'images' / key}.npy")
            return finish(hit)
        result = _disk_write(
            folder / "images",
            key,
            files,
            channels,
            size,
            resize,
            nbytes,
            bits_stored=bits_stored,
            on_error=on_error,
            log=log,
            progress=progress,
            workers=workers,
        )
        if result is not None:
            return finish(result)
        mode, disk_unusable = "memory", True  # already warned

    _check_room(nbytes, room, n, channels, size, asked, log, disk_unusable=disk_unusable)
    t0 = time.perf_counter()
    log(f"data: decoding {n} images to {channels}x{size[0]}x{size[1]}")
    out = np.empty((n, channels, *size), np.uint8)  # (N, C, H, W)
    bad = _decode_rows(files, out, channels, size, resize, bits_stored, on_error, workers, progress)
    kept = _kept(n, bad)
    images = out if not bad else _compact(out, kept)
    images.flags.writeable = False
    log(f"data: decoded in {time.perf_counter() - t0:.1f} s")
    result = (images, kept, [(p, r) for _, p, r in bad])
    if mode == "memory":
        with _MEMO_LOCK:
            _MEMO.clear()  # Why one entry: a second data set must not double the RAM held
            _MEMO[key] = result
    return result


def _check_room(
    nbytes: int, room: int | None, n: int, channels: int, size, mode: str, log: Log, *, disk_unusable: bool
) -> None:
    """Refuse an in-RAM decode that cannot fit, and warn of one that leaves training little room.

    One message now rather than the kernel's kill later. The warning's margin is what training
    held beside a 0.56 GiB cache at 224 px, batch 64 (batches, the model, evaluation, the test
    split's copy, torch._dynamo): about 0.5 GiB, killed under a cgroup limit that left 0.8 GiB.
    """
    if room is None:
        return
    what = f"{n:,} images of {channels}x{size[0]}x{size[1]} uint8 need {gib(nbytes)} of RAM"
    where = f"{gib(room)} is available (free memory, or the cgroup's limit)"
    fix = "use data.cache: disk (a memmap, read from disk as it trains) or a smaller input.size"
    if nbytes > room:
        why = "the disk cache is unusable (see the warning above), and " if disk_unusable else ""
        raise DataError(f"data.cache: {mode}: {why}{what}, and {where}: {fix}")
    if nbytes + max(nbytes // 2, 512 << 20) > room:
        log(f"warning: data.cache: {mode}: {what} and {where}: training may run out of memory; {fix}")


def _disk_read(folder: Path, key: str, chw: tuple[int, int, int]):
    npy, meta = folder / f"{key}.npy", folder / f"{key}.json"
    try:
        info = read_json(meta, "json")
        check_regular(npy, "cache")  # Why: np.load opens a FIFO put in its place and waits for a writer forever
        images = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, FileReadError):  # a miss: decoded again, and the entry replaced
        return None
    try:
        bad = [(int(i), str(p), str(r)) for i, p, r in info["bad"]]
        kept = _kept(int(info["count"]), bad)
    except (KeyError, TypeError, ValueError):
        return None
    if info.get("version") != LOADER_VERSION or images.shape != (len(kept), *chw):
        return None
    return images, kept, [(p, r) for _, p, r in bad]


def _decode_rows(files, out, channels, size, resize, bits_stored, on_error, workers, progress):
    """:func:`decode_into` with the loader's settings, counting progress."""
    return decode_into(
        files, out, channels, size, resize, bits_stored=bits_stored, workers=workers, on_error=on_error,
        progress=_counter(progress, len(files)),
    )  # fmt: skip


def _disk_write(
    folder: Path, key, files, channels, size, resize, nbytes, *, bits_stored, on_error, log, progress, workers
):
    """Decode straight into a memmap under ``folder``; None (after a warning) when it cannot."""
    n = len(files)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
    except OSError as e:
        log(f"warning: cannot use the disk cache in {folder} ({e.strerror or e}); keeping images in memory")
        return None
    _remove_killed_decodes(folder, log)
    others, others_bytes = _other_entries(folder, key)
    stale = (
        f"; {others} other cached data sets there hold {others_bytes / 2**30:.2f} GiB "
        "(never pruned: delete the ones you no longer train on)"
        if others
        else ""
    )
    # Why check: a memmap on a full disk dies with SIGBUS, not an exception.
    need = 2 * nbytes + (64 << 20)  # the entry, a compacted copy when files fail to decode, and a margin
    if free < need:
        log(
            f"warning: not enough free space in {folder} for the disk cache "
            f"({gib(need)} needed, {gib(free)} free){stale}; keeping images in memory"
        )
        return None
    t0 = time.perf_counter()
    log(f"data: decoding {n} images to {channels}x{size[0]}x{size[1]} into the disk cache {folder / key}.npy")
    full, lock = "", -1
    try:
        for entry in (folder / f"{key}.npy", folder / f"{key}.json"):
            if os.path.lexists(entry) and (entry.is_symlink() or not entry.is_file()):
                os.unlink(entry)  # a FIFO or a link in the cache's own folder: atomic_write replaces files only
        lock, full = _locked_temp(folder, key)
        mm = np.lib.format.open_memmap(full, mode="w+", dtype=np.uint8, shape=(n, channels, *size))
        _reserve(full)
        bad = _decode_rows(files, mm, channels, size, resize, bits_stored, on_error, workers, progress)
        mm.flush()
        kept = _kept(n, bad)
        if bad:  # write only the good rows, in chunks (never the whole set in RAM)

            def write(tmp: str, src: np.ndarray = mm) -> None:
                dst = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(kept), channels, *size))
                _reserve(tmp)
                step = max(1, (64 << 20) // max(1, channels * size[0] * size[1]))
                for j in range(0, len(kept), step):
                    dst[j : j + step] = src[kept[j : j + step]]
                dst.flush()
                del dst

            atomic_write(folder / f"{key}.npy", write)
        else:

            def move(tmp: str) -> None:
                os.chmod(full, os.stat(tmp).st_mode & 0o7777)  # the mode atomic_write gives (mkstemp's is 0600)
                os.replace(full, tmp)

            atomic_write(folder / f"{key}.npy", move)
        del mm
        info = {"version": LOADER_VERSION, "count": n, "bad": [[i, p, r] for i, p, r in bad]}
        atomic_write_text(folder / f"{key}.json", json.dumps(info))  # written last: marks the entry complete
    except (OSError, WriteError) as e:  # a read-only or full cache folder: the cache is an optimisation
        reason = e.reason if isinstance(e, WriteError) else e.strerror or e
        if not os.path.lexists(folder / f"{key}.json"):  # Why: a data-set-sized .npy nothing will read
            with contextlib.suppress(OSError):
                os.unlink(folder / f"{key}.npy")
        log(f"warning: cannot write the disk cache in {folder} ({reason}); keeping images in memory")
        return None
    finally:
        if full and os.path.exists(full):
            os.unlink(full)
        if lock >= 0:
            os.close(lock)
    log(f"data: decoded in {time.perf_counter() - t0:.1f} s")
    if others:
        log(f"data: disk cache written{stale}")
    return _disk_read(folder, key, (channels, *size))


def _locked_temp(folder: Path, key: str) -> tuple[int, str]:
    """A new ``.KEY.*.full.tmp`` in ``folder`` and an open descriptor holding an flock on it until
    the decode ends: a file nobody holds is a killed decode's (:func:`_remove_killed_decodes`)."""
    while True:
        fd, path = tempfile.mkstemp(prefix=f".{key}.", suffix=".full.tmp", dir=folder)
        if fcntl is None:
            return fd, path
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                return fd, path
        os.close(fd)  # another run's clean-up took it between mkstemp and the lock: make another


def _remove_killed_decodes(folder: Path, log) -> None:
    """Delete the temp files of decodes that were killed (SIGKILL, the OOM killer): each holds a
    whole data set's pixels, and the next run decodes into a new one. A file that can be locked
    has no live writer; one that is locked is a decode running now, in this or another process."""
    if fcntl is None:  # Windows: they are counted with the other entries instead
        return
    count = freed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if not (entry.name.startswith(".") and entry.name.endswith(".full.tmp")):
                continue
            try:  # Why non-blocking: a FIFO put here under that name would hang the open
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue  # not a decode's file: not ours to delete
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                size = os.fstat(fd).st_size
                os.unlink(entry.path)
                count, freed = count + 1, freed + size
            except OSError:
                pass  # held: a decode in progress
            finally:
                os.close(fd)
    if count:
        log(f"data: removed {count} temp file(s) of killed decodes from {folder} ({gib(freed)})")


def _reserve(path: str) -> None:
    """Allocate a memmap file's blocks before writing into it.

    Why: the file is sparse, and a write into it once the disk has filled (another run sharing the
    cache) dies with SIGBUS; reserving fails with ENOSPC instead, which falls back to memory.
    """
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _other_entries(folder: Path, key: str) -> tuple[int, int]:
    """How many cache entries besides ``key``'s ``folder`` holds, and their bytes (a changed file
    makes a new entry, so a data set edited five times leaves four old copies of its pixels; a
    killed decode leaves its ``.KEY.*.full.tmp``, counted too)."""
    count = total = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            ours = entry.name.startswith((key, f".{key}."))
            if (
                entry.name.endswith(".npy") and not entry.name.startswith(".") or entry.name.endswith(".full.tmp")
            ) and not ours:
                with contextlib.suppress(OSError):
                    total += entry.stat(follow_symlinks=False).st_size
                    count += 1
    return count, total


def _compact(out: np.ndarray, kept: list[int]) -> np.ndarray:
    """``out[kept]`` without a second array: good rows moved up in place (``kept`` is increasing).

    Why: ``out[kept]`` would hold two copies of the cache at once (peak RSS 2x the cache).
    """
    for j, i in enumerate(kept):
        if i != j:
            out[j] = out[i]
    return out[: len(kept)]


def _kept(n: int, bad) -> list[int]:
    skipped = {i for i, _, _ in bad}
    return [i for i in range(n) if i not in skipped]


def _counter(progress, total: int):
    """Adapt ``progress(done, total)`` to the loader's ``progress(advance)``, thread-safely."""
    if progress is None:
        return None
    lock, done = threading.Lock(), [0]

    def advance(k: int) -> None:
        with lock:
            done[0] += k
            progress(done[0], total)

    return advance

"""Opening image files safely: which files are images, the pixel and byte limits, the decode budget
shared by every thread, and Pillow's errors as one-line reasons (:class:`ImageError`).

Torch-free. :mod:`.images` decodes what this module opens.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from convspec.specs.errors import ConvspecError
from convspec.specs.readfile import FileReadError, open_regular

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

# Pillow format names we accept. MPO is how Pillow names many camera JPEGs.
FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "TIFF", "WEBP")


class DecodeBudget:
    """Bytes of decoded images in flight across every thread of the process.

    A decode waits while others hold more than ``limit`` bytes; one image larger than the
    limit runs alone. Why in the loader, not in each pool: training's decode pool, the
    Predictor's and a server's request threads all decode through :func:`load_image`, so one
    budget bounds them all, whatever their thread counts.

    Args:
        limit: bytes; default ``CONVSPEC_DECODE_MB`` (MB) from the environment, else 1024 MB.
    """

    def __init__(self, limit: int | None = None):
        if limit is None:
            limit = int(float(os.environ.get("CONVSPEC_DECODE_MB", "1024")) * (1 << 20))
        self.limit = max(1, int(limit))
        self.in_flight = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, nbytes: int):
        """Wait until ``nbytes`` fit (or nothing else is in flight), hold them for the block."""
        with self._cond:
            while self.in_flight and self.in_flight + nbytes > self.limit:
                self._cond.wait()
            self.in_flight += nbytes
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= nbytes
                self._cond.notify_all()


DECODE_BUDGET = DecodeBudget()

# Why 64 MB blocks: Pillow allocates large images in blocks (16 MB by default); glibc serves
# blocks under its 32 MB mmap ceiling from per-thread arenas and keeps them after a free, so
# every decode thread kept its largest image's worth (three 9400x9400 PNGs one after another:
# 527 MB, against 375 MB with 64 MB blocks, which are mmapped and given back when freed).
# Small images are unaffected (one block of their own size). PILLOW_BLOCK_SIZE still wins.
if "PILLOW_BLOCK_SIZE" not in os.environ:
    with contextlib.suppress(AttributeError, ValueError):
        Image.core.set_block_size(64 << 20)

_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "RGB": 3}


def decoded_bytes(im: Image.Image) -> int:
    """About how much memory decoding and converting ``im`` takes (its size after any draft)."""
    per = _BYTES_PER_PIXEL.get(im.mode, 4)  # RGBA, CMYK, I, F, ...: 4 bytes a pixel
    # Why + 3: the decoded image plus its 8-bit RGB copy (strip conversion keeps no other).
    return im.width * im.height * (per + 3)


# Why a lock: the DecompressionBombWarning -> error filter needs ``warnings.catch_warnings``,
# which swaps a process-global list and is not thread-safe. Only ``Image.open`` (header
# parsing, microseconds) runs under it; decoding and resizing run in parallel.
OPEN_LOCK = threading.Lock()


class ImageError(ConvspecError):
    """An image that cannot be used: ``path: reason`` (``images/cat/3.png: cannot decode image (truncated file)``).

    Attributes:
        path: the file as given (``"<array>"`` for in-memory arrays).
        reason: what is wrong with it.
    """

    def __init__(self, path: str, reason: str):
        super().__init__(path, reason)  # Why both in args: the error pickles across processes.
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class ImageTooLarge(ImageError):
    """An image over the pixel limit (``Image.MAX_IMAGE_PIXELS``): a decompression bomb, or just too big."""


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether the name has an image extension (case-insensitive). Says nothing about the content."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def open_regular_image(name: str) -> BinaryIO:
    """The file opened by :func:`convspec.specs.readfile.open_regular`: a FIFO, a device or a
    folder is refused before anything is read, and a file over ``LIMITS["image"]`` bytes too."""
    try:
        return open_regular(name, "image")
    except FileReadError as e:
        reason = "is a folder, not an image file" if e.reason == "is a folder, not a regular file" else e.reason
        raise ImageError(name, reason) from None


@contextlib.contextmanager
def bomb_warning_as_error():
    """Pillow's DecompressionBombWarning raised, the other warnings recorded (yielded)."""
    with OPEN_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield caught


def open_with_pillow(name: str, fp: BinaryIO, quiet: bool) -> Image.Image:
    """``Image.open`` with the pixel limit as :class:`ImageTooLarge` and Pillow's errors as reasons.

    ``quiet``: the header is known to be within the limit, so Pillow's bomb warning cannot
    fire. Why it matters: the warning filter is process-wide, so it is set under a lock, and
    under that lock two decode threads queued on each other (8,400 opens/s, one thread: 23,000).
    """
    limit = Image.MAX_IMAGE_PIXELS
    fp.seek(0)
    try:
        with contextlib.nullcontext([]) if quiet else bomb_warning_as_error() as caught:
            im = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        pixels = m.group(1) if m else "?"
        raise ImageTooLarge(name, f"image is too large: {pixels} pixels, limit {limit}") from None
    except UnidentifiedImageError:
        fp.seek(0)
        if fp.read(4) in (b"II*\0", b"MM\0*"):  # Why: "not an image" misled about a float64 or 12-bit TIFF
            raise ImageError(
                name, "a TIFF whose sample format, bit depth or compression Pillow cannot read (e.g. 64-bit float)"
            ) from None
        hint = "; ".join(str(w.message) for w in caught if "opening failed" not in str(w.message))
        raise ImageError(name, "not an image (unrecognised format" + (f": {hint}" if hint else "") + ")") from None
    except PermissionError:
        raise ImageError(name, "permission denied") from None
    except Exception as e:
        raise ImageError(name, f"cannot decode image ({short_reason(e)})") from None
    if im.format not in FORMATS:
        im.close()
        raise ImageError(name, f"unsupported image format {im.format} (supported: PNG, JPEG, BMP, GIF, TIFF, WebP)")
    if limit is not None and im.width * im.height > limit:  # Why: plugins with error_only checks
        im.close()
        raise ImageTooLarge(name, f"image is too large: {im.width * im.height} pixels, limit {limit}")
    return im


def decode_reason(e: Exception) -> str:
    text = str(e)
    if "truncated" in text.lower() or isinstance(e, EOFError):
        return "cannot decode image (truncated file)"
    return f"cannot decode image ({short_reason(e)})"


def short_reason(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]

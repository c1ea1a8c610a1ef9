"""The one image loader: decode, orient, convert channels, resize. Training and serving both use it.

Torch-free (numpy, Pillow, simplejpeg). Every image a model sees, in training or in deployment, comes
through :func:`load_image` (files) or :func:`prepare_array` (arrays), so what a model was
trained on and what it is served are the same pixels by construction. Opening a file within its
limits is :mod:`.image_files`'s; orientation and the resize modes are :mod:`.resize`'s.

Pipeline of one image, in order:

1. decode fully (a truncated, empty or non-image file is an :class:`ImageError`, never
   silently used, as long as ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` stays False): JPEGs
   with libjpeg-turbo through :mod:`.jpeg`, the rest (and CMYK JPEGs) with Pillow;
   only PNG, JPEG (and MPO), BMP, GIF, TIFF and WebP are accepted; animated GIF / WebP /
   PNG and multi-page TIFF give their first frame;
2. apply the EXIF orientation (phone photos are stored sideways with a rotate tag);
3. convert the mode to 8-bit (:mod:`.modes`): 16-bit grey ('I;16', 'I') is scaled by 255/65535 (by
   255/(2**bits_stored - 1) for images that use only the low ``bits_stored`` bits, as 12-bit
   X-rays do; values above clip), float 'F'
   from [0, 1] (or clipped to [0, 255] when its values exceed 2: see modes.FLOAT_UNIT_TOP), CMYK / YCbCr / LAB / HSV
   go to RGB, and anything with transparency (RGBA, LA, PA, P or L or RGB with a
   ``transparency`` entry) is composited onto **black**;
4. convert to 'L' (``channels=1``, ITU-R 601-2 luma: L = 0.299 R + 0.587 G + 0.114 B) or
   'RGB' (``channels=3``; grey is replicated);
5. resize to ``size = (height, width)`` with **bilinear** filtering (Pillow's, which widens
   its kernel when shrinking, so downscaling is anti-aliased like an area filter) by
   ``resize``: ``stretch`` (ignore aspect), ``letterbox`` (keep aspect, pad with 0,
   centered), ``crop`` (scale the shorter side to fit, center crop). A JPEG larger than the
   size needed is first decoded at the smallest M/8 scale (M = 1..8) that keeps that size,
   by libjpeg-turbo's scaled IDCT (:mod:`.jpeg`): 224 px from 256 px about 3x faster than a
   full decode and resize, within a grey level or two of it, and the same in training and
   serving.

Why black behind transparency: torchvision's and Keras' loaders drop the alpha channel
(``convert("RGB")``), which shows black for the usual fully transparent (0, 0, 0, 0) pixels;
compositing onto black agrees with them there and is also right for partly transparent
pixels and for transparent pixels that hold leftover colour.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image

from . import jpeg
from .image_files import (
    DECODE_BUDGET,
    IMAGE_EXTENSIONS,
    ImageError,
    ImageTooLarge,
    decode_reason,
    decoded_bytes,
    is_image_file,
    open_regular_image,
    open_with_pillow,
)
from .modes import convert_in_strips, scale16, to_mode
from .resize import TRANSPOSE, check_args, chw, draft, exif_orientation, needed_size, resize_image

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageError",
    "ImageTooLarge",
    "decode_into",
    "is_image_file",
    "load_image",
    "load_image_bytes",
    "load_images",
    "open_image_bytes",
    "OpenedImage",
    "prepare_array",
    "sample_pixels",
    "SampledPixels",
]

# Images above this many pixels are converted to 8 bits a strip of rows at a time (the same
# pixels as in one go; see modes.convert_in_strips).
STREAM_PIXELS = 1 << 22
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


# ------------------------------------------------------------------ decoding


def load_image(
    path: str | os.PathLike,
    channels: int,
    size: Sequence[int],
    resize: str = "stretch",
    *,
    bits_stored: int = 16,
) -> np.ndarray:
    """Decode one image file into the uint8 pixels a model takes.

    Args:
        path: an image file (PNG, JPEG, BMP, GIF, TIFF or WebP; the content decides, not the name).
        channels: 1 (grey) or 3 (RGB).
        size: ``(height, width)`` of the result.
        resize: ``stretch``, ``letterbox`` or ``crop`` (see the module docstring).
        bits_stored: 16-bit grey pixels hold values up to ``2**bits_stored - 1`` (8..16).

    Returns:
        uint8 array of shape ``(channels, height, width)``.

    Raises:
        ImageError: the file is missing, empty, not an image, truncated, too large
            (``Image.MAX_IMAGE_PIXELS``) or in a format outside the list above.
    """
    check_args(channels, size, resize, bits_stored)
    return _open(os.fspath(path)).decode(channels, size, resize, bits_stored=bits_stored)


def load_image_bytes(
    data: bytes,
    name: str,
    channels: int,
    size: Sequence[int],
    resize: str = "stretch",
    *,
    bits_stored: int = 16,
) -> np.ndarray:
    """Decode an encoded image held in memory (an upload) exactly as :func:`load_image` decodes a file.

    Args:
        data: the encoded file's bytes.
        name: how errors name it (an upload's file name, ``"body"``).
        channels, size, resize, bits_stored: as :func:`load_image`.

    Raises:
        ImageError: as :func:`load_image` (:class:`ImageTooLarge` over the pixel limit).
    """
    check_args(channels, size, resize, bits_stored)
    return open_image_bytes(data, name).decode(channels, size, resize, bits_stored=bits_stored)


class OpenedImage:
    """An image whose header is read (format and size known, the pixel limit checked), not yet decoded.

    :meth:`decode` decodes it exactly as :func:`load_image` would, once, and closes it. A plain
    JPEG (grey or colour, no EXIF or XMP segment that could turn it) is read by libjpeg-turbo
    alone (:mod:`.jpeg`); every other image is opened by Pillow.
    """

    def __init__(self, name: str, fp: BinaryIO, im: Image.Image | None = None, header: jpeg.Header | None = None):
        self.name, self._fp, self._im, self._header = name, fp, im, header

    @property
    def pixels(self) -> int:
        """Width x height as stored (before any scaled decoding)."""
        return self._header.pixels if self._im is None else self._im.width * self._im.height

    def decode(
        self, channels: int, size: Sequence[int], resize: str = "stretch", *, bits_stored: int = 16
    ) -> np.ndarray:
        """``(C, H, W)`` uint8, as :func:`load_image`; raises ImageError as it does."""
        check_args(channels, size, resize, bits_stored)
        h, w = int(size[0]), int(size[1])
        try:
            if self._im is None:
                grey = channels == 1 or self._header.colorspace == "Gray"
                need = needed_size(self._header.size, h, w, resize, 1)
                a = _jpeg_pixels(self._fp, self._header.size, need, grey, self._header)
                if a is not None:
                    return _array_to_model(
                        self.name, a, 1, channels, (h, w), resize, bits_stored, stored=self._header.size
                    )
                # Why Pillow now: libjpeg-turbo refused or warned (a cut-short or corrupt file);
                # Pillow decodes what it can, or names what is wrong, as for every other image
                self._im = open_with_pillow(self.name, self._fp, quiet=True)
                return _decode_with_pillow(self.name, self._im, self._fp, channels, (h, w), resize, bits_stored)
            return _decode_opened(self.name, self._im, self._fp, channels, (h, w), resize, bits_stored)
        finally:
            if self._im is not None:
                self._im.close()
            self._fp.close()


def open_image_bytes(data: bytes, name: str) -> OpenedImage:
    """Read an encoded image's header only (cheap): an :class:`OpenedImage` to decode, or an ImageError.

    Raises:
        ImageError: empty, not an image, or an unsupported format (:class:`ImageTooLarge` over
            the pixel limit); a truncated file fails later, in :meth:`OpenedImage.decode`.
    """
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    return _open_fp(name, io.BytesIO(data))


def _decode_opened(
    name: str, im: Image.Image, fp, channels: int, size: tuple[int, int], resize: str, bits_stored: int
) -> np.ndarray:
    """An image Pillow opened -> ``(C, H, W)`` uint8; a JPEG's pixels still come from libjpeg-turbo."""
    if im.format in ("JPEG", "MPO") and im.mode in ("L", "RGB"):
        orientation = exif_orientation(im)
        need = needed_size(im.size, size[0], size[1], resize, orientation)
        a = _jpeg_pixels(fp, im.size, need, channels == 1 or im.mode == "L")
        if a is not None:
            return _array_to_model(name, a, orientation, channels, size, resize, bits_stored, stored=im.size)
    return _decode_with_pillow(name, im, fp, channels, size, resize, bits_stored)


def _jpeg_pixels(
    fp, stored: tuple[int, int], need: tuple[int, int], grey: bool, header: jpeg.Header | None = None
) -> np.ndarray | None:
    """:func:`jpeg.decode` within the decode budget."""
    w, h = jpeg.scaled_size(stored, need)
    with DECODE_BUDGET.hold(w * h * 6):  # Why 6: the decoded RGB and its converted copy
        return jpeg.decode(fp, stored, need, grey, header)


def _array_to_model(
    name: str,
    a: np.ndarray,
    orientation: int,
    channels: int,
    size: tuple[int, int],
    resize: str,
    bits_stored: int,
    stored: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decoded ``(H, W)`` grey or ``(H, W, 3)`` RGB pixels -> upright, converted, resized ``(C, H, W)``
    (``stored``: the file's own ``(width, height)`` when ``a`` was decoded at a smaller scale)."""
    if orientation == 1 and a.shape[:2] == size and (a.ndim == 2) == (channels == 1):
        return chw(a)  # Why no Pillow image: nothing left to do but the layout
    return _orient_and_finish(name, orientation, channels, size, resize, bits_stored, Image.fromarray(a), stored)


def _decode_with_pillow(
    name: str, im: Image.Image, fp, channels: int, size: tuple[int, int], resize: str, bits_stored: int
) -> np.ndarray:
    """Pillow's own decode (a JPEG at its 1/2, 1/4, 1/8 draft scales), orientation, mode, resize."""
    stored = im.size
    if im.format in ("JPEG", "MPO"):
        draft(im, needed_size(im.size, size[0], size[1], resize, exif_orientation(im)), grey=channels == 1)
    with DECODE_BUDGET.hold(decoded_bytes(im)):
        decoded = _load(name, im)
        # Why the orientation only now: a PNG's getexif decodes the image (eXIf may follow the
        # pixels), which must happen within the budget
        return _orient_and_finish(name, exif_orientation(decoded), channels, size, resize, bits_stored, decoded, stored)


def _orient_and_finish(
    name: str,
    orientation: int,
    channels: int,
    size: Sequence[int],
    resize: str,
    bits_stored: int,
    im: Image.Image,
    stored: tuple[int, int] | None = None,
) -> np.ndarray:
    """A decoded image, turned upright, through :func:`_finish`; its failures as ImageError."""
    w, h = im.size
    if stored is not None and orientation in (5, 6, 7, 8):  # stored sideways
        stored = (stored[1], stored[0])
    try:
        if orientation in TRANSPOSE:
            upright = im.transpose(TRANSPOSE[orientation])
            im.close()  # Why now: free the decode as stored before the rotated copy is converted
            im = upright
        return _finish(im, channels, size, resize, bits_stored, owned=True, aspect=stored)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(name, f"not enough memory to convert {w}x{h} pixels") from None
    except Exception as e:
        raise ImageError(name, decode_reason(e)) from None


def _load(name: str, im: Image.Image) -> Image.Image:
    """Decode everything now (a truncated file must fail here, not later): Pillow's errors as ImageError."""
    try:
        im.load()
    except MemoryError:
        raise ImageError(name, f"not enough memory to decode {im.width}x{im.height} pixels") from None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib.error...
        raise ImageError(name, decode_reason(e)) from None
    return im


def prepare_array(
    array: np.ndarray,
    channels: int,
    size: Sequence[int],
    resize: str = "stretch",
    *,
    bits_stored: int = 16,
) -> np.ndarray:
    """Convert an in-memory image exactly as :func:`load_image` converts a decoded file.

    Args:
        array: ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in 1, 3, 4 (4: RGBA). A
            3-D array whose last axis has 1, 3 or 4 entries is read as ``(H, W, C)``. dtype
            uint8 (0-255), bool, uint16 (0-65535, like 16-bit PNG), another integer type
            holding 0-255, or float holding [0, 1].
        channels: 1 or 3.
        size: ``(height, width)`` of the result.
        resize: ``stretch``, ``letterbox`` or ``crop``.
        bits_stored: uint16 arrays hold values up to ``2**bits_stored - 1``, as :func:`load_image`.

    Returns:
        uint8 array of shape ``(channels, height, width)``.

    Raises:
        ImageError: (path ``<array>``) for a shape or dtype it cannot read.
    """
    check_args(channels, size, resize, bits_stored)
    a = np.asarray(array)
    if a.ndim == 3:
        if a.shape[-1] in (1, 3, 4):
            pass  # (H, W, C)
        elif a.shape[0] in (1, 3, 4):
            a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
        else:
            raise ImageError(
                "<array>",
                f"cannot tell the channel axis of shape {a.shape}; "
                "expected (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4",
            )
        if a.shape[-1] == 1:
            a = a[..., 0]
    elif a.ndim != 2:
        raise ImageError("<array>", f"expected a 2-D or 3-D image array, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageError("<array>", f"empty image (shape {a.shape})")
    a = _array_to_8bit_or_16bit(a)
    if a.dtype == np.uint16:
        a = scale16(a, bits_stored)  # the same scaling a 16-bit PNG gets
    im = Image.fromarray(np.ascontiguousarray(a))  # (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA
    return _finish(im, channels, size, resize, bits_stored)


def load_images(
    paths: Sequence[str | os.PathLike],
    channels: int,
    size: Sequence[int],
    resize: str = "stretch",
    *,
    workers: int | None = None,
    on_error: str = "skip",
    progress: Callable[[int], None] | None = None,
    bits_stored: int = 16,
) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """Decode many files in a thread pool (Pillow releases the GIL), keeping their order.

    Args:
        paths: image files.
        channels, size, resize, bits_stored: as :func:`load_image`.
        workers: threads; default ``min(32, CPUs + 4)``.
        on_error: ``skip`` (leave bad files out, report them) or ``error`` (raise the first
            bad file's :class:`ImageError`, in input order).
        progress: called with the number of files finished (decoded or failed) since the
            last call.

    Returns:
        ``(images, kept, failures)``: uint8 ``(len(kept), C, H, W)``; the input indices of
        the images, ascending; ``(path, reason)`` for each file left out.
    """
    check_args(channels, size, resize, bits_stored)
    out = np.empty((len(paths), channels, int(size[0]), int(size[1])), np.uint8)  # (N, C, H, W)
    bad = decode_into(
        paths,
        out,
        channels,
        size,
        resize,
        workers=workers,
        on_error=on_error,
        progress=progress,
        bits_stored=bits_stored,
    )
    if not bad:
        return out, list(range(len(paths))), []
    skipped = {i for i, _, _ in bad}
    kept = [i for i in range(len(paths)) if i not in skipped]
    return out[kept], kept, [(p, r) for _, p, r in bad]


def decode_into(
    paths: Sequence[str | os.PathLike],
    out: np.ndarray,
    channels: int,
    size: Sequence[int],
    resize: str = "stretch",
    *,
    workers: int | None = None,
    on_error: str = "skip",
    progress: Callable[[int], None] | None = None,
    bits_stored: int = 16,
) -> list[tuple[int, str, str]]:
    """Decode ``paths[i]`` into ``out[i]`` (an array or a writable memmap), in a thread pool.

    Rows of files that fail are left untouched. Why this exists beside :func:`load_images`:
    a disk cache decodes straight into its memmap, never holding the whole set in RAM.

    Returns:
        ``(index, path, reason)`` for each file that failed, by index.

    Raises:
        ImageError: with ``on_error="error"``, the failure with the lowest index.
    """
    if on_error not in ("skip", "error"):
        raise ValueError(f"on_error must be 'skip' or 'error' (got {on_error!r})")
    n = len(paths)
    if out.shape[0] != n or tuple(out.shape[1:]) != (channels, int(size[0]), int(size[1])):
        raise ValueError(f"out has shape {out.shape}; expected {(n, channels, int(size[0]), int(size[1]))}")
    first_bad = [n]  # with on_error="error": lowest failing index so far; work above it stops
    failures: list[tuple[int, str, str]] = []
    lock = threading.Lock()

    def work(start: int, stop_at: int) -> None:
        done = 0
        for i in range(start, stop_at):
            if i > first_bad[0]:  # Why not stop outright: a lower index may still fail first
                break
            try:
                out[i] = load_image(paths[i], channels, size, resize, bits_stored=bits_stored)
            except ImageError as e:
                with lock:
                    failures.append((i, os.fspath(paths[i]), e.reason))
                    if on_error == "error":
                        first_bad[0] = min(first_bad[0], i)
            done += 1
        if progress is not None and done:
            progress(done)

    if workers is None:
        workers = min(32, (os.cpu_count() or 1) + 4)
    # Why chunks of up to 64, and 4 a worker at least: per-task overhead stays small, progress
    # still moves, and no worker is left with the one big chunk at the end (100 files in chunks
    # of 64 and 36 kept 2 threads at 78 %).
    step = max(1, min(64, -(-n // (4 * workers))))
    chunks = [(s, min(s + step, n)) for s in range(0, n, step)]
    if workers <= 1 or n <= 1:
        for s, e in chunks:
            work(s, e)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convspec-decode") as pool:
            futures = [pool.submit(work, s, e) for s, e in chunks]
            try:
                for f in futures:
                    f.result()
            except BaseException:  # Ctrl-C or a bug: stop every worker at its next image
                first_bad[0] = -1
                for f in futures:
                    f.cancel()
                raise
    failures.sort()
    if on_error == "error" and failures:
        i, path, reason = failures[0]
        raise ImageError(path, reason)
    return failures


@dataclass(frozen=True)
class SampledPixels:
    """One sampled file's stored values, before any scaling to 8 bits.

    ``kind``: ``"16-bit"`` (grey, signed or not), ``"float"``, or ``"16-bit colour"`` (RGB or
    grey+alpha at 16 bits, which Pillow reads at 8: ``low`` and ``high`` are then NaN).
    """

    path: str
    kind: str
    low: float
    high: float


def sample_pixels(paths: Sequence[str | os.PathLike], sample: int = 8) -> list[SampledPixels]:
    """The stored value range of the 16-bit and float images among ``sample`` files spread over ``paths``.

    8-bit files cost a header read only; unreadable ones are passed over (decoding reports them).
    Why a sample: it tells 12-bit X-rays stored in 16-bit PNGs from full-range ones, signed CT, and
    float images on two scales, for the price of a few decodes, not a pass over the data.
    """
    if not paths:
        return []
    step = max(1, len(paths) // sample)
    found: list[SampledPixels] = []
    for path in list(paths)[::step][:sample]:
        name = os.fspath(path)
        try:
            fp = open_regular_image(name)
        except ImageError:
            continue
        try:
            im = open_with_pillow(name, fp, quiet=False)
        except ImageError:
            fp.close()
            continue
        try:
            if im.mode.startswith("I;16") or im.mode in ("I", "F"):
                with DECODE_BUDGET.hold(decoded_bytes(im)):
                    a = np.asarray(im)
                    if im.mode == "F":
                        a = a[np.isfinite(a)]
                    low, high = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
                found.append(SampledPixels(name, "float" if im.mode == "F" else "16-bit", low, high))
            elif im.mode in ("RGB", "RGBA", "LA") and any(";16" in str(t[3]) for t in im.tile):
                found.append(SampledPixels(name, "16-bit colour", math.nan, math.nan))
        except Exception:  # noqa: BLE001 - a file that fails to decode is decoding's to report
            continue
        finally:
            im.close()
            fp.close()
    return found


# ---------------------------------------------------------------- internals


def _open(name: str) -> OpenedImage:
    """Open (header only) with the size limits as errors, and turn OS errors into reasons."""
    fp = open_regular_image(name)
    try:
        if os.fstat(fp.fileno()).st_size == 0:
            raise ImageError(name, "empty file (0 bytes)")
        return _open_fp(name, fp)
    except BaseException:
        fp.close()
        raise


def _open_fp(name: str, fp: BinaryIO) -> OpenedImage:
    """An :class:`OpenedImage` of ``fp``: a plain JPEG within the pixel limit by its header
    alone, anything else through Pillow. The caller closes ``fp`` if this raises."""
    header = jpeg.read_header(fp)
    limit = Image.MAX_IMAGE_PIXELS
    within = header is not None and (limit is None or header.pixels <= limit)
    if within and header.plain:
        return OpenedImage(name, fp, header=header)
    return OpenedImage(name, fp, im=open_with_pillow(name, fp, quiet=within))


def _finish(
    im: Image.Image,
    channels: int,
    size: Sequence[int],
    resize: str,
    bits_stored: int = 16,
    *,
    owned: bool = False,
    aspect: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decoded image -> 8-bit 'L'/'RGB' -> resized -> ``(C, H, W)`` uint8.

    ``owned``: ``im`` is this loader's own; a large one is closed (its memory freed) once
    converted, before the resize. ``aspect``: the file's own upright ``(width, height)``, which
    sets a letterbox's geometry when ``im`` was decoded at a smaller scale (whose sides are rounded).
    """
    target = "L" if channels == 1 else "RGB"
    plain = im.mode in ("L", target) and "transparency" not in im.info
    if im.width * im.height > STREAM_PIXELS and not plain:
        # Why grey stays grey until after the resize: resizing one band and copying it to three
        # gives exactly the pixels of resizing three equal bands, in a third of the memory.
        converted = convert_in_strips(im, "L" if im.mode in _GREY_MODES else target, bits_stored)
        if owned:
            im.close()
        im = converted
    else:
        im = to_mode(im, target, bits_stored=bits_stored)
    im = resize_image(im, int(size[0]), int(size[1]), resize, aspect)
    if im.mode != target:
        im = im.convert(target)
    return chw(np.asarray(im))


def _array_to_8bit_or_16bit(a: np.ndarray) -> np.ndarray:
    """Bring an array's dtype to uint8 (or uint16, scaled later like a 16-bit PNG)."""
    if a.dtype == np.uint8 or a.dtype == np.uint16:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.integer):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 255:
            raise ImageError("<array>", f"integer pixels must be 0-255 (got {lo}..{hi}); pass uint16 for 16-bit images")
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError("<array>", "float pixels contain NaN or infinity")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageError(
                "<array>", f"float pixels must be in [0, 1] (got {lo:g}..{hi:g}); pass uint8 for 0-255 pixels"
            )
        return np.rint(a * 255.0).astype(np.uint8)
    raise ImageError("<array>", f"unsupported dtype {a.dtype}")

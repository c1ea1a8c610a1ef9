"""Image geometry: EXIF orientation, the stored size a resize needs (for scaled JPEG decoding), and
the three resize modes (``stretch``, ``letterbox``, ``crop``) with Pillow's bilinear filter.

Torch-free. :mod:`.images` calls these in its pipeline; see its docstring for the order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from convspec.specs.classes import BITS_STORED

RESAMPLE = Image.Resampling.BILINEAR
RESIZE_MODES = ("stretch", "letterbox", "crop")


def check_args(channels: int, size: Sequence[int], resize: str, bits_stored: int = 16) -> None:
    """ValueError naming the first argument of a loader call that is out of range (a caller's bug)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3 (got {channels!r})")
    if len(size) != 2 or int(size[0]) < 1 or int(size[1]) < 1:
        raise ValueError(f"size must be (height, width) with both >= 1 (got {size!r})")
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)} (got {resize!r})")
    low, high = BITS_STORED
    if not (isinstance(bits_stored, int) and low <= bits_stored <= high):
        raise ValueError(f"bits_stored must be an integer from {low} to {high} (got {bits_stored!r})")


# EXIF orientation (2-8) -> the transpose that undoes it, as ``ImageOps.exif_transpose``.
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 when absent). Why 1 on errors: a corrupt EXIF block must not
    cost the image; it is kept as stored."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return value if isinstance(value, int) else 1


def needed_size(stored: tuple[int, int], h: int, w: int, how: str, orientation: int) -> tuple[int, int]:
    """``(width, height)`` of the stored image that the resize to ``h`` x ``w`` needs, at least."""
    if orientation in (5, 6, 7, 8):  # stored sideways: swap the target
        h, w = w, h
    sw, sh = stored
    if how == "stretch":
        return w, h
    scale = max(w / sw, h / sh) if how == "crop" else min(w / sw, h / sh)
    return max(1, math.ceil(sw * scale)), max(1, math.ceil(sh * scale))


def draft(im: Image.Image, need: tuple[int, int], grey: bool) -> None:
    """Pillow's path for JPEGs that :mod:`.jpeg` leaves to it (CMYK, refused by libjpeg-turbo):
    let libjpeg decode at 1/2, 1/4 or 1/8 scale when the result is still at least ``need``, as
    ``Image.thumbnail`` does, and, for ``grey``, decode a colour JPEG's luma (Y) plane only.
    Pillow's draft may be called once per image.
    """
    scaled = 2 * need[0] <= im.width and 2 * need[1] <= im.height
    if scaled or grey:
        im.draft("L" if grey else None, need if scaled else None)


def chw(a: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)`` -> ``(1, H, W)``, ``(H, W, 3)`` -> ``(3, H, W)``, contiguous."""
    return np.ascontiguousarray(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))


def resize_image(im: Image.Image, h: int, w: int, how: str, aspect: tuple[int, int] | None = None) -> Image.Image:
    """Resize 'L'/'RGB' to ``(h, w)``: stretch, letterbox (pad 0, centered) or crop (center).

    ``aspect``: the file's own ``(width, height)`` when ``im`` is a scaled decode of it: the
    letterbox's content box follows it, so a JPEG and a PNG of one picture get the same box.
    """
    sw, sh = im.size
    if (sw, sh) == (w, h):
        return im
    if how == "stretch":
        return im.resize((w, h), RESAMPLE)
    if how == "crop":
        # Why crop before resizing (not a float ``box`` in resize): with a box, bilinear
        # support reaches past it and the trimmed border bleeds in.
        if sw * h > sh * w:  # source is wider than the target: trim left and right
            cw = max(1, min(sw, round(sh * w / h)))
            box = ((sw - cw) // 2, 0, (sw - cw) // 2 + cw, sh)
        else:  # taller: trim top and bottom
            ch = max(1, min(sh, round(sw * h / w)))
            box = (0, (sh - ch) // 2, sw, (sh - ch) // 2 + ch)
        im = im.crop(box)
        return im if im.size == (w, h) else im.resize((w, h), RESAMPLE)
    # letterbox
    aw, ah = aspect or (sw, sh)
    scale = min(w / aw, h / ah)
    nw, nh = max(1, min(w, round(aw * scale))), max(1, min(h, round(ah * scale)))
    inner = im if (nw, nh) == (sw, sh) else im.resize((nw, nh), RESAMPLE)
    canvas = Image.new(im.mode, (w, h), 0)
    canvas.paste(inner, ((w - nw) // 2, (h - nh) // 2))
    return canvas

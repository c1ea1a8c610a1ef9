"""Any Pillow image mode to 8-bit 'L' or 'RGB', as the loader (:mod:`.images`) converts it.

16-bit grey is scaled by ``bits_stored``, float 'F' from [0, 1] when its largest value is at most
:data:`FLOAT_UNIT_TOP` (else clipped to [0, 255]),
1-bit to 0/255, anything with transparency composited onto black, every other mode through
Pillow's ``convert``. Large images are converted a strip of rows at a time (the same pixels).
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

__all__ = ["FLOAT_UNIT_TOP", "STRIP_PIXELS", "convert_in_strips", "scale16", "to_8bit", "to_mode"]

# A float image whose largest value is at most this is on the 0..1 scale (times 255, clipped).
# Why not 1: filters overshoot, and one pixel at 1.0001 read the whole image as 0..255, black; an
# image on the 0..255 scale whose largest value is 2 or less is black either way.
FLOAT_UNIT_TOP = 2.0

# Strips of about this many pixels in :func:`convert_in_strips`.
STRIP_PIXELS = 1 << 20


def to_mode(im: Image.Image, target: str, float_scale: bool | None = None, bits_stored: int = 16) -> Image.Image:
    """:func:`to_8bit`, then to ``target`` ('L' or 'RGB')."""
    im = to_8bit(im, float_scale, bits_stored)
    return im if im.mode == target else im.convert(target)


def convert_in_strips(im: Image.Image, target: str, bits_stored: int = 16) -> Image.Image:
    """:func:`to_mode` a strip of rows at a time: the same pixels, with no full-size temporary
    beyond the result (a 9400x9400 16-bit PNG held an int64 copy of 700 MB and more at once).

    Why only the conversion in strips, not the resize: the conversions are per pixel, so
    strips give exactly the same pixels; Pillow's resize is then called on the whole 8-bit
    image as before, so the pixels stay those of the one-piece path.
    """
    rows = max(1, STRIP_PIXELS // max(1, im.width))
    float_scale = None
    if im.mode == "F":  # Why first: whether to scale by 255 depends on the whole image's maximum
        top = max(
            _finite_max(np.asarray(im.crop((0, y, im.width, min(y + rows, im.height)))))
            for y in range(0, im.height, rows)
        )
        float_scale = top <= FLOAT_UNIT_TOP
    out = Image.new(target, im.size)
    for y in range(0, im.height, rows):
        strip = im.crop((0, y, im.width, min(y + rows, im.height)))
        out.paste(to_mode(strip, target, float_scale, bits_stored), (0, y))
    return out


def to_8bit(im: Image.Image, float_scale: bool | None = None, bits_stored: int = 16) -> Image.Image:
    """Any Pillow mode -> 'L' or 'RGB' (transparency composited onto black).

    ``float_scale``: for mode 'F', whether values are multiplied by 255 (default: when the
    image's maximum is <= :data:`FLOAT_UNIT_TOP`); the streamed path decides it once for the whole image.
    """
    mode = im.mode
    if mode in ("L", "RGB") and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode == "I":
        return Image.fromarray(scale16(np.asarray(im), bits_stored), mode="L")
    if mode == "F":
        a = np.asarray(im, dtype=np.float32)
        unit = float_scale if float_scale is not None else _finite_max(a) <= FLOAT_UNIT_TOP
        a = np.nan_to_num(a, nan=0.0, posinf=np.inf, neginf=0.0)  # +inf: white on either scale (clipped)
        if unit:
            a = a.astype(np.float64) * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    if mode == "1":
        return im.convert("L")
    grey_alpha = mode in ("LA", "La") or (mode == "L" and "transparency" in im.info)
    colour_alpha = mode in ("RGBA", "RGBa", "PA") or (mode in ("P", "RGB") and "transparency" in im.info)
    if grey_alpha or colour_alpha:
        a = np.asarray(im.convert("LA" if grey_alpha else "RGBA"))
        colour = a[..., :-1].astype(np.uint16)  # Why uint16: c * alpha + 127 <= 65152 fits
        colour *= a[..., -1:]
        colour += 127
        colour //= 255  # round(c * a / 255)
        onto_black = colour.astype(np.uint8)
        return Image.fromarray(onto_black[..., 0] if grey_alpha else onto_black, mode="L" if grey_alpha else "RGB")
    return im.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, RGBX, ...


def _finite_max(a: np.ndarray) -> float:
    """The largest finite value (0 without one). Why finite: one +inf pixel read a 0..1 image as 0..255, black."""
    finite = a[np.isfinite(a)]
    return float(finite.max()) if finite.size else 0.0


@functools.cache
def _lut16(bits_stored: int) -> np.ndarray:
    """Why a table: 0..2**bits-1 -> 0-255 by one uint8 lookup per pixel, no int64 copy of the image."""
    top = (1 << bits_stored) - 1
    v = np.minimum(np.arange(65536, dtype=np.int64), top)
    return ((v * 255 + top // 2) // top).astype(np.uint8)


def scale16(a: np.ndarray, bits_stored: int = 16) -> np.ndarray:
    """0..2**bits_stored-1 -> 0-255, rounded (values above, and outside 0-65535, are clipped)."""
    if a.dtype != np.uint16:
        a = np.clip(a, 0, 65535).astype(np.uint16)
    return _lut16(bits_stored)[a]

"""JPEG decoding at the size the model needs, through libjpeg-turbo's scaled IDCT (simplejpeg).

The loader's path for baseline and progressive JPEGs (Pillow modes ``L`` and ``RGB``); CMYK
and anything libjpeg-turbo refuses go through Pillow as before (:func:`decode` returns None).

Why simplejpeg beside Pillow, which wraps the same libjpeg-turbo:

- libjpeg-turbo scales in the IDCT by any M/8 (M = 1..8); Pillow's ``draft`` offers only 1/2,
  1/4 and 1/8, so 224 px from a 256-px photo decoded at full size and then resized, where the
  7/8 IDCT gives 224 px directly (about 3x faster; ``bench/real_size.py`` section 1);
- at full scale the pixels are libjpeg's own, the same as Pillow's (the same IDCT and
  upsampling settings: ``JDCT_ISLOW``, fancy upsampling), but Pillow's load loop adds about
  40 % to the decode of a 224-px file.

The scale is the smallest M/8 that keeps both sides at least the size the resize needs
(libjpeg rounds ``side * M / 8`` up), as ``Image.thumbnail`` would with finer steps; the
resize to the exact size follows in the loader, so training and serving, which share it,
see the same pixels.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import simplejpeg

__all__ = ["Header", "decode", "read_header", "scaled_size"]

# Why a cap: the file is read whole into memory; a larger file named like a JPEG (a scan, or a
# header followed by gigabytes) goes through Pillow, which streams it.
MAX_FILE_BYTES = 64 << 20
# The header (up to the frame's size) within this many bytes; a camera's EXIF thumbnail is 10-60 KB.
HEADER_BYTES = 256 << 10


def scaled_size(stored: tuple[int, int], need: tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` that libjpeg decodes ``stored`` to: the smallest M/8 keeping ``need``."""
    w, h = stored
    for m in range(1, 9):
        sw, sh = math.ceil(w * m / 8), math.ceil(h * m / 8)
        if sw >= min(need[0], w) and sh >= min(need[1], h):
            return sw, sh
    return w, h


@dataclass(frozen=True)
class Header:
    """A JPEG's header as libjpeg-turbo reads it, and what Pillow would have to add."""

    width: int
    height: int
    colorspace: str  # turbojpeg's: Gray, YCbCr, RGB, CMYK or YCCK
    app1: bool  # an APP1 segment (EXIF or XMP) before the scan: it may hold an orientation
    whole: bytes | None = field(default=None, repr=False, compare=False)  # the file, when the header read took it all

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def plain(self) -> bool:
        """Decodable without Pillow: grey or colour (not CMYK), and no orientation to read."""
        return not self.app1 and self.colorspace in ("Gray", "YCbCr", "RGB")


def read_header(fp: BinaryIO) -> Header | None:
    """The header of the JPEG in ``fp``, or None: not a JPEG, or no header libjpeg-turbo can
    read in the first :data:`HEADER_BYTES`. ``fp`` is left at its start."""
    try:
        fp.seek(0)
        head = fp.read(3)
        if head != b"\xff\xd8\xff":  # Why 3 bytes first: a PNG or TIFF costs no larger read
            return None
        head += fp.read(HEADER_BYTES - 3)
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(head)
        app1 = _has_app1(head)
        whole = head if len(head) < HEADER_BYTES else None  # Why keep it: decode then reads nothing again
        return None if app1 is None else Header(width, height, colorspace, app1, whole)
    except (ValueError, OSError):
        return None
    finally:
        fp.seek(0)


def _has_app1(head: bytes) -> bool | None:
    """Whether an APP1 segment comes before the scan; None when the scan is not within ``head``.

    Why by hand: neither libjpeg-turbo nor simplejpeg reports EXIF or XMP, and Pillow's parser
    of the whole header is the cost this module avoids. The walk reads marker lengths only.
    """
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return None  # not a marker where one must be: let Pillow judge the file
        marker = head[i + 1]
        if marker == 0xFF:  # a fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        elif marker == 0xDA:  # start of scan: the header is over
            return False
        elif marker == 0xE1:
            return True
        else:
            i += 2 + int.from_bytes(head[i + 2 : i + 4], "big")
    return None


def _read_whole(fp: BinaryIO) -> bytes | None:
    """The whole file from its start, or None when it is over :data:`MAX_FILE_BYTES`."""
    fp.seek(0, os.SEEK_END)
    if fp.tell() > MAX_FILE_BYTES:
        return None
    fp.seek(0)
    return fp.read()


def decode(
    fp: BinaryIO, stored: tuple[int, int], need: tuple[int, int], grey: bool, header: Header | None = None
) -> np.ndarray | None:
    """The JPEG in ``fp`` (``stored``: its ``(width, height)``) decoded at :func:`scaled_size`:
    uint8 ``(H, W)`` luma (``grey``) or ``(H, W, 3)`` RGB; None when Pillow must decode it.
    ``header``: :func:`read_header`'s, whose bytes are used when it read the whole file.

    None for a file over :data:`MAX_FILE_BYTES`, a size that disagrees with ``stored``, or
    anything libjpeg-turbo refuses or warns about (a cut-short or corrupt file: Pillow then
    decodes what it can or names what is wrong). The caller checks the mode (not CMYK).
    """
    try:
        data = header.whole if header is not None and header.whole is not None else _read_whole(fp)
        if data is None:
            return None
        if header is None or header.whole is None:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            if (width, height) != tuple(stored):
                return None
        w, h = scaled_size(stored, need)
        a = simplejpeg.decode_jpeg(data, colorspace="GRAY" if grey else "RGB", min_width=w, min_height=h)
    except (ValueError, OSError):  # simplejpeg's errors and warnings (strict) are ValueError
        return None
    return a[..., 0] if grey else a

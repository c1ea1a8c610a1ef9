"""JPEG decode speed of convspec's one loader (scaled decoding) against plain Pillow, same run.

Images: crops of scikit-image's photos (astronaut, coffee, chelsea, rocket, motorcycle...),
saved as JPEG quality 90: 256x256 crops (the usual dataset size) and, for the draft's
scaling, whole photos upscaled to 1024 px on the long side. Each image is decoded to 224x224
(stretch) as a 1-channel and as a 3-channel model sees it:

- plain Pillow: ``Image.open(p).convert(mode).resize((224, 224), BILINEAR)`` then numpy;
- convspec: :func:`convspec.runtime.images.load_image` (libjpeg-turbo through simplejpeg:
  grey models decode the luma plane only; M/8 scaled decoding whenever the source is larger
  than the target).

Prints images per second and the ratio convspec / Pillow per case (median of 5 rounds).

Usage: python bench/decode_draft.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from convspec.runtime.images import load_image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "hubble_deep_field", "immunohistochemistry")


def photos() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in PHOTOS:
        fn = getattr(data, name, None)
        if fn is None:
            continue
        a = fn()
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        out.append(np.ascontiguousarray(a[..., :3]))
    return out


def make_jpegs(folder: Path) -> dict[str, list[Path]]:
    small, large = [], []
    for k, a in enumerate(photos()):
        h, w = a.shape[:2]
        for i, (y, x) in enumerate([(0, 0), (max(0, h - 256), max(0, w - 256)), ((h - 256) // 2, (w - 256) // 2)]):
            crop = a[y : y + 256, x : x + 256]
            if crop.shape[:2] == (256, 256):
                p = folder / f"s{k}_{i}.jpg"
                Image.fromarray(crop).save(p, quality=90)
                small.append(p)
        im = Image.fromarray(a)
        scale = 1024 / max(h, w)
        p = folder / f"l{k}.jpg"
        im.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC).save(p, quality=90)
        large.append(p)
    return {"256 px crops": small * 8, "1024 px photos": large * 4}


def plain(path: Path, channels: int) -> np.ndarray:
    with Image.open(path) as im:
        out = im.convert("L" if channels == 1 else "RGB").resize((224, 224), Image.Resampling.BILINEAR)
        return np.asarray(out)


def rate(fn, paths, channels) -> float:
    t0 = time.perf_counter()
    for p in paths:
        fn(p, channels)
    return len(paths) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        sets = make_jpegs(Path(d))

        def ours(p, c):
            return load_image(p, c, (224, 224))

        print(f"{'images':16} {'channels':>8} {'Pillow img/s':>13} {'convspec img/s':>15} {'ratio':>6}")
        for name, paths in sets.items():
            for channels in (1, 3):
                base, mine = [], []
                for _ in range(args.rounds):  # interleaved: both see the same machine speed
                    base.append(rate(plain, paths, channels))
                    mine.append(rate(ours, paths, channels))
                b, m = statistics.median(base), statistics.median(mine)
                print(f"{name:16} {channels:>8} {b:13.0f} {m:15.0f} {m / b:6.2f}")
                mine_px = np.moveaxis(ours(paths[0], channels), 0, -1).squeeze(-1 if channels == 1 else ())
                diff = np.abs(plain(paths[0], channels).astype(int) - mine_px.astype(int))
                print(f"{'':16} {'':>8} vs Pillow, first image: max diff {diff.max()}, mean {diff.mean():.2f}")


if __name__ == "__main__":
    main()

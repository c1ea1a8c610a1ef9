"""``POST /predict`` answers exactly what ``convspec predict --format json`` prints (trained models, slow).

Two real models: the session's 3-epoch digits run (grey, 12x12) and a 1-epoch RGB shapes
run (32x32). Images the models never saw: sklearn digits from the end of the set (raw 8x8
PNG, upscaled JPEG with noise, RGB PNG), and crops of scikit-image's photos (PNG, JPEG,
BMP, WebP, of many sizes). Requests go concurrently (raw bodies and multipart groups of
1-7 files), so images share ORT batches of varying size; every label and probability must
still be the same float as the command's.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from convspec.compiler.cli import app as cli
from convspec.runtime.serve import create_app

REPO = Path(__file__).resolve().parents[2]


def cli_predictions(model: Path, folder: Path, top_k: int) -> dict[str, dict]:
    """``convspec predict MODEL FOLDER --format json --top-k K`` as ``{file name: item}``."""
    r = CliRunner().invoke(cli, ["predict", str(model), str(folder), "--format", "json", "--top-k", str(top_k)])
    assert r.exit_code == 0, r.output
    return {os.path.basename(p["source"]): p for p in json.loads(r.stdout)}


def serve_predictions(model: Path, files: list[Path], top_k: int, *, max_batch: int) -> tuple[dict[str, dict], str]:
    """The same files sent concurrently to ``POST /predict``; ``({file name: item}, /metrics text)``."""
    app = create_app(model, max_batch=max_batch, max_delay_ms=20)
    rng = np.random.default_rng(1)
    groups, i = [], 0
    while i < len(files):
        n = int(rng.integers(1, 8))
        groups.append(files[i : i + n])
        i += n

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve", timeout=60) as c:

            async def send(group):
                if len(group) == 1 and rng.random() < 0.5:  # raw body: source is "body"
                    r = await c.post(f"/predict?top_k={top_k}", content=group[0].read_bytes())
                    assert r.status_code == 200, r.text
                    (item,) = r.json()["predictions"]
                    assert item["source"] == "body"
                    return [(group[0].name, item)]
                parts = [("file", (f.name, f.read_bytes(), "application/octet-stream")) for f in group]
                r = await c.post(f"/predict?top_k={top_k}", files=parts)
                assert r.status_code == 200, r.text
                return [(item["source"], item) for item in r.json()["predictions"]]

            results = await asyncio.gather(*[send(g) for g in groups])
            return results, (await c.get("/metrics")).text

    results, metrics = asyncio.run(go())
    return {name: item for group in results for name, item in group}, metrics


def assert_same(cli_items: dict[str, dict], served: dict[str, dict]) -> None:
    assert sorted(served) == sorted(cli_items)
    for name, want in cli_items.items():
        got = dict(served[name])
        got["source"] = want["source"]
        assert json.dumps(got) == json.dumps(want), name  # byte for byte: labels and float reprs


def batches_and_images(metrics: str) -> tuple[float, float]:
    count = total = 0.0
    for line in metrics.splitlines():
        if line.startswith("convspec_batch_size_count"):
            count = float(line.split()[-1])
        if line.startswith("convspec_batch_size_sum"):
            total = float(line.split()[-1])
    return count, total


@pytest.fixture(scope="module")
def digit_images(tmp_path_factory) -> Path:
    """240 digits from the end of sklearn's set, as the grey model never saw them packaged."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("serve-digits")
    d = load_digits()
    pixels = np.rint(d.images * 255 / 16).astype(np.uint8)
    rng = np.random.default_rng(0)
    for k, i in enumerate(range(len(pixels) - 240, len(pixels))):
        a = pixels[i]
        if k % 3 == 0:
            Image.fromarray(a).save(root / f"d{i}.png")
        elif k % 3 == 1:
            big = np.kron(a, np.ones((3, 3), np.uint8)).astype(np.int16) + rng.integers(-20, 21, (24, 24))
            Image.fromarray(np.clip(big, 0, 255).astype(np.uint8)).save(root / f"d{i}.jpg", quality=90)
        else:
            Image.fromarray(np.stack([a, a // 2, 255 - a], -1)).save(root / f"d{i}.png")
    return root


@pytest.fixture(scope="module")
def photo_crops(tmp_path_factory) -> Path:
    """60 crops of scikit-image's colour photos, 20 to 300 pixels a side, in four formats."""
    import skimage

    data = Path(skimage.__file__).parent / "data"
    photos = [np.asarray(Image.open(data / n).convert("RGB")) for n in ("astronaut.png", "coffee.png", "chelsea.png")]
    photos.append(np.asarray(Image.open(data / "rocket.jpg").convert("RGB")))
    root = tmp_path_factory.mktemp("serve-photos")
    rng = np.random.default_rng(2)
    formats = [("png", {}), ("jpg", {"quality": 85}), ("bmp", {}), ("webp", {"quality": 80})]
    for k in range(60):
        p = photos[k % len(photos)]
        h, w = int(rng.integers(20, 301)), int(rng.integers(20, 301))
        h, w = min(h, p.shape[0]), min(w, p.shape[1])
        y, x = int(rng.integers(0, p.shape[0] - h + 1)), int(rng.integers(0, p.shape[1] - w + 1))
        ext, kw = formats[k % len(formats)]
        Image.fromarray(np.ascontiguousarray(p[y : y + h, x : x + w])).save(root / f"crop{k:02d}.{ext}", **kw)
    return root


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory, shapes_folder) -> Path:
    """A 1-epoch RGB shapes run (3 classes, 32x32): just trained enough to be a real model."""
    from convspec.compiler.training.loop import train
    from convspec.specs import load_spec

    base = tmp_path_factory.mktemp("serve-shapes-run")
    spec = load_spec(
        REPO / "examples" / "shapes.yaml",
        overrides=[f"data.source.path={shapes_folder}", "training.epochs=1", "data.cache=none"],
    )
    train(spec, out=base, progress=False, export=True, log=lambda _m: None)
    return base / "shapes-cnn" / "model.onnx"


@pytest.mark.slow
def test_digits_served_equal_the_predict_command(digits_run, digit_images):
    model = digits_run / "model.onnx"
    files = sorted(digit_images.iterdir())
    assert len(files) == 240
    want = cli_predictions(model, digit_images, top_k=3)
    served, metrics = serve_predictions(model, files, top_k=3, max_batch=16)
    assert_same(want, served)
    count, total = batches_and_images(metrics)
    assert total == 240 and count < 240  # images did share runs


@pytest.mark.slow
def test_rgb_photo_crops_served_equal_the_predict_command(shapes_model, photo_crops):
    files = sorted(photo_crops.iterdir())
    want = cli_predictions(shapes_model, photo_crops, top_k=2)
    served, _ = serve_predictions(shapes_model, files, top_k=2, max_batch=8)
    assert_same(want, served)

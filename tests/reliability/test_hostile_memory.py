"""Memory under the pixel limit: small files that decode to huge images must not blow up RSS.

A 9400x9400 16-bit PNG is ~300 KB on disk and 177 MB decoded; the loader used to make int64
copies of it (2.4 GB peak). Now 16-bit and alpha images are converted to 8 bits a strip of
rows at a time (the same pixels), grey stays one band until resized, and one decode budget
(bytes in flight, :data:`convspec.runtime.images.DECODE_BUDGET`) bounds every decoding
thread of the process together.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from convspec.runtime import images, modes
from convspec.runtime.image_files import DecodeBudget

from .conftest import probe_model, run_with_peak

N = 9400


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    """Two compressed 9400x9400 PNGs (16-bit grey, RGBA) and probe models with 1 and 3 channels."""
    d = tmp_path_factory.mktemp("huge")
    a = np.zeros((N, N), np.uint16)
    a[::7] = 40000
    a[:, ::13] = 1234
    Image.fromarray(a).save(d / "grey16.png", compress_level=1)
    del a
    b = np.zeros((N, N, 4), np.uint8)
    b[::5, :, 0] = 200
    b[:, ::3, 3] = 128
    b[..., 1] = 50
    Image.fromarray(b, "RGBA").save(d / "rgba.png", compress_level=1)
    del b
    return {
        "grey16": d / "grey16.png",
        "rgba": d / "rgba.png",
        "m1": probe_model(d / "m1.onnx", 1),
        "m3": probe_model(d / "m3.onnx", 3),
        "dir": d,
    }


def predict_peak(model, *inputs) -> float:
    result, peak = run_with_peak([sys.executable, "-m", "convspec.compiler", "predict", model, *inputs], timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return peak


# Decoded sizes: 16-bit grey 177 MB, RGBA 353 MB; the process alone (Python, numpy, ORT) ~90 MB.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("image", "model", "limit_mb"),
    [
        ("grey16", "m1", 400),  # decoded 177 + 8-bit copy 88
        ("grey16", "m3", 400),  # grey stays one band until resized: the same
        ("rgba", "m1", 600),  # decoded 353 + 88
        ("rgba", "m3", 850),  # decoded 353 + RGB 265
    ],
)
def test_huge_png_predicts_in_bounded_memory(huge, image, model, limit_mb):
    peak = predict_peak(huge[model], huge[image])
    assert peak < limit_mb, f"{image} through {model}: peak RSS {peak:.0f} MB (limit {limit_mb} MB)"


@pytest.mark.slow
def test_a_folder_of_huge_pngs_is_decoded_within_the_budget(huge, tmp_path, monkeypatch):
    """Three at once would need ~800 MB; a 300 MB budget lets one decode at a time."""
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(huge["grey16"].read_bytes())
    monkeypatch.setenv("CONVSPEC_DECODE_MB", "300")
    peak = predict_peak(huge["m1"], tmp_path)
    assert peak < 420, f"peak RSS {peak:.0f} MB for three 9400x9400 16-bit PNGs under a 300 MB budget"


MODES = {
    "I;16": lambda r: Image.fromarray(r.integers(0, 65536, (301, 517), dtype=np.uint16)),
    "I": lambda r: Image.fromarray(r.integers(-(2**20), 2**20, (301, 517), dtype=np.int32)),
    "F": lambda r: Image.fromarray(r.random((301, 517), dtype=np.float32)),
    "RGBA": lambda r: Image.fromarray(r.integers(0, 256, (301, 517, 4), dtype=np.uint8), "RGBA"),
    "LA": lambda r: Image.fromarray(r.integers(0, 256, (301, 517, 2), dtype=np.uint8), "LA"),
    "P": lambda r: Image.fromarray(r.integers(0, 256, (301, 517), dtype=np.uint8)).convert("P"),
    "CMYK": lambda r: Image.fromarray(r.integers(0, 256, (301, 517, 3), dtype=np.uint8)).convert("CMYK"),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_strip_conversion_gives_the_same_pixels(mode, monkeypatch):
    im = MODES[mode](np.random.default_rng(0))
    for channels in (1, 3):
        for how in ("stretch", "letterbox", "crop"):
            for size in ((32, 32), (200, 20), (301, 517)):
                monkeypatch.setattr(images, "STREAM_PIXELS", 10**9)
                whole = images._finish(im, channels, size, how)
                monkeypatch.setattr(images, "STREAM_PIXELS", 0)
                monkeypatch.setattr(modes, "STRIP_PIXELS", 5000)  # strips of ~10 rows
                strips = images._finish(im, channels, size, how)
                assert np.array_equal(whole, strips), (mode, channels, how, size)


def test_16_bit_scaling_makes_no_wide_copy():
    a = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = modes.scale16(a)
    assert out.dtype == np.uint8
    assert np.array_equal(out, ((a.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8))


def test_decode_budget_bounds_bytes_in_flight():
    budget = DecodeBudget(limit=100)
    seen, lock = [], threading.Lock()

    def job(n):
        with budget.hold(n):
            with lock:
                seen.append((n, budget.in_flight))
            time.sleep(0.02)

    threads = [threading.Thread(target=job, args=(40,)) for _ in range(8)]
    threads.append(threading.Thread(target=job, args=(250,)))  # larger than the budget: runs alone
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert budget.in_flight == 0 and len(seen) == 9
    assert all(flight <= 100 for n, flight in seen if n == 40), seen
    assert any(flight == 80 for n, flight in seen if n == 40), seen  # two at a time do run together
    assert [flight for n, flight in seen if n == 250] == [250], seen


def test_a_model_too_big_for_memory_is_refused_before_the_data_loads(tmp_path):
    """A dense of 10**9 units, or a conv padded by 100,000 pixels, used to end in the allocator's
    traceback after the data had loaded (and the run folder had been made)."""
    from .conftest import cli, image_folder, tiny_spec, user_error, write

    data = image_folder(tmp_path / "data")
    source = f"{{type: folder, path: {data}}}"
    dense = tiny_spec(source).replace(
        "- {type: global_avg_pool}", "- {type: flatten}\n    - {type: dense, units: 1000000000}"
    )
    padded = tiny_spec(source).replace("{type: conv, filters: 2}", "{type: conv, filters: 2, padding: 100000}")
    # the padded conv is named by its own key: "training.batch_size" blamed the batch for it
    for name, text, key in (("dense", dense, "model.layers"), ("padded", padded, "model.layers[0]: ")):
        spec = write(tmp_path / f"{name}.yaml", text)
        said = user_error(cli("train", spec, "--out", tmp_path / "runs"), f"{name}.yaml", key, "GiB", "is free")
        assert "data:" not in said  # refused before any image was decoded
    assert not (tmp_path / "runs").exists()

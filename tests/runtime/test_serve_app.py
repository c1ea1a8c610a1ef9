"""``convspec.runtime.serve``: endpoints, limits and bad input, metrics, batching (fast, hand-built model).

The model is the "band" model of tests/conftest.py (class j = the image bright in rows 2j,
2j+1), so every right answer is known. Requests go through FastAPI's TestClient or httpx's
ASGI transport (concurrent requests in one event loop).
"""

from __future__ import annotations

import asyncio
import io
import struct
import subprocess
import sys
import time
import zlib

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from convspec.runtime import Predictor
from convspec.runtime.serve import create_app
from convspec.runtime.serve.batcher import Batcher


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def band_png(j: int) -> bytes:
    a = np.full((6, 6), 10, np.uint8)
    a[2 * j : 2 * j + 2] = 250
    return png(a)


def png_bomb(width: int, height: int) -> bytes:
    """A real 1-bit PNG of ``width x height`` zeros: tiny on the wire, huge once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = b"".join(z.compress(row * 1000) for _ in range(height // 1000)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture
def model(tmp_path, band):
    return band.model(tmp_path / "band.onnx")


@pytest.fixture
def client(model):
    with TestClient(create_app(model, max_bytes=200_000)) as c:
        yield c


def metrics(client) -> dict:
    """``{(name, labels...): value}`` of every sample in ``/metrics`` (which must parse)."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, *sorted(s.labels.items()))] = s.value
    return out


def assert_error(r, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    assert "Traceback" not in r.text and 'File "' not in r.text
    for w in words:
        assert w in body["error"], body["error"]


# ------------------------------------------------------------------ predictions


def test_predict_raw_body_matches_predictor(client, model, tmp_path):
    for j in range(3):
        r = client.post("/predict", content=band_png(j), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        (pred,) = r.json()["predictions"]
        assert pred["source"] == "body" and pred["label"] == "abc"[j]
        (tmp_path / f"{j}.png").write_bytes(band_png(j))
        want = Predictor(model).predict([tmp_path / f"{j}.png"])[0].to_dict()
        want["source"] = "body"
        assert pred == want


def test_predict_multipart_several_files_in_order(client):
    files = [("file", (f"img{i}.png", band_png(j), "image/png")) for i, j in enumerate([2, 0, 1, 2])]
    r = client.post("/predict?top_k=2", files=files)
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["source"] for p in preds] == ["img0.png", "img1.png", "img2.png", "img3.png"]
    assert [p["label"] for p in preds] == ["c", "a", "b", "c"]
    assert all(len(p["top"]) == 2 and p["top"][0]["label"] == p["label"] for p in preds)
    assert all(p["top"][0]["probability"] >= p["top"][1]["probability"] for p in preds)


def test_multipart_parts_that_are_no_file_say_why(client):
    """``filename*=`` alone (RFC 7578 forbids it) was "a text field"; a body cut short "got no parts"."""
    good = band_png(1)
    head = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename*=utf-8''abc.png\r\n\r\n"
    body = head + good + b"\r\n--B--\r\n"
    ctype = {"content-type": "multipart/form-data; boundary=B"}
    assert_error(client.post("/predict", content=body, headers=ctype), 400, "needs filename=", "RFC 7578")
    whole = head.replace(b"filename*=utf-8''abc.png", b'filename="abc.png"') + good + b"\r\n--B--\r\n"
    assert client.post("/predict", content=whole, headers=ctype).json()["predictions"][0]["source"] == "abc.png"
    assert_error(client.post("/predict", content=whole[:60], headers=ctype), 400, "cut short")
    # cut after a whole part: the next one was dropped and the reply was 200
    second = head.replace(b"filename*=utf-8''abc.png", b'filename="b.png"') + good
    two = whole.replace(b"\r\n--B--\r\n", b"\r\n") + second
    assert_error(client.post("/predict", content=two[:-10], headers=ctype), 400, "cut short", "no closing boundary")


def test_top_k(client):
    r = client.post("/predict?top_k=3", content=band_png(1))
    top = r.json()["predictions"][0]["top"]
    assert [t["label"] for t in top][0] == "b" and len(top) == 3
    assert sum(t["probability"] for t in top) == pytest.approx(1.0)
    assert len(client.post("/predict?top_k=50", content=band_png(1)).json()["predictions"][0]["top"]) == 3
    assert_error(client.post("/predict?top_k=0", content=band_png(1)), 400, "top_k")
    assert_error(client.post("/predict?top_k=two", content=band_png(1)), 400, "top_k", "'two'")


def test_metadata_health_page(client):
    m = client.get("/metadata").json()
    assert m["classes"] == ["a", "b", "c"] and m["task"] == "multiclass"
    assert m["input"] == {"channels": 1, "size": [6, 6], "resize": "stretch", "bits_stored": 16}
    assert m["threshold"] is None and m["metrics"] is None and m["test_metrics"] is None
    assert m["version"] and m["model"] == "band.onnx"
    assert client.get("/health").json() == {"status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "predict" in page.text
    assert "http://" not in page.text and "https://" not in page.text and "//cdn" not in page.text


# ------------------------------------------------------------------ a client's mistakes


def noise_png(h=64, w=64) -> bytes:
    return png(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_bad_uploads_are_4xx_json_and_the_server_keeps_serving(client):
    ppm = io.BytesIO()
    Image.new("RGB", (6, 6)).save(ppm, format="PPM")
    good = noise_png()
    cases = [
        (client.post("/predict", content=b"x" * 200_001), 413, ["200000 bytes"]),
        (client.post("/predict", files=[("file", ("big.png", b"x" * 200_001))]), 413, ["limit"]),
        (client.post("/predict", content=good[: len(good) // 2]), 400, ["body:", "truncated"]),
        (client.post("/predict", content=b"hello, not an image"), 400, ["body:", "not an image"]),
        (client.post("/predict", files=[("file", ("notes.txt", b"plain text"))]), 400, ["notes.txt", "not an image"]),
        (client.post("/predict", files=[("file", ("x.ppm", ppm.getvalue()))]), 400, ["x.ppm", "unsupported", "PPM"]),
        (client.post("/predict", content=png_bomb(20_000, 20_000)), 422, ["body:", "too large", "400000000 pixels"]),
        (client.post("/predict", files=[("file", ("b.png", png_bomb(10_000, 10_000)))]), 422, ["b.png", "too large"]),
        (client.post("/predict", content=b""), 400, ["empty"]),
        (client.post("/predict", files=[("image", ("a.png", good))]), 400, ["'file'", "'image'"]),
        (client.post("/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}), 400, []),
        (client.get("/nowhere"), 404, []),
        (client.get("/predict"), 405, []),
    ]
    for r, status, words in cases:
        assert_error(r, status, *words)
        assert client.get("/health").json() == {"status": "ok"}
    # One bad part among good ones names that part.
    files = [("file", ("ok.png", band_png(0))), ("file", ("bad.png", good[:100])), ("file", ("ok2.png", good))]
    assert_error(client.post("/predict", files=files), 400, "bad.png")
    assert client.post("/predict", content=band_png(2)).json()["predictions"][0]["label"] == "c"
    m = metrics(client)
    assert m[("convspec_errors_total", ("kind", "too_large"))] == 2
    assert m[("convspec_errors_total", ("kind", "bomb"))] == 2
    assert m[("convspec_errors_total", ("kind", "bad_image"))] == 5
    assert m[("convspec_requests_total", ("endpoint", "/predict"), ("status", "422"))] == 2


def test_body_without_content_length_is_cut_at_the_limit(model):
    """A chunked upload (no Content-Length) is refused as soon as it passes max_bytes."""
    sent = []

    def chunks():
        for _ in range(100):
            sent.append(1)
            yield b"\0" * 1000

    with TestClient(create_app(model, max_bytes=5_000)) as c:
        assert_error(c.post("/predict", content=chunks()), 413, "5000 bytes")
        assert c.get("/health").status_code == 200


def test_hostile_options_and_values_are_refused_or_bounded(model, client):
    with pytest.raises(ValueError, match="max_delay_ms must be 0 to 10000"):
        create_app(model, max_delay_ms=float("inf"))  # one stalled upload held every other request
    r = client.post("/predict?top_k=" + "9" * 5000, content=band_png(1))  # past int()'s digit limit: all
    assert r.status_code == 200 and len(r.json()["predictions"][0]["top"]) == 3


def test_a_failing_model_is_a_json_500_and_the_server_goes_on(model):
    app = create_app(model)
    predictor = app.state.predictor
    real = predictor.predict_arrays
    predictor.predict_arrays = lambda batch: (_ for _ in ()).throw(RuntimeError("ORT fell over"))
    with TestClient(app, raise_server_exceptions=False) as c:
        assert_error(c.post("/predict", content=band_png(0)), 500, "internal server error")
        predictor.predict_arrays = real
        assert c.post("/predict", content=band_png(0)).json()["predictions"][0]["label"] == "a"


# ------------------------------------------------------------------ metrics and batching


def test_concurrent_requests_are_batched(model):
    app = create_app(model, max_batch=8, max_delay_ms=50)

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as c:
            rs = await asyncio.gather(*[c.post("/predict", content=band_png(i % 3)) for i in range(20)])
            return rs, (await c.get("/metrics")).text

    rs, text = asyncio.run(go())
    assert [r.json()["predictions"][0]["label"] for r in rs] == ["abc"[i % 3] for i in range(20)]
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.name: s.value for s in fams["convspec_batch_size"].samples if not s.labels}
    assert samples["convspec_batch_size_sum"] == 20  # every image in exactly one run
    assert samples["convspec_batch_size_count"] < 20  # ... and fewer runs than images
    buckets = {s.labels["le"]: s.value for s in fams["convspec_batch_size"].samples if "le" in s.labels}
    assert buckets["8.0"] == samples["convspec_batch_size_count"]  # never above max_batch
    lat = {s.name: s.value for s in fams["convspec_request_latency_seconds"].samples if not s.labels}
    assert lat["convspec_request_latency_seconds_count"] == 20
    assert {s.value for s in fams["convspec_images"].samples if s.name == "convspec_images_total"} == {20}


def test_batcher_groups_up_to_max_batch_and_reports_errors():
    seen = []

    def run(batch):
        seen.append(len(batch))
        if (batch == 99).any():
            raise ValueError("bad batch")
        return batch.reshape(len(batch), -1)[:, :1].astype(np.float32)

    async def go():
        b = Batcher(run, max_batch=4, max_delay=0.05)
        outs = await asyncio.gather(*[b.submit([np.full((1, 2, 2), i, np.uint8)]) for i in range(10)])
        with pytest.raises(ValueError, match="bad batch"):
            await b.submit([np.full((1, 2, 2), 99, np.uint8)])
        after = await b.submit([np.full((1, 2, 2), 7, np.uint8), np.full((1, 2, 2), 8, np.uint8)])
        await b.close()
        return outs, after

    outs, after = asyncio.run(go())
    assert [float(o[0][0]) for o in outs] == list(range(10))
    assert seen[:3] == [4, 4, 2] and [float(a[0]) for a in after] == [7.0, 8.0]


def test_serve_without_the_extra_names_it(model):
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "from convspec.runtime.serve import create_app\n"
        f"create_app({str(model)!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and 'pip install "convspec[serve]"' in proc.stderr
    cli = (
        "import sys; sys.modules['fastapi'] = None\n"
        "from convspec.compiler.cli import main\n"
        f"sys.argv = ['convspec', 'serve', {str(model)!r}]; main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", cli], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and 'pip install "convspec[serve]"' in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_lone_request_does_not_wait_out_max_delay(model):
    """With nobody else on the way, the batch runs at once (max_delay 3 s would show)."""
    with TestClient(create_app(model, max_delay_ms=3000)) as c:
        c.post("/predict", content=band_png(0))
        start = time.perf_counter()
        for j in range(3):
            assert c.post("/predict", content=band_png(j)).json()["predictions"][0]["label"] == "abc"[j]
        assert time.perf_counter() - start < 2.5


def test_load_image_bytes_gives_load_image_pixels(tmp_path):
    """The server's decoder is the file loader: same pixels for PNG, JPEG (drafted) and WebP uploads."""
    from convspec.runtime.images import ImageTooLarge, load_image, load_image_bytes

    rng = np.random.default_rng(3)
    photo = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")):
        path = tmp_path / f"p.{ext}"
        Image.fromarray(photo).save(path, format=fmt)
        for channels, size, how in ((1, (12, 12), "stretch"), (3, (32, 48), "letterbox"), (3, (40, 40), "crop")):
            want = load_image(path, channels, size, how)
            got = load_image_bytes(path.read_bytes(), "upload", channels, size, how)
            assert got.dtype == np.uint8 and np.array_equal(got, want), (fmt, channels, size, how)
    with pytest.raises(ImageTooLarge, match="^upload: image is too large"):
        load_image_bytes(png_bomb(20_000, 20_000), "upload", 1, (8, 8))


def test_open_image_bytes_reads_the_header_and_decodes_later(tmp_path):
    """The server's two steps: the header (size, bombs refused) first, the decode after, as one call does."""
    from convspec.runtime.images import ImageError, ImageTooLarge, load_image_bytes, open_image_bytes

    data = png(np.random.default_rng(4).integers(0, 256, (300, 200, 3), dtype=np.uint8))
    opened = open_image_bytes(data, "up.png")
    assert opened.pixels == 300 * 200
    assert np.array_equal(opened.decode(3, (32, 32), "crop"), load_image_bytes(data, "up.png", 3, (32, 32), "crop"))
    truncated = open_image_bytes(data[: len(data) // 2], "half.png")  # the header is whole: it opens ...
    with pytest.raises(ImageError, match="^half.png: .*truncated"):
        truncated.decode(3, (32, 32))  # ... and fails to decode
    with pytest.raises(ImageTooLarge, match="^b.png: image is too large"):
        open_image_bytes(png_bomb(20_000, 20_000), "b.png")  # refused from its header alone
    with pytest.raises(ImageError, match="^e: empty"):
        open_image_bytes(b"", "e")


def test_metadata_serves_the_models_test_metrics_as_spec_names_them(model):
    """SPEC.md: ``GET /metadata`` (classes, task, input, threshold, metrics, version)."""
    import onnx

    proto = onnx.load(model)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "convspec.test_metrics", '{"accuracy": 0.75, "f1": 0.7}'
    onnx.save(proto, model)
    with TestClient(create_app(model, max_bytes=200_000)) as c:
        m = c.get("/metadata").json()
    assert m["metrics"] == m["test_metrics"] == {"accuracy": 0.75, "f1": 0.7}

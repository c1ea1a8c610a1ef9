"""Images as they come: broken ones are named and refused, odd-but-valid ones load right, and training
and serving see the same pixels (EXIF orientation included).

A "probe" ONNX model (conftest.probe_model) outputs the pixels it is fed, so what
``Predictor`` serves is checked pixel by pixel, end to end through ONNX Runtime.
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from convspec.runtime import Predictor

from .conftest import (
    cli,
    probe_model,
    probe_pixels,
    run_with_peak,
    save_png,
    tiny_spec,
    user_error,
    write,
)

H, W = 6, 8


@pytest.fixture
def probe(tmp_path) -> Path:
    return probe_model(tmp_path / "probe.onnx", channels=1, size=(H, W))


def gradient(h=H, w=W) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 5 % 256).astype(np.uint8)


def png_bytes(width: int, height: int, idat: bytes, bit_depth: int = 8, colour: int = 0) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb(path: Path, side: int = 30_000) -> Path:
    """A valid PNG header claiming side x side grey pixels (900 M for 30,000), in a file of a few KB."""
    return write(path, png_bytes(side, side, zlib.compress(b"\x00" * 4096)))


# ------------------------------------------------------------------ refused, by name


def make_truncated(d: Path) -> Path:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(d / "full.png")
    data = (d / "full.png").read_bytes()
    return write(d / "truncated.png", data[: len(data) // 2])


BAD_IMAGES = {
    "truncated": (make_truncated, ["truncated.png", "truncated"]),
    "zero-byte": (lambda d: write(d / "zero.png", b""), ["zero.png", "empty file (0 bytes)"]),
    "text-named-png": (lambda d: write(d / "notes.png", "shopping list\n"), ["notes.png", "not an image"]),
    "decompression-bomb": (lambda d: bomb(d / "bomb.png"), ["bomb.png", "too large", "900000000 pixels"]),
    "unsupported-format": (
        lambda d: (
            (Image.fromarray(gradient()).save(d / "x.ppm"), os.replace(d / "x.ppm", d / "pgm.png"))[-1] or d / "pgm.png"
        ),
        ["pgm.png", "unsupported image format"],
    ),
    "missing-file": (lambda d: d / "ghost.png", ["ghost.png", "not found"]),
    "symlink-loop-file": (
        lambda d: (os.symlink("self.png", d / "self.png"), d / "self.png")[1],
        ["self.png", "cannot read"],
    ),
    "empty-folder": (lambda d: (d / "nothing").mkdir() or d / "nothing", ["nothing", "no images in this folder"]),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_predict_names_each_bad_image(name, probe, tmp_path):
    make, words = BAD_IMAGES[name]
    bad = make(tmp_path)
    user_error(cli("predict", probe, bad), *words)


def test_good_images_are_still_predicted_beside_bad_ones(probe, tmp_path):
    good = save_png(tmp_path / "good.png", 77, (H, W))
    result = cli("predict", probe, good, make_truncated(tmp_path), "--format", "json")
    user_error(result, "truncated.png", "1 input could not be predicted; 1 predicted", max_lines=3)
    assert '"source": "' + str(good) in result.stdout


def test_decompression_bomb_costs_no_memory(probe, tmp_path):
    """A 30,000 x 30,000 claim in a small file: refused from the header, in a child that stays small."""
    path = bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 10_000
    result, peak_mb = run_with_peak([sys.executable, "-m", "convspec.compiler", "predict", probe, path])
    user_error(result, "bomb.png", "too large")
    assert peak_mb < 600, f"the child peaked at {peak_mb:.0f} MB"  # decoding it would take 900 MB at least


def test_decompression_bomb_in_training_data_is_named(tmp_path):
    for k, name in enumerate("ab"):
        for i in range(4):
            save_png(tmp_path / "data" / name / f"{i}.png", 40 + 100 * k)
    bomb(tmp_path / "data" / "a" / "bomb.png")
    spec = write(tmp_path / "spec.yaml", tiny_spec("{type: folder, path: data}", data_extra="  on_bad_image: error\n"))
    user_error(cli("train", spec, "--out", tmp_path / "runs"), "bomb.png", "too large")


# ------------------------------------------------------------ odd but valid: exact pixels


def test_jpeg_named_png_loads_by_content(probe, tmp_path):
    Image.fromarray(gradient()).save(tmp_path / "real.jpg", quality=95)
    os.link(tmp_path / "real.jpg", tmp_path / "fake.png")
    p = Predictor(probe, providers="cpu")
    as_jpg, as_png = probe_pixels(p, [tmp_path / "real.jpg", tmp_path / "fake.png"])
    assert np.array_equal(as_jpg, as_png)
    assert np.abs(as_png[0].astype(int) - gradient()).max() <= 8  # JPEG, quality 95
    assert cli("predict", probe, tmp_path / "fake.png").exit_code == 0


def test_16_bit_png_is_scaled_to_8_bits(probe, tmp_path):
    values = (gradient().astype(np.uint32) * 257 + 100).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    [got] = probe_pixels(Predictor(probe, providers="cpu"), [tmp_path / "deep.png"])
    expected = ((values.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    assert np.array_equal(got[0], expected)


def test_12_bit_images_get_the_same_pixels_in_training_predict_and_serve(tmp_path):
    """``input.bits_stored: 12``: training scales 0..4095 to 0..255, and the exported model's
    metadata makes predict and serve do the same."""
    from fastapi.testclient import TestClient

    from convspec.compiler.data.loading import load_dataset
    from convspec.runtime.serve import create_app
    from convspec.specs import load_spec

    folder = tmp_path / "data"
    xray = (gradient().astype(np.uint32) * 4095 // 255).astype(np.uint16)  # 12 bits in a 16-bit PNG
    for k, name in enumerate("ab"):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((xray // (k + 1) + i).astype(np.uint16)).save(folder / name / f"{i}.png")
    text = tiny_spec("{type: folder, path: data}").replace("size: [8, 8]", f"size: [{H}, {W}], bits_stored: 12")
    spec = load_spec(write(tmp_path / "spec.yaml", text))
    data = load_dataset(spec, log=lambda _m: None)
    trained = data.images[data.files.index(str(folder / "a" / "0.png"))]
    assert np.array_equal(trained[0], (xray.astype(np.int64) * 255 + 2047) // 4095) and trained.max() > 200

    probe = probe_model(tmp_path / "probe.onnx", 1, (H, W), bits_stored=12)
    [served] = probe_pixels(Predictor(probe, providers="cpu"), [folder / "a" / "0.png"])
    assert np.array_equal(served, trained)
    with TestClient(create_app(probe)) as client:
        assert client.get("/metadata").json()["input"]["bits_stored"] == 12
        body = (folder / "a" / "0.png").read_bytes()
        reply = client.post(f"/predict?top_k={H * W}", content=body, headers={"content-type": "image/png"})
    assert reply.status_code == 200, reply.text
    (pred,) = reply.json()["predictions"]
    by_pixel = {int(t["label"][1:]): t["probability"] for t in pred["top"]}
    assert np.array_equal(np.array([by_pixel[i] for i in range(H * W)]).reshape(1, H, W), trained)


def test_cmyk_jpeg_loads_as_its_colours(tmp_path):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, : W // 2] = (200, 30, 30)
    rgb[:, W // 2 :] = (20, 40, 220)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "print.jpg", quality=100)
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    p = Predictor(probe_model(tmp_path / "rgb.onnx", channels=3, size=(H, W)), providers="cpu")
    [got] = probe_pixels(p, [tmp_path / "print.jpg"])
    assert np.abs(got.transpose(1, 2, 0).astype(int) - rgb).max() <= 12


def test_palette_with_transparency_goes_onto_black(probe, tmp_path):
    index = np.zeros((H, W), np.uint8)
    index[:, W // 2 :] = 1
    im = Image.fromarray(index, mode="P")
    im.putpalette([250, 250, 250, 120, 120, 120] + [0] * 762)
    im.save(tmp_path / "pal.png", transparency=0)  # index 0 (white) is transparent
    [got] = probe_pixels(Predictor(probe, providers="cpu"), [tmp_path / "pal.png"])
    assert (got[0][:, : W // 2] == 0).all() and (got[0][:, W // 2 :] == 120).all()


def test_animated_gif_gives_its_first_frame(probe, tmp_path):
    first, second = np.full((H, W), 30, np.uint8), np.full((H, W), 220, np.uint8)
    first[0, 0] = 200
    Image.fromarray(first).save(
        tmp_path / "anim.gif", save_all=True, append_images=[Image.fromarray(second)], duration=50
    )
    assert getattr(Image.open(tmp_path / "anim.gif"), "n_frames", 1) == 2
    [got] = probe_pixels(Predictor(probe, providers="cpu"), [tmp_path / "anim.gif"])
    assert np.array_equal(got[0], first)


def test_exif_rotated_jpeg_same_pixels_in_training_and_deployment(tmp_path):
    """A phone photo stored sideways (orientation 6): compiler.data and Predictor see the same,
    upright pixels."""
    from convspec.compiler.data.loading import load_dataset
    from convspec.runtime.images import prepare_array
    from convspec.specs import load_spec

    stored = np.zeros((16, 24), np.uint8)  # stored 24 wide, 16 high
    stored[:, :8] = 250  # a bright band on the stored left: the top once rotated (orientation 6)
    stored[4:6, 12:20] = 120
    exif = Image.Exif()
    exif[0x0112] = 6
    folder = tmp_path / "data"
    for k, name in enumerate("ab"):
        for i in range(3):
            save_png(folder / name / f"{i}.png", 60 + 100 * k, (24, 16))
    Image.fromarray(stored).save(folder / "a" / "phone.jpg", quality=100, exif=exif.tobytes())
    size = (24, 16)  # upright: 24 high, 16 wide. Why not smaller: below it libjpeg-turbo's scaled
    # IDCT kicks in, in training and serving alike, but not in the reference below
    spec = load_spec(
        write(
            tmp_path / "spec.yaml",
            tiny_spec("{type: folder, path: data}").replace("size: [8, 8]", f"size: [{size[0]}, {size[1]}]"),
        )
    )
    data = load_dataset(spec, log=lambda _m: None)
    trained = data.images[[os.path.basename(f) for f in data.files].index("phone.jpg")]

    p = Predictor(probe_model(tmp_path / "probe.onnx", 1, size), providers="cpu")
    [served] = probe_pixels(p, [folder / "a" / "phone.jpg"])
    assert np.array_equal(trained, served)

    upright = np.asarray(ImageOps.exif_transpose(Image.open(folder / "a" / "phone.jpg")).convert("L"))
    assert upright.shape == (24, 16)
    assert np.array_equal(served, prepare_array(upright, 1, size))
    assert served[0, :2].mean() > 200 and served[0, -2:].mean() < 40  # the band is on top: rotated


def test_file_and_class_names_are_shown_verbatim_not_as_markup(probe, tmp_path):
    """Rich reads ``[/]`` and ``[bold]`` as markup; a path holding them once crashed the table."""
    odd = [
        save_png(tmp_path / "dir[" / "]x.png", 5, (H, W)),
        save_png(tmp_path / "[bold]y.png", 9, (H, W)),
        save_png(tmp_path / "sp ace\u00e9.png", 9, (H, W)),
    ]
    result = cli("predict", probe, *odd)
    assert result.exit_code == 0, result.stderr
    for path in odd:
        assert str(path).replace(str(tmp_path), "") in result.stdout.replace("\n", "")
    folder = tmp_path / "labelled"
    save_png(folder / "[bold]p0" / "0.png", 0, (H, W))
    save_png(folder / "p1" / "0.png", 0, (H, W))
    user_error(cli("evaluate", probe, folder), "classes the model does not know: [bold]p0")  # verbatim


def _seed_images() -> dict[str, bytes]:
    import io

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    out = {}
    for fmt, mode in [
        ("PNG", "RGB"),
        ("PNG", "P"),
        ("PNG", "RGBA"),
        ("JPEG", "RGB"),
        ("JPEG", "CMYK"),
        ("GIF", "P"),
        ("TIFF", "RGB"),
        ("BMP", "RGB"),
        ("WEBP", "RGBA"),
    ]:
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buf, format=fmt)
        out[f"{fmt.lower()}-{mode}"] = buf.getvalue()
    return out


SEED_IMAGES = _seed_images()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corrupted_images_load_or_raise_image_error(tmp_path):
    """Hypothesis corrupts valid files of every format (byte flips, cuts, insertions): the loader
    returns pixels of the right shape or raises ImageError naming the file, nothing else."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from convspec.runtime.images import ImageError, load_image

    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(
        name=st.sampled_from(sorted(SEED_IMAGES)),
        rng=st.randoms(use_true_random=False),
        channels=st.sampled_from([1, 3]),
        resize=st.sampled_from(["stretch", "letterbox", "crop"]),
    )
    def check(name, rng, channels, resize):
        data = bytearray(SEED_IMAGES[name])
        for _ in range(rng.randint(1, 5)):
            i = rng.randrange(len(data) + 1)
            kind = rng.random()
            if kind < 0.5 and i < len(data):
                data[i] = rng.randrange(256)
            elif kind < 0.7:
                data = data[:i]
            elif kind < 0.85:
                data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            else:
                del data[i : i + rng.randint(1, 16)]
        path = tmp_path / f"x.{name.split('-')[0]}"
        path.write_bytes(bytes(data))
        try:
            pixels = load_image(path, channels, (7, 9), resize)
        except ImageError as e:
            assert e.path == str(path) and e.reason
        else:
            assert pixels.shape == (channels, 7, 9) and pixels.dtype == np.uint8

    check()


def test_a_tiff_pillow_cannot_read_is_named_as_a_tiff(tmp_path):
    """A 64-bit float TIFF (tifffile writes them; Pillow reads none) was "not an image"."""
    import numpy as np

    from convspec.runtime import ImageError, load_image

    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "f64.tif", np.linspace(0, 1, 64).reshape(8, 8))
    with pytest.raises(ImageError, match="f64.tif: a TIFF whose sample format, bit depth or compression Pillow"):
        load_image(tmp_path / "f64.tif", 1, (8, 8))

"""The one image loader: decoding real files of every supported kind, refusing bad ones, resizing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from PIL import Image

from convspec.runtime.images import (
    IMAGE_EXTENSIONS,
    ImageError,
    decode_into,
    is_image_file,
    load_image,
    load_images,
    prepare_array,
    sample_pixels,
)
from convspec.specs import ConvspecError


def _rgb(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _save(path, array, **kw):
    Image.fromarray(array).save(path, **kw)
    return path


# ----------------------------------------------------------------- formats


def test_png_round_trip_is_exact(tmp_path):
    a = _rgb()
    x = load_image(_save(tmp_path / "a.png", a), 3, (20, 30))
    assert x.dtype == np.uint8 and x.shape == (3, 20, 30)
    assert np.array_equal(x.transpose(1, 2, 0), a)


def test_grey_uses_pillow_luma(tmp_path):
    a = _rgb()
    x = load_image(_save(tmp_path / "a.png", a), 1, (20, 30))
    assert x.shape == (1, 20, 30)
    assert np.array_equal(x[0], np.asarray(Image.fromarray(a).convert("L")))


def test_grey_file_to_three_channels_replicates(tmp_path):
    g = _rgb()[..., 0]
    x = load_image(_save(tmp_path / "g.png", g), 3, (20, 30))
    assert all(np.array_equal(x[c], g) for c in range(3))


@pytest.mark.parametrize(
    "ext,kw",
    [(".bmp", {}), (".tif", {}), (".tiff", {"compression": "tiff_lzw"}), (".webp", {"lossless": True}), (".gif", {})],
)
def test_other_formats_load(tmp_path, ext, kw):
    g = _rgb()[..., 1]
    x = load_image(_save(tmp_path / f"g{ext}", g, **kw), 1, (20, 30))
    assert np.array_equal(x[0], g)


def test_jpeg_and_case_insensitive_extension(tmp_path):
    a = np.full((16, 16, 3), 120, np.uint8)
    x = load_image(_save(tmp_path / "A.JPG", a, quality=95), 3, (16, 16))
    assert np.abs(x.astype(int) - 120).max() <= 2
    assert is_image_file("x/Y.JPEG") and is_image_file("a.TiFf") and not is_image_file("a.txt")
    assert ".webp" in IMAGE_EXTENSIONS


def test_exif_orientation_is_applied(tmp_path):
    # Stored 10 high x 20 wide, left half white; orientation 6 = "rotate 90 degrees clockwise to view".
    stored = np.zeros((10, 20, 3), np.uint8)
    stored[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    x = load_image(tmp_path / "r.jpg", 1, (20, 10))  # viewed: 20 high x 10 wide
    assert x[0, :8].mean() > 240 and x[0, 12:].mean() < 15  # the stored left became the top


def test_16_bit_png_is_scaled(tmp_path):
    a = np.array([[0, 65535, 32768, 257]], np.uint16).repeat(4, 0)
    Image.fromarray(a).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as im:
        assert im.mode.startswith("I")
    x = load_image(tmp_path / "d.png", 1, (4, 4))
    assert x[0, 0].tolist() == [0, 255, 128, 1]
    assert np.array_equal(prepare_array(a, 1, (4, 4)), x)


def test_bits_stored_scales_16_bit_grey_from_its_own_range(tmp_path):
    a = np.array([[0, 4095, 2048, 5000]], np.uint16).repeat(4, 0)  # a 12-bit image; 5000 is out of range
    Image.fromarray(a).save(tmp_path / "x.png")
    x = load_image(tmp_path / "x.png", 1, (4, 4), bits_stored=12)
    assert x[0, 0].tolist() == [0, 255, 128, 255]  # 2048 * 255 / 4095 = 127.5 -> 128; 5000 clips
    assert load_image(tmp_path / "x.png", 1, (4, 4))[0, 0].tolist() == [0, 16, 8, 19]  # as full-range 16-bit
    assert np.array_equal(prepare_array(a, 1, (4, 4), bits_stored=12), x)
    assert np.array_equal(load_images([tmp_path / "x.png"], 1, (4, 4), bits_stored=12)[0][0], x)
    # 8-bit images are not affected; a value outside 8..16 is refused
    _save(tmp_path / "g.png", np.full((4, 4), 200, np.uint8))
    assert load_image(tmp_path / "g.png", 1, (4, 4), bits_stored=12)[0, 0, 0] == 200
    with pytest.raises(ValueError, match="bits_stored must be an integer from 8 to 16"):
        load_image(tmp_path / "x.png", 1, (4, 4), bits_stored=17)


def test_bits_stored_in_a_large_image_converted_in_strips(tmp_path, monkeypatch):
    from convspec.runtime import images, modes

    a = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "big.png")
    whole = load_image(tmp_path / "big.png", 1, (64, 64), bits_stored=12)
    monkeypatch.setattr(images, "STREAM_PIXELS", 100)
    monkeypatch.setattr(modes, "STRIP_PIXELS", 64 * 5)
    assert np.array_equal(load_image(tmp_path / "big.png", 1, (64, 64), bits_stored=12), whole)
    assert whole.max() == 255


def test_sample_pixels_reads_16_bit_grey_and_float_files_only(tmp_path):
    paths = []
    for i in range(20):
        p = tmp_path / f"{i:02d}.png"
        if i % 2:
            Image.fromarray(np.full((4, 4), 100 * i, np.uint16)).save(p)
        else:
            _save(p, np.full((4, 4), 250, np.uint8))
        paths.append(p)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    Image.fromarray(np.full((4, 4), 0.5, np.float32), mode="F").save(tmp_path / "f.tif")
    sampled = sample_pixels([*paths, tmp_path / "bad.png", tmp_path / "f.tif"], sample=22)
    assert [p.kind for p in sampled] == ["16-bit"] * 10 + ["float"]
    assert max(p.high for p in sampled) == 1900 and sampled[-1].low == sampled[-1].high == 0.5
    assert sample_pixels(paths[::2]) == [] and sample_pixels([]) == []


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=95)  # red ink
    x = load_image(tmp_path / "c.jpg", 3, (16, 16)).reshape(3, -1).mean(axis=1)
    assert x[0] > 230 and x[1] < 25 and x[2] < 25


def test_palette_transparency_is_composited_onto_black(tmp_path):
    im = Image.new("P", (8, 4))
    im.putpalette([255, 255, 255, 255, 0, 0] + [0] * 762)
    px = np.zeros((4, 8), np.uint8)
    px[:, 4:] = 1
    im.putdata(px.ravel().tolist())
    im.info["transparency"] = 0  # index 0 (white) is transparent
    im.save(tmp_path / "p.png", transparency=0)
    x = load_image(tmp_path / "p.png", 3, (4, 8))
    assert (x[:, :, :4] == 0).all()  # transparent white -> black
    assert (x[0, :, 4:] == 255).all() and (x[1:, :, 4:] == 0).all()


def test_rgba_and_la_alpha_composited(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = 128
    x = load_image(_save(tmp_path / "a.png", rgba), 3, (2, 2))
    assert x[:, 0, 0].tolist() == [100, 50, 25]  # round(c * 128 / 255)
    la = Image.fromarray(np.dstack([np.full((2, 2), 200, np.uint8), np.full((2, 2), 255, np.uint8)]), "LA")
    la.save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png", 1, (2, 2)) == 200).all()
    assert np.array_equal(prepare_array(rgba, 3, (2, 2)), x)


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 255)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(tmp_path / "anim.gif") as im:
        assert im.n_frames == 2
    assert (load_image(tmp_path / "anim.gif", 1, (8, 8)) == 0).all()


# ------------------------------------------------------------- bad images


def test_bad_files_are_errors_with_path_and_reason(tmp_path):
    _save(tmp_path / "ok.png", _rgb(64, 64))
    raw = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(raw[: len(raw) // 2])
    _save(tmp_path / "ok.jpg", _rgb(64, 64))
    jpg = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    Image.new("RGB", (4, 4)).save(tmp_path / "icon.png", format="ICO")
    expected = {
        "trunc.png": "cannot decode image (truncated file)",
        "trunc.jpg": "cannot decode image (truncated file)",
        "empty.jpg": "empty file (0 bytes)",
        "text.png": "not an image (unrecognised format)",
        "missing.png": "file not found",
        "icon.png": "unsupported image format ICO",
    }
    for name, reason in expected.items():
        with pytest.raises(ImageError) as e:
            load_image(tmp_path / name, 3, (8, 8))
        assert e.value.path == str(tmp_path / name)
        assert e.value.reason.startswith(reason)
        assert str(e.value) == f"{tmp_path / name}: {e.value.reason}"
        assert isinstance(e.value, ConvspecError)


def test_image_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(ImageError("a/b.png", "empty file (0 bytes)")))
    assert (e.path, e.reason, str(e)) == ("a/b.png", "empty file (0 bytes)", "a/b.png: empty file (0 bytes)")


@pytest.mark.parametrize("pixels", [150, 400])  # above the limit (Pillow warns) and above 2x (Pillow raises)
@pytest.mark.parametrize("suffix", [".png", ".jpg"])  # JPEG: the header is read by libjpeg-turbo first
def test_decompression_bomb_refused_by_name(tmp_path, monkeypatch, pixels, suffix):
    path = _save(tmp_path / f"big{suffix}", np.zeros((10, pixels // 10), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning reaches the user either
        with pytest.raises(ImageError) as e:
            load_image(path, 1, (8, 8))
        assert str(e.value) == f"{path}: image is too large: {pixels} pixels, limit 100"
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)  # at the limit: decoded
        assert load_image(path, 1, (8, 8)).shape == (1, 8, 8)


# ------------------------------------------------------------------ resize


def _wide(tmp_path):
    """20 high x 40 wide: black, white middle half (columns 10..29)."""
    a = np.zeros((20, 40), np.uint8)
    a[:, 10:30] = 255
    return _save(tmp_path / "wide.png", a)


def test_stretch_ignores_aspect(tmp_path):
    x = load_image(_wide(tmp_path), 1, (10, 10), "stretch")[0]
    assert x.shape == (10, 10)
    assert (x[:, 3:7] == 255).all() and (x[:, 0] < 50).all() and (x[:, -1] < 50).all()


def test_crop_keeps_the_centre(tmp_path):
    x = load_image(_wide(tmp_path), 1, (10, 10), "crop")[0]
    assert (x == 255).all()  # the centre 20x20 square is all white


def test_letterbox_pads_centered_with_zero(tmp_path):
    a = np.full((20, 40), 200, np.uint8)
    x = load_image(_save(tmp_path / "w.png", a), 1, (32, 32), "letterbox")[0]
    # scale 0.8 -> 16 high x 32 wide, pasted at row (32 - 16) // 2 = 8
    assert (x[:8] == 0).all() and (x[24:] == 0).all() and (x[8:24] == 200).all()
    t = load_image(_save(tmp_path / "t.png", a.T.copy()), 3, (32, 32), "letterbox")
    assert (t[:, :, :8] == 0).all() and (t[:, :, 24:] == 0).all() and (t[:, :, 8:24] == 200).all()


def test_same_size_is_untouched_and_upscale_is_bilinear(tmp_path):
    a = np.zeros((2, 2), np.uint8)
    a[0, 0] = 255
    for how in ("stretch", "letterbox", "crop"):
        assert np.array_equal(prepare_array(a, 1, (2, 2), how)[0], a)
    up = prepare_array(a, 1, (4, 4))[0]
    assert up[0, 0] == 255 and 0 < up[1, 1] < 255 and up[3, 3] == 0


# ----------------------------------------------------------------- arrays


def test_prepare_array_layouts_agree(tmp_path):
    a = _rgb(12, 10)
    hwc = prepare_array(a, 3, (6, 5))
    assert np.array_equal(prepare_array(a.transpose(2, 0, 1), 3, (6, 5)), hwc)
    assert np.array_equal(hwc, load_image(_save(tmp_path / "a.png", a), 3, (6, 5)))
    g = a[..., 0]
    assert np.array_equal(prepare_array(g, 1, (12, 10)), prepare_array(g[None], 1, (12, 10)))
    assert np.array_equal(prepare_array(g[..., None], 1, (12, 10))[0], g)
    f = prepare_array(np.full((3, 3), 0.5), 1, (3, 3))
    assert (f == 128).all()
    assert (prepare_array(np.ones((3, 3), bool), 1, (3, 3)) == 255).all()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((5, 5, 5), np.uint8),
        np.zeros((2, 3, 4, 5), np.uint8),
        np.full((3, 3), 2.0),
        np.full((3, 3), 300, np.int64),
        np.zeros((0, 4), np.uint8),
    ],
)
def test_prepare_array_refuses_unreadable_arrays(bad):
    with pytest.raises(ImageError) as e:
        prepare_array(bad, 1, (4, 4))
    assert str(e.value).startswith("<array>: ")


# ------------------------------------------------------------------- batch


def test_load_images_keeps_order_and_skips_bad(tmp_path):
    paths, expected = [], []
    for i in range(150):  # more than one chunk, so the thread pool is used
        if i in (7, 100):
            (tmp_path / f"{i}.png").write_text("junk")
        else:
            _save(tmp_path / f"{i}.png", np.full((5, 7), i, np.uint8))
            expected.append(i)
        paths.append(str(tmp_path / f"{i}.png"))
    done = []
    images, kept, bad = load_images(paths, 1, (5, 7), workers=4, progress=done.append)
    assert kept == expected and images.shape == (148, 1, 5, 7)
    assert [int(x[0, 0, 0]) for x in images] == expected
    assert [p for p, _ in bad] == [paths[7], paths[100]]
    assert sum(done) == 150  # every file finished, decoded or not
    one, _, _ = load_images(paths, 1, (5, 7), workers=1)
    assert np.array_equal(one, images)
    with pytest.raises(ImageError) as e:
        load_images(paths, 1, (5, 7), workers=4, on_error="error")
    assert e.value.path == paths[7]


def test_decode_into_leaves_failed_rows(tmp_path):
    _save(tmp_path / "a.png", np.full((3, 3), 9, np.uint8))
    out = np.full((2, 1, 3, 3), 77, np.uint8)
    bad = decode_into([tmp_path / "missing.png", tmp_path / "a.png"], out, 1, (3, 3))
    assert bad == [(0, str(tmp_path / "missing.png"), "file not found")]
    assert (out[0] == 77).all() and (out[1] == 9).all()


def test_runtime_does_not_import_torch(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        _save(tmp_path / name / "1.png", _rgb())
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any "import torch" now fails
        from convspec.runtime.images import load_image
        from convspec.runtime.datasets import list_folder
        samples, names = list_folder({str(tmp_path)!r})
        assert names == ["cat", "dog"], names
        assert load_image(samples[0][0], 3, (8, 8)).shape == (3, 8, 8)
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


@pytest.mark.parametrize("how", ["stretch", "letterbox", "crop"])
def test_large_jpeg_reduced_decode_matches_full_decode(tmp_path, how):
    blocks = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(blocks.repeat(50, 0).repeat(50, 1)).save(tmp_path / "big.jpg", quality=95)  # 600x800
    fast = load_image(tmp_path / "big.jpg", 3, (48, 64), how)
    with Image.open(tmp_path / "big.jpg") as im:  # full decode, then the same conversion
        slow = prepare_array(np.asarray(im.convert("RGB")), 3, (48, 64), how)
    assert fast.shape == slow.shape == (3, 48, 64)
    assert np.abs(fast.astype(int) - slow).mean() < 3


def test_letterbox_box_of_a_scaled_jpeg_decode_follows_the_files_own_aspect(tmp_path):
    """A JPEG decoded at a smaller scale has rounded sides (144x38 at 2/8 is 36x10, not 36x9.5):
    its letterbox box is the file's own (7 rows at 28 wide, as the PNG), not the decode's (8)."""
    from PIL import Image

    from convspec.runtime import load_image

    rng = np.random.default_rng(0)
    pixels = rng.integers(60, 255, (38, 144), dtype=np.uint8)
    boxes = []
    for name in ("strip.png", "strip.jpg"):
        Image.fromarray(pixels).save(tmp_path / name, quality=95)
        a = load_image(tmp_path / name, 1, (36, 28), "letterbox")
        rows = np.flatnonzero(a[0].max(axis=1) > 0)
        boxes.append((rows.min(), rows.max()))
    assert boxes[0] == boxes[1] and boxes[0][1] - boxes[0][0] + 1 == round(38 * 28 / 144)

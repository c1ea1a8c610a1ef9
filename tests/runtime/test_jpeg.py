"""JPEG through libjpeg-turbo's scaled IDCT: the same pixels as Pillow at full scale, M/8 scales
below it, Pillow's path for what it leaves (CMYK, cut-short files), on real photographs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image, ImageOps

from convspec.runtime import images, jpeg
from convspec.runtime.images import ImageError, load_image, load_image_bytes, prepare_array

DATA = Path(skimage.__file__).parent / "data"


def photo(name: str = "chelsea.png", side: int | None = None) -> Image.Image:
    """A real photograph from scikit-image's data folder, RGB, optionally resized to ``side`` px square."""
    im = Image.open(DATA / name).convert("RGB")
    return im.resize((side, side), Image.Resampling.BILINEAR) if side else im


def save_jpeg(path: Path, im: Image.Image, **kw) -> Path:
    im.save(path, "JPEG", quality=kw.pop("quality", 90), **kw)
    return path


def pillow_pixels(path: Path, channels: int) -> np.ndarray:
    """What Pillow alone decodes (grey: the luma plane, as the loader's draft "L" did), as (C, H, W)."""
    with Image.open(path) as im:
        if channels == 1:
            im.draft("L", None)
        a = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


@pytest.mark.parametrize("name", ["chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg"])
@pytest.mark.parametrize(
    "options", [{}, {"subsampling": 0}, {"subsampling": 1}, {"progressive": True}, {"quality": 60}]
)
def test_full_scale_pixels_are_pillows_own(tmp_path, name, options):
    im = photo(name)
    f = save_jpeg(tmp_path / "p.jpg", im, **options)
    for channels in (3, 1):
        got = load_image(f, channels, (im.height, im.width))
        assert np.array_equal(got, pillow_pixels(f, channels)), (name, options, channels)


def test_grey_jpeg_as_grey_and_as_rgb(tmp_path):
    grey = Image.open(DATA / "camera.png").convert("L")
    f = save_jpeg(tmp_path / "g.jpg", grey)
    size = (grey.height, grey.width)
    one = load_image(f, 1, size)
    assert np.array_equal(one, pillow_pixels(f, 1))
    assert np.array_equal(load_image(f, 3, size), np.repeat(one, 3, axis=0))


@pytest.mark.parametrize(
    "stored,need,expected",
    [
        ((256, 256), (224, 224), (224, 224)),  # 7/8
        ((300, 300), (224, 224), (225, 225)),  # 6/8, libjpeg rounds up
        ((512, 512), (224, 224), (256, 256)),  # 4/8: 3/8 would be 192
        ((2000, 1500), (224, 224), (500, 375)),  # 2/8: 1/8 would be 188 high
        ((224, 224), (224, 224), (224, 224)),  # full scale
        ((100, 80), (224, 224), (100, 80)),  # enlarging: full scale, the resize does the rest
        ((640, 480), (300, 10), (320, 240)),  # the larger need decides
    ],
)
def test_scaled_size_is_the_smallest_m_over_8_that_keeps_the_need(stored, need, expected):
    assert jpeg.scaled_size(stored, need) == expected


@pytest.mark.parametrize("px", [256, 300, 512])
def test_scaled_decode_is_close_to_a_full_decode_and_resize(tmp_path, px):
    """Decoding at M/8 replaces Pillow's full decode + bilinear resize: a grey level or two apart."""
    for name in ("chelsea.png", "astronaut.png", "coffee.png"):
        f = save_jpeg(tmp_path / f"{px}.jpg", photo(name, px))
        got = load_image(f, 3, (224, 224)).astype(int)
        with Image.open(f) as im:
            full = np.asarray(im.convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
        diff = np.abs(got - full)
        assert diff.mean() < 3.0 and np.percentile(diff, 99) < 20, (name, px, diff.mean())


def test_the_scaled_path_decodes_fewer_pixels(tmp_path, monkeypatch):
    f = save_jpeg(tmp_path / "p.jpg", photo("chelsea.png", 256))
    seen = []
    real = jpeg.simplejpeg.decode_jpeg

    def spy(*args, **kwargs):
        seen.append(real(*args, **kwargs).shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(jpeg.simplejpeg, "decode_jpeg", spy)
    load_image(f, 3, (224, 224))
    load_image(f, 3, (112, 112))
    assert seen == [(224, 224, 3), (128, 128, 3)]


def test_which_jpegs_pillow_opens_and_which_it_decodes(tmp_path, monkeypatch):
    """Plain JPEGs (baseline or progressive, grey or colour) never reach Pillow; one with EXIF is
    opened by Pillow for its orientation but decoded by libjpeg-turbo; CMYK is Pillow's alone."""
    im = photo("coffee.png", 200)
    exif = Image.Exif()
    exif[0x0112] = 1
    files = {
        "plain": save_jpeg(tmp_path / "p.jpg", im),
        "progressive": save_jpeg(tmp_path / "q.jpg", im, progressive=True),
        "grey": save_jpeg(tmp_path / "g.jpg", im.convert("L")),
        "exif": save_jpeg(tmp_path / "e.jpg", im, exif=exif.tobytes()),
        "cmyk": save_jpeg(tmp_path / "c.jpg", im.convert("CMYK")),
    }
    headers = {}
    for kind, f in files.items():
        with open(f, "rb") as fp:
            headers[kind] = jpeg.read_header(fp)
    assert {k: h.plain for k, h in headers.items()} == {
        "plain": True, "progressive": True, "grey": True, "exif": False, "cmyk": False
    }  # fmt: skip
    assert headers["exif"].app1 and headers["cmyk"].colorspace == "CMYK" and headers["grey"].colorspace == "Gray"

    opened, loaded = [], []
    real_open, real_load = images.open_with_pillow, images._load

    def pillow_open(name, *args, **kwargs):
        opened.append(name)
        return real_open(name, *args, **kwargs)

    def pillow_load(name, im):
        loaded.append(name)
        return real_load(name, im)

    monkeypatch.setattr(images, "open_with_pillow", pillow_open)
    monkeypatch.setattr(images, "_load", pillow_load)
    for f in files.values():
        assert load_image(f, 3, (100, 100)).shape == (3, 100, 100)
        assert load_image(f, 1, (100, 100)).shape == (1, 100, 100)
    assert sorted(set(opened)) == sorted(str(files[k]) for k in ("exif", "cmyk"))
    assert sorted(set(loaded)) == [str(files["cmyk"])]


def test_the_app1_walk_reads_marker_lengths_only():
    soi, sos = b"\xff\xd8", b"\xff\xda\x00\x02"
    segment = lambda marker, body: bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body  # noqa: E731
    jfif = segment(0xE0, b"JFIF\x00" + b"\xe1" * 9)  # an APP1 marker byte inside a segment is data
    assert jpeg._has_app1(soi + jfif + sos) is False
    assert jpeg._has_app1(soi + jfif + segment(0xE1, b"Exif\x00\x00") + sos) is True
    assert jpeg._has_app1(soi + b"\xff\xff" + jfif + sos) is False  # fill bytes
    assert jpeg._has_app1(soi + jfif) is None  # no scan within the bytes read: Pillow decides
    assert jpeg._has_app1(soi + b"\x00\x01" + sos) is None  # garbage where a marker must be


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_turned_upright(tmp_path, orientation):
    stored = photo("astronaut.png").resize((96, 64))
    exif = Image.Exif()
    exif[0x0112] = orientation
    f = save_jpeg(tmp_path / "o.jpg", stored, exif=exif.tobytes())
    with Image.open(f) as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    size = upright.shape[:2]
    assert np.array_equal(load_image(f, 3, size), prepare_array(upright, 3, size))
    assert np.array_equal(load_image_bytes(f.read_bytes(), "o.jpg", 3, size), load_image(f, 3, size))


def test_cut_short_and_corrupt_jpegs_are_left_to_pillow_which_names_them(tmp_path):
    data = save_jpeg(tmp_path / "p.jpg", photo("chelsea.png", 128)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    broken = bytearray(data)
    broken[len(data) // 2 : len(data) // 2 + 400] = b"\xff" * 400
    (tmp_path / "broken.jpg").write_bytes(bytes(broken))
    for name in ("cut.jpg", "broken.jpg"):
        with open(tmp_path / name, "rb") as fp:
            assert jpeg.read_header(fp) == jpeg.Header(128, 128, "YCbCr", app1=False), name
            assert jpeg.decode(fp, (128, 128), (128, 128), grey=False) is None, name
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.jpg", 3, (64, 64))
    with pytest.raises(ImageError, match="broken.jpg: cannot decode image"):
        load_image(tmp_path / "broken.jpg", 3, (64, 64))


def test_a_jpeg_too_large_to_read_whole_goes_through_pillow(tmp_path, monkeypatch):
    f = save_jpeg(tmp_path / "p.jpg", photo("chelsea.png", 64))
    monkeypatch.setattr(jpeg, "MAX_FILE_BYTES", 100)
    with open(f, "rb") as fp:
        assert jpeg.decode(fp, (64, 64), (64, 64), grey=False) is None
    assert np.array_equal(load_image(f, 3, (64, 64)), pillow_pixels(f, 3))


def test_an_mpo_camera_file_decodes_its_first_frame(tmp_path):
    first, second = photo("chelsea.png", 96), photo("coffee.png", 96)
    f = tmp_path / "camera.mpo"
    first.save(f, "MPO", save_all=True, append_images=[second], quality=90)
    with Image.open(f) as im:
        assert im.format == "MPO"
        im.seek(0)
        want = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(load_image(f, 3, (96, 96)), want)


def test_uploads_and_files_get_the_same_scaled_pixels(tmp_path):
    f = save_jpeg(tmp_path / "p.jpg", photo("coffee.png", 256))
    buf = io.BytesIO(f.read_bytes())
    assert np.array_equal(load_image_bytes(buf.getvalue(), "body", 3, (224, 224)), load_image(f, 3, (224, 224)))

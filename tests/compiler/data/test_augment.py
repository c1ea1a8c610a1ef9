"""Augmentation: per-sample random parameters, batched, deterministic for a seeded generator."""

from __future__ import annotations

import pytest
import torch

from convspec.compiler.data.augment import Augmenter, build_augmenter
from convspec.specs import spec_from_dict

torch.set_num_threads(1)

ALL = [
    {"type": "flip", "horizontal": True, "vertical": True},
    {"type": "rotate", "degrees": 20},
    {"type": "scale", "range": [0.8, 1.2]},
    {"type": "translate", "fraction": [0.1, 0.2]},
    {"type": "random_crop", "padding": 2},
    {"type": "brightness", "factor": [0.7, 1.3]},
    {"type": "contrast", "factor": [0.5, 1.5]},
    {"type": "gaussian_noise", "std": 0.05},
    {"type": "cutout", "size": 4},
]


def make_augmenter(augment, channels=3):
    spec = spec_from_dict(
        {
            "version": 1,
            "task": "binary",
            "data": {"source": {"type": "folder", "path": "/nonexistent-convspec-test-data"}},
            "input": {"channels": channels, "size": [12, 10]},
            "augment": list(augment),
            "model": {"layers": [{"type": "flatten"}]},
        }
    )
    return build_augmenter(spec)


def images(n=4, c=3, h=12, w=10, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g).to(torch.float32)


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_augmentation_is_handled():
    from typing import get_args

    from convspec.specs.pipeline import AugmentStep

    kinds = {cls.model_fields["type"].annotation.__args__[0] for cls in get_args(get_args(AugmentStep)[0])}
    assert kinds == {a["type"] for a in ALL}


@pytest.mark.parametrize("op", ALL, ids=[a["type"] for a in ALL])
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_range_and_change(op, channels):
    aug = make_augmenter([op], channels)
    x = images(n=8, c=channels)
    out = aug(x, gen())
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 255
    assert not torch.equal(out, x)


def test_all_together_with_uint8_input_and_channels_last():
    aug = make_augmenter(ALL)
    x = images(n=6)
    out = aug(x.to(torch.uint8).contiguous(memory_format=torch.channels_last), gen())
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 255


@pytest.mark.parametrize(
    "op", [a for a in ALL if a["type"] != "flip"], ids=[a["type"] for a in ALL if a["type"] != "flip"]
)
def test_parameters_are_drawn_per_sample(op):
    """Two identical images in one batch come out different."""
    aug = make_augmenter([op])
    x = images(n=1).repeat(2, 1, 1, 1)
    out = aug(x, gen(3))
    assert not torch.allclose(out[0], out[1])


def test_p_zero_is_identity():
    full = make_augmenter(ALL)
    never = Augmenter([op.model_copy(update={"p": 0.0}) for op in full.geometric + full.photometric])
    x = images()
    assert torch.equal(never(x, gen()), x)
    assert make_augmenter([{**a, "p": 0.0} for a in ALL]) is None
    assert make_augmenter([]) is None
    mixed = make_augmenter([{"type": "rotate", "degrees": 9, "p": 0.0}, {"type": "flip", "p": 1.0}])
    assert [op.type for op in mixed.geometric] == ["flip"] and not mixed.photometric


def test_unfired_samples_are_nearly_unchanged_by_the_resample():
    """p is drawn per sample: with p=0.5 some samples keep identity geometry (up to float error)."""
    aug = make_augmenter([{"type": "rotate", "degrees": 30, "p": 0.5}])
    x = images(n=16)
    out = aug(x, gen(1))
    same = [(out[i] - x[i]).abs().max() < 1e-2 for i in range(16)]
    assert 0 < sum(same) < 16


@pytest.mark.parametrize(
    ("kw", "dims"),
    [
        ({"horizontal": True}, (-1,)),
        ({"horizontal": False, "vertical": True}, (-2,)),
        ({"horizontal": True, "vertical": True}, (-2, -1)),
    ],
)
def test_flip_p1_equals_torch_flip(kw, dims):
    aug = make_augmenter([{"type": "flip", "p": 1.0, **kw}])
    x = images()
    torch.testing.assert_close(aug(x, gen()), torch.flip(x, dims), atol=1e-3, rtol=0)


def test_random_crop_is_an_integer_shift_with_zero_fill():
    aug = make_augmenter([{"type": "random_crop", "padding": 3}])
    x = images(n=8)
    out = aug(x, gen(5))
    for i in range(8):
        padded = torch.nn.functional.pad(x[i], (3, 3, 3, 3))
        crops = [padded[:, a : a + 12, b : b + 10] for a in range(7) for b in range(7)]
        assert min(float((out[i] - c).abs().max()) for c in crops) < 1e-2


def test_brightness_multiplies_and_contrast_keeps_the_mean_grey():
    x = images(n=4, c=1) * 0.5
    b = make_augmenter([{"type": "brightness", "factor": [2.0, 2.0]}], channels=1)
    torch.testing.assert_close(b(x, gen()), x * 2.0)
    c = make_augmenter([{"type": "contrast", "factor": [0.0, 0.0]}], channels=1)
    torch.testing.assert_close(c(x, gen()), x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))


def test_cutout_zeroes_one_square_per_image():
    aug = make_augmenter([{"type": "cutout", "size": 3}])
    x = images(n=8) + 1  # no zero pixels to begin with
    out = aug(x, gen(2))
    zeros = (out == 0).all(dim=1)  # (N, H, W)
    for i in range(8):
        ys, xs = torch.nonzero(zeros[i], as_tuple=True)
        assert 1 <= len(ys) <= 9
        assert int(ys.max() - ys.min()) <= 2 and int(xs.max() - xs.min()) <= 2
        assert len(ys) == (int(ys.max() - ys.min()) + 1) * (int(xs.max() - xs.min()) + 1)  # a rectangle


def test_noise_is_in_unit_pixel_scale():
    aug = make_augmenter([{"type": "gaussian_noise", "std": 0.02}])
    x = torch.full((16, 3, 12, 10), 128.0)
    std = float((aug(x, gen()) - x).std())
    assert abs(std - 0.02 * 255) < 0.5


def test_deterministic_for_a_fixed_seed():
    aug = make_augmenter(ALL)
    x = images(n=6)
    assert torch.equal(aug(x, gen(7)), aug(x, gen(7)))
    assert not torch.equal(aug(x, gen(7)), aug(x, gen(8)))


def test_one_resample_per_batch(monkeypatch):
    """All geometric ops compose into a single affine_grid + grid_sample call."""
    import torch.nn.functional as F

    calls = []
    real = F.grid_sample
    monkeypatch.setattr(F, "grid_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    make_augmenter(ALL)(images(), gen())
    assert len(calls) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_runs_on_cuda_with_a_cuda_generator():
    aug = make_augmenter(ALL)
    x = images().cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    out = aug(x, g)
    assert out.device == x.device and out.shape == x.shape


@pytest.mark.parametrize("chunk_bytes, calls", [(1 << 30, 1), (2 * 8 * 3 * 12 * 10 * 4, 3), (1, 5)])
def test_augmented_batches_cover_the_epoch_in_order_augmenting_chunks(monkeypatch, chunk_bytes, calls):
    """Batches of 8 from 37 images: perm order, every image once, the augmenter called per chunk."""
    from convspec.compiler.data import augment as mod

    monkeypatch.setattr(
        mod, "AUGMENT_CHUNK_BYTES", chunk_bytes
    )  # all at once, 2 batches a call (3 calls), one batch a call
    aug = make_augmenter([{"type": "translate", "fraction": [0.2, 0.2]}])
    seen = []
    real = aug.forward
    monkeypatch.setattr(aug, "forward", lambda x, g=None: (seen.append(len(x)), real(x, g))[1])
    images = torch.randint(0, 256, (37, 3, 12, 10), dtype=torch.uint8)
    labels = torch.arange(37)
    perm = torch.randperm(37, generator=torch.Generator().manual_seed(1))
    out = list(
        mod.augmented_batches(images, labels, perm, 8, torch.device("cpu"), aug, torch.Generator().manual_seed(0))
    )
    assert [len(i) for i, _, _ in out] == [8, 8, 8, 8, 5]
    assert torch.equal(torch.cat([i for i, _, _ in out]), perm)
    assert all(torch.equal(y, labels[i]) for i, _, y in out)
    assert all(x.dtype == torch.float32 and x.shape == (len(i), 3, 12, 10) for i, x, _ in out)
    assert len(seen) == calls and sum(seen) == 37
    # Augmented: pixels moved, but each batch is its own images (no mix-up between batches).
    shifted = sum(not torch.equal(x, images[i].float()) for i, x, _ in out)
    assert shifted >= 4


def test_augmented_batches_without_augmentation_are_the_cached_pixels():
    from convspec.compiler.data.augment import augmented_batches

    images = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8)
    out = list(
        augmented_batches(
            images, torch.zeros(20, dtype=torch.long), torch.arange(20), 6, torch.device("cpu"), None, None
        )
    )
    assert torch.equal(torch.cat([x for _, x, _ in out]), images.float())


# ------------------------------------------------ exact pixel moves (no resample) on real digits


def digits(n=16) -> torch.Tensor:
    """Real handwritten digits (scikit-learn's), uint8 (n, 1, 24, 24): 8x8 scaled 3x by repetition."""
    from sklearn.datasets import load_digits

    px = torch.from_numpy(load_digits().images[:n]).mul(255 / 16).round().to(torch.uint8)  # (n, 8, 8)
    return px.repeat_interleave(3, 1).repeat_interleave(3, 2)[:, None]


def shifted(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``img`` (C, H, W) moved by (dy, dx) whole pixels, zero fill."""
    out = torch.zeros_like(img)
    h, w = img.shape[1:]
    out[:, max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = img[
        :, max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    return out


def no_grid_sample(monkeypatch) -> list:
    import torch.nn.functional as F

    calls = []
    real = F.grid_sample
    monkeypatch.setattr(F, "grid_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_flip_moves_real_digits_exactly_without_a_resample(monkeypatch):
    calls = no_grid_sample(monkeypatch)
    x = digits()
    out = make_augmenter([{"type": "flip", "horizontal": True, "p": 0.5}], channels=1)(x, gen(4))
    flipped = [torch.equal(out[i], x[i].flip(-1).float()) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i].float()) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True)) and 0 < sum(flipped) < len(x)
    assert calls == []


@pytest.mark.parametrize(
    ("op", "reach"),
    [({"type": "random_crop", "padding": 3}, (3, 3)), ({"type": "translate", "fraction": [0.25, 0.125]}, (6, 3))],
)
def test_crop_and_translate_are_exact_whole_pixel_shifts_of_real_digits(monkeypatch, op, reach):
    """Each output is its digit moved by whole pixels with zero fill, bit for bit: no blur."""
    calls = no_grid_sample(monkeypatch)
    x = digits()
    out = make_augmenter([op], channels=1)(x, gen(9))
    ry, rx = reach
    moves = set()
    for i in range(len(x)):
        match = [
            (dy, dx)
            for dy in range(-ry, ry + 1)
            for dx in range(-rx, rx + 1)
            if torch.equal(out[i], shifted(x[i], dy, dx).float())
        ]
        assert match, f"image {i} is not an exact shift"
        moves.add(match[0])
    assert len(moves) > 3  # parameters drawn per sample
    assert calls == []


def test_a_shift_then_flip_chain_is_one_exact_gather_and_rotate_resamples_only_what_fired(monkeypatch):
    x = digits()
    chain = make_augmenter(
        [{"type": "translate", "fraction": [0.2, 0.2]}, {"type": "flip", "horizontal": True, "p": 1.0}], channels=1
    )
    calls = no_grid_sample(monkeypatch)
    out = chain(x, gen(2))
    assert calls == [] and set(out.unique().tolist()) <= set(x.float().unique().tolist())  # pixels moved, not mixed
    rot = make_augmenter([{"type": "rotate", "degrees": 20, "p": 0.5}, {"type": "flip", "p": 1.0}], channels=1)
    out = rot(x, gen(3))
    assert len(calls) == 1
    exact = [torch.equal(out[i], x[i].flip(-1).float()) for i in range(len(x))]
    assert 0 < sum(exact) < len(x)  # unrotated samples: the exact flip; rotated ones resampled


def test_the_cpu_slices_and_the_gpu_gather_move_pixels_identically():
    """The two implementations of a flip + whole-pixel shift agree bit for bit (uint8, off-edge shifts too)."""
    from convspec.compiler.data.augment import _shift_flip, _shift_flip_slices

    g = gen(11)
    x = digits(24)
    n = len(x)
    sx = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    sy = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    tx = torch.randint(-30, 31, (n,), generator=g).float()
    ty = torch.randint(-8, 9, (n,), generator=g).float()
    a, b = _shift_flip(x, sx, sy, tx, ty), _shift_flip_slices(x, sx, sy, tx, ty)
    assert a.dtype == b.dtype == torch.uint8 and torch.equal(a, b)
    assert (a == 0).all(dim=(1, 2, 3)).any()  # a shift past the edge leaves zeros only
    rows = torch.tensor([0, 3, 7, 23])  # only these moved (the others are the resampler's to fill)
    some = _shift_flip_slices(x, sx, sy, tx, ty, torch.float32, rows=rows)
    assert some.dtype == torch.float32 and torch.equal(some[rows], a[rows].float())

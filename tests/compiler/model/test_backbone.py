"""The ``backbone`` layer compiled: the table against timm, weights files, freezing, errors, export.

Weights files are random-weight timm models saved by the tests (nothing is downloaded).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

timm = pytest.importorskip("timm")

from convspec.compiler.model.backbone import BackboneError, BackboneModule, no_weight_loading, probe  # noqa: E402
from convspec.compiler.model.builder import build_model  # noqa: E402
from convspec.specs import backbones as bb  # noqa: E402
from convspec.specs import load_spec_text  # noqa: E402
from convspec.specs.yamlio import dump_yaml  # noqa: E402

torch.set_num_threads(1)
SMALL = "mobilenetv3_small_100"


def spec_of(layers, *, channels=1, size=32, preprocess=(), training=None, export=None, classes=(0, 1)):
    data = {
        "version": 1,
        "name": "bb",
        "task": "multiclass",
        "data": {
            "source": {"type": "builtin", "name": "digits", "classes": list(classes)},
            "split": {"train": 0.6, "val": 0.2, "test": 0.2},
        },
        "input": {"channels": channels, "size": [size, size]},
        "preprocess": list(preprocess),
        "model": {"layers": layers},
        "training": training or {"epochs": 1, "batch_size": 32, "device": "cpu"},
    }
    if export:
        data["export"] = export
    return load_spec_text(dump_yaml(data), "bb.yaml")


def save_timm(path: Path, name: str, in_chans: int = 3, *, wrap: str | None = None, seed: int = 0) -> dict:
    """Save a random-weight timm model WITH its classifier (as a published checkpoint has it)."""
    torch.manual_seed(seed)
    sd = {
        k: v.contiguous() for k, v in timm.create_model(name, num_classes=1000, in_chans=in_chans).state_dict().items()
    }
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({wrap: sd} if wrap else sd, path)
    return sd


def backbone_state(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.body[0].model.state_dict().items()}


# ------------------------------------------------------------------ the table against timm


def test_resnet18_counts_match_timm():
    info = bb.table()["resnet18"]
    for c in (1, 3):
        m = timm.create_model("resnet18", num_classes=0, in_chans=c)
        assert sum(info.stage_params[c]) == sum(p.numel() for p in m.parameters())
    assert sum(info.stage_params[3]) == 11_176_512


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(bb.table()))
def test_table_matches_timm(name):
    info = bb.table()[name]
    for c in (1, 3):
        got = probe(name, c, (64, 64), tuple(info.macs_size))
        assert got.stage_params[c] == info.stage_params[c]
        assert got.macs[c] == info.macs[c]
        assert (got.pooled_channels, got.feature_channels) == (info.pooled_channels, info.feature_channels)
        assert (got.reduction, got.rounding, got.head_modules) == (info.reduction, info.rounding, info.head_modules)
        assert (got.head_params, got.head_macs) == (info.head_params, info.head_macs)
    m = timm.create_model(name, num_classes=0).eval()
    with torch.no_grad():
        for s in (37, 70):
            assert tuple(m.forward_features(torch.zeros(1, 3, s, s)).shape[1:]) == info.out_shape("features", s, s)
    assert tuple(m.pretrained_cfg["mean"]) == info.mean and tuple(m.pretrained_cfg["std"]) == info.std


def test_names_are_timms():
    if timm.__version__ != bb.table_timm_version():
        pytest.skip(f"the table lists timm {bb.table_timm_version()}'s names; timm {timm.__version__} is installed")
    assert bb.timm_names() == frozenset(timm.list_models())


# ------------------------------------------------------------------ module against summary


@pytest.mark.parametrize(
    "output, trainable, channels",
    [("pooled", True, 1), ("features", False, 3), ("features", 2, 1), ("pooled", 1, 3)],
)
def test_module_matches_summary(output, trainable, channels):
    layers = [{"type": "backbone", "name": SMALL, "output": output, "trainable": trainable}]
    spec = spec_of(layers, channels=channels)
    summary = spec.summary()
    model = build_model(spec)
    assert sum(p.numel() for p in model.parameters()) == summary.params
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == summary.trainable
    model.eval()
    with torch.no_grad():
        y = model.body[0](torch.zeros(2, channels, 32, 32))
    assert tuple(y.shape[1:]) == summary.rows[0].shape


def test_frozen_batch_norms_stay_in_eval_mode():
    model = build_model(spec_of([{"type": "backbone", "name": "resnet18", "trainable": 1}]))
    model.train()
    bns = {n: m for n, m in model.body[0].model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert not bns["bn1"].training and not bns["layer3.0.bn1"].training  # stages before the last
    assert bns["layer4.0.bn1"].training and model.head.training
    before = bns["bn1"].running_mean.clone()
    model(torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8))
    assert torch.equal(bns["bn1"].running_mean, before)
    assert not any(p.requires_grad for n, p in model.body[0].model.named_parameters() if not n.startswith("layer4"))
    frozen = build_model(spec_of([{"type": "backbone", "name": "resnet18", "trainable": False}])).train()
    assert not frozen.body[0].model.training and frozen.head.training


# ------------------------------------------------------------------ weights files


@pytest.mark.parametrize("suffix, wrap", [(".safetensors", None), (".pth", "state_dict"), (".pt", None)])
def test_weights_file_is_loaded_exactly(tmp_path, suffix, wrap):
    path = tmp_path / f"w{suffix}"
    saved = save_timm(path, SMALL, in_chans=1, wrap=wrap, seed=3)
    model = build_model(spec_of([{"type": "backbone", "name": SMALL, "weights": str(path)}]))
    got = backbone_state(model)
    assert set(saved) - set(got) == {"classifier.weight", "classifier.bias"}  # the classifier is dropped
    for key, tensor in got.items():
        assert torch.equal(tensor, saved[key]), key
    assert model.body[0].load_report["unexpected"] == []


def test_three_channel_weights_adapt_to_one_channel(tmp_path):
    path = tmp_path / "w.safetensors"
    saved = save_timm(path, SMALL, in_chans=3)
    model = build_model(spec_of([{"type": "backbone", "name": SMALL, "weights": str(path)}], channels=1))
    stem = backbone_state(model)["conv_stem.weight"]
    assert stem.shape[1] == 1 and torch.allclose(stem, saved["conv_stem.weight"].sum(dim=1, keepdim=True))
    assert model.body[0].load_report["adapted"] == ["conv_stem.weight"]


def test_no_weight_loading_skips_the_file(tmp_path):
    spec = spec_of([{"type": "backbone", "name": SMALL, "weights": str(tmp_path / "absent.safetensors")}])
    with no_weight_loading():
        model = build_model(spec)
    assert isinstance(model.body[0], BackboneModule) and model.body[0].load_report is None


def invoke_train(spec, tmp_path):
    from convspec.compiler.cli import app

    path = tmp_path / "bb.yaml"
    path.write_text(spec.to_yaml())
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "runs"), "--no-export"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return result.stderr


def test_missing_weights_file_exits_1(tmp_path):
    spec = spec_of([{"type": "backbone", "name": SMALL, "weights": str(tmp_path / "nope.safetensors")}])
    err = invoke_train(spec, tmp_path)
    assert f"model.layers[0].weights: {tmp_path / 'nope.safetensors'}: file not found" in err


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_a_fifo_weights_file_is_named_not_waited_on(tmp_path, name):
    os.mkfifo(tmp_path / name)  # safetensors and torch.load would wait for a writer forever
    err = invoke_train(spec_of([{"type": "backbone", "name": SMALL, "weights": str(tmp_path / name)}]), tmp_path)
    assert f"model.layers[0].weights: {tmp_path / name}: is a FIFO (named pipe), not a regular file" in err


def test_weights_of_another_architecture_exit_1_naming_the_key_and_shapes(tmp_path):
    path = tmp_path / "large.safetensors"
    large = save_timm(path, "mobilenetv3_large_100", in_chans=1)
    own = timm.create_model(SMALL, num_classes=0, in_chans=1).state_dict()
    key = next(k for k in own if k in large and large[k].shape != own[k].shape)
    err = invoke_train(spec_of([{"type": "backbone", "name": SMALL, "weights": str(path)}]), tmp_path)
    assert "data:" not in err
    assert (
        f"{path} does not fit {SMALL} (another architecture?): first mismatch {key!r} is "
        f"{tuple(large[key].shape)} in the file, {tuple(own[key].shape)} in the model"
    ) in err, err
    other = tmp_path / "convnext.pth"
    save_timm(other, "convnext_atto", in_chans=1)
    err = invoke_train(spec_of([{"type": "backbone", "name": SMALL, "weights": str(other)}]), tmp_path)
    assert f"{other} lacks {len(own) - sum(k.endswith('num_batches_tracked') for k in own)} of " in err, err
    assert "conv_stem.weight" in err
    assert "data:" not in err  # refused before any image was decoded (after a 10,000-image decode, it was)


def test_unknown_name_at_build_has_close_matches():
    from convspec.compiler.model.backbone import create_timm

    with pytest.raises(BackboneError, match="did you mean resnet18"):
        create_timm("resnet18x", 3)


def test_not_a_state_dict_exits_1(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a zip file")
    err = invoke_train(spec_of([{"type": "backbone", "name": SMALL, "weights": str(path)}]), tmp_path)
    assert f"{path} is not a readable state dict: not a PyTorch checkpoint (14 bytes" in err, err
    path.write_bytes(b"PK\x03\x04" + bytes(60))  # a copy cut short: the zip's start, no end
    err = invoke_train(spec_of([{"type": "backbone", "name": SMALL, "weights": str(path)}]), tmp_path)
    assert "is not a readable state dict: truncated or corrupt (64 bytes" in err, err


# ------------------------------------------------------------------ training and export


@pytest.mark.slow
@pytest.mark.parametrize("trainable", [False, 1])
def test_frozen_weights_and_bn_stats_unchanged_by_training(tmp_path, trainable):
    from convspec.compiler import train

    path = tmp_path / "w.safetensors"
    saved = save_timm(path, SMALL, in_chans=1)
    spec = spec_of([{"type": "backbone", "name": SMALL, "weights": str(path), "trainable": trainable}])
    run = train(spec, out=tmp_path / "runs", export=False, progress=False, log=lambda m: None)
    state = torch.load(run.last, weights_only=True)["model"]
    stage_of = BackboneModule(timm.create_model(SMALL, num_classes=0, in_chans=1), "pooled").stage_of
    last = max(stage_of.values())
    changed = set()
    for key, tensor in state.items():
        if not key.startswith("body.0.model."):
            continue
        name = key[len("body.0.model.") :]
        module = name.rsplit(".", 1)[0]
        stage = stage_of.get(name, next((s for p, s in stage_of.items() if p.rsplit(".", 1)[0] == module), last))
        if trainable is False or stage < last:
            assert torch.equal(tensor, saved[name]), name  # weights, running_mean/var, num_batches_tracked
        elif not torch.equal(tensor, saved[name]):
            changed.add(name)
    assert (trainable is False) == (not changed)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", SMALL])
def test_export_parity_int8_and_torch_free_runtime(tmp_path, name):
    from convspec.compiler import train

    spec = spec_of(
        [{"type": "backbone", "name": name}],
        channels=3,
        preprocess=[{"type": "normalize", "mean": "imagenet", "std": "imagenet"}],
        export={"opset": 18, "dynamic_batch": True, "quantize": "int8", "calibration_images": 32},
    )
    run = train(spec, out=tmp_path / "runs", progress=False, log=lambda m: None)
    info = json.loads(Path(run.export_json).read_text())
    assert info["opset"] == 18 and info["top1_agreement"] == 1.0 and info["max_abs_diff"] <= 1e-4
    assert info["int8"]["accuracy"] >= 0 and Path(run.onnx_int8).exists()
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    script = textwrap.dedent(
        """
        import sys
        for m in ("torch", "timm", "torchvision"):
            sys.modules[m] = None
        import numpy as np
        from convspec.runtime import Predictor
        x = np.load(sys.argv[3])
        for f in sys.argv[1:3]:
            p = Predictor(f, providers="cpu").predict_arrays(x)
            assert p.shape == (5, 2) and np.allclose(p.sum(axis=1), 1, atol=1e-4), p
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(run.onnx), str(run.onnx_int8), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# ------------------------------------------------------------------ weights: pretrained without a network


def test_pretrained_without_a_network_reads_the_hub_cache_at_once(tmp_path, monkeypatch):
    """No hub to reach: cached weights load (huggingface_hub's retries took 50 s first), weights
    missing from the cache are one line naming the cache; the offline mode ends with the build."""
    import time

    from huggingface_hub import constants

    from convspec.compiler.model import hub

    probed: list[str] = []
    monkeypatch.setattr(hub, "reachable", lambda endpoint, timeout=hub.PROBE_S: probed.append(endpoint) or False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    pretrained = spec_of([{"type": "backbone", "name": SMALL, "weights": "pretrained"}])

    t0 = time.perf_counter()
    with pytest.raises(BackboneError, match=r"not in huggingface_hub's cache \(.*hub\) and .* cannot be reached"):
        build_model(pretrained)
    assert time.perf_counter() - t0 < 10 and probed and constants.HF_HUB_OFFLINE is False

    # the cache as huggingface_hub lays it out: refs/main names the snapshot holding the file
    repo_id = timm.models.get_pretrained_cfg(SMALL).hf_hub_id
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    saved = save_timm(repo / "snapshots" / commit / "model.safetensors", SMALL, in_chans=1, seed=5)
    got = backbone_state(build_model(pretrained))
    for key, tensor in got.items():
        assert torch.equal(tensor, saved[key]), key
    assert constants.HF_HUB_OFFLINE is False
    # a damaged file in the cache: one line naming the cache (it was an 80-line safetensors traceback)
    (repo / "snapshots" / commit / "model.safetensors").write_bytes(b"\x10\x00" + b"x" * 64)
    with pytest.raises(BackboneError, match=r"timm could not download the pretrained weights of .* damaged download"):
        build_model(pretrained)

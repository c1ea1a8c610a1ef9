"""Transfer learning on real digits (CPU): training.init, freeze / unfreeze_epoch, lr_mult, and their errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from convspec.compiler.cli import app
from convspec.compiler.model.builder import build_model
from convspec.compiler.run import checkpoint
from convspec.compiler.training.init import init_from
from convspec.compiler.training.loop import train
from convspec.specs import load_spec

REPO = Path(__file__).resolve().parents[3]
DIGITS = REPO / "examples" / "digits.yaml"
QUIET = {"progress": False, "log": lambda _m: None, "export": False}
# digits.yaml, small: 8x8 pixels, 8 filters per conv, no augmentation; layers 0 and 2 are the convs
SMALL = ["input.size=[8, 8]", "model.layers.0.filters=8", "model.layers.2.filters=8", "augment=[]"]
BINARY = ["task=binary", "data.source.classes=[3, 8]"]  # same layers, a 1-unit head instead of 10
CONV_PARAMS = ("conv.weight", "bn.weight", "bn.bias")
BN_STATS = ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked")
STRIP = ("time_s", "images_per_s")


def spec(*extra: str):
    return load_spec(DIGITS, overrides=[*SMALL, *extra])


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A 10-class digits run (1 epoch): the run folder that targets start from."""
    out = tmp_path_factory.mktemp("source")
    return train(spec("training.epochs=1", "training.batch_size=128"), out=out, test=False, **QUIET).path


def weights(path: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(path)["model"]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


@pytest.mark.slow
def test_init_from_a_run_copies_every_matching_tensor_and_reinitialises_the_head(source, tmp_path):
    src = weights(source / "best.pt")
    target = spec(*BINARY, f"training.init={source}")
    model = build_model(target, num_classes=2)
    info = init_from(model, target.training.init, lambda _m: None)
    got = model.state_dict()
    body = [k for k in got if k.startswith("body.")]
    assert len(body) == 12 and all(same(got[k], src[k]) for k in body)  # 2 convs x (weight, bn w/b, 3 stats)
    assert info["copied"] == 12 and info["unused"] == []
    assert [(t["name"], t["shape"], t["source_shape"]) for t in info["fresh"]] == [
        ("head.linear.weight", [1, 128], [10, 128]),
        ("head.linear.bias", [1], [10]),
    ]

    # through the loop, with both convs frozen: the body leaves training exactly as the source's
    run = train(
        spec(*BINARY, f"training.init={source}", "training.epochs=1", "training.freeze=[0, 2]"), out=tmp_path, **QUIET
    )
    best = weights(run.best)
    assert all(same(best[k], src[k]) for k in body)
    results = json.loads(run.results.read_text())
    assert results["init"]["copied"] == 12 and results["init"]["file"] == str(source / "best.pt")
    assert [t["name"] for t in results["init"]["fresh"]] == ["head.linear.weight", "head.linear.bias"]
    report = run.report.read_text()
    assert "## Initialisation" in report and "12 tensors copied" in report
    assert "| `head.linear.weight` | [1, 128] | [10, 128] |" in report


@pytest.mark.slow
def test_freeze_holds_weights_and_bn_stats_until_unfreeze_epoch_and_resumes_alike(source, tmp_path):
    """Layer 0 frozen until epoch 3 of 4 (lr_mult on layer 2); killed after epoch 3, resumed: same end."""
    src = weights(source / "best.pt")
    extra = [*BINARY, f"training.init={source}", "training.epochs=4", "training.freeze=[0]"]
    extra += ["training.unfreeze_epoch=3", "model.layers.2.lr_mult=0.5"]
    snaps: list[dict] = []

    def snapshot(record: dict) -> None:
        snaps.append(weights(next((tmp_path / "full").glob("*/last.pt"))))

    full = train(spec(*extra), out=tmp_path / "full", on_epoch=snapshot, **QUIET)
    frozen = [f"body.0.{k}" for k in CONV_PARAMS + BN_STATS]
    for epoch in (1, 2):
        assert all(same(snaps[epoch - 1][k], src[k]) for k in frozen), epoch
    assert not same(snaps[0]["body.2.conv.weight"], src["body.2.conv.weight"])  # layer 2 trains from epoch 1
    for k in ("body.0.conv.weight", "body.0.bn.weight", "body.0.bn.running_mean", "body.0.bn.running_var"):
        assert not same(snaps[2][k], src[k]), k  # thawed at epoch 3: weights and statistics move

    def stop_after_3(record: dict) -> None:
        if record["epoch"] == 3:
            raise KeyboardInterrupt

    from convspec.compiler.training.errors import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train(spec(*extra), out=tmp_path / "part", on_epoch=stop_after_3, **QUIET)
    resumed = train(resume=next((tmp_path / "part").iterdir()), **QUIET)
    strip = lambda hs: [{k: v for k, v in h.items() if k not in STRIP} for h in hs]  # noqa: E731
    assert strip(resumed.history()) == strip(full.history())
    a, b = weights(resumed.last), weights(full.last)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.read_results()["init"] == full.read_results()["init"]
    assert resumed.read_results()["test"]["metrics"] == full.read_results()["test"]["metrics"]


@pytest.mark.slow
def test_lr_mult_scales_a_layers_learning_rate(source, tmp_path):
    src = weights(source / "best.pt")
    run = train(
        spec(*BINARY, f"training.init={source}", "training.epochs=1", "model.layers.0.lr_mult=1e-9"),
        out=tmp_path,
        test=False,
        **QUIET,
    )
    got = weights(run.last)
    slow = max((got[f"body.0.{k}"] - src[f"body.0.{k}"]).abs().max().item() for k in CONV_PARAMS)
    fast = (got["body.2.conv.weight"] - src["body.2.conv.weight"]).abs().max().item()
    assert slow < 1e-7 and fast > 1e-3, (slow, fast)
    groups = checkpoint.load(run.last)["optimizer"]["param_groups"]
    assert sorted(g["lr_mult"] for g in groups) == [1e-9, 1.0]
    assert run.history()[0]["lr"] == pytest.approx(groups[[g["lr_mult"] for g in groups].index(1.0)]["lr"])


# ------------------------------------------------------------------------ errors

runner = CliRunner()


def user_error(args: list, *words: str) -> str:
    """``convspec ARGS`` in-process: exit 1, one line on stderr naming every word, no traceback."""
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"}, catch_exceptions=False)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith(("data:", "warning:"))]
    assert result.exit_code == 1, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def test_freeze_index_out_of_range_is_an_error_at_its_line(tmp_path):
    text = DIGITS.read_text("utf-8") + "  freeze: [0, 9]\n"
    n = text.count("\n")
    f = tmp_path / "spec.yaml"
    f.write_text(text, "utf-8")
    user_error(["train", f, "--out", tmp_path / "runs"], f"spec.yaml:{n}:", "training.freeze[1]", "(got 9)", "0 to 4")
    assert not (tmp_path / "runs").exists()


def test_init_from_a_missing_path_writes_nothing(tmp_path):
    f = tmp_path / "spec.yaml"
    f.write_text(DIGITS.read_text("utf-8"), "utf-8")
    user_error(["train", f, "--set", "training.init=nowhere", "--out", tmp_path / "runs"], str(tmp_path / "nowhere"))
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("name", ["w.safetensors", "w.pt"])
def test_init_from_a_fifo_is_named_not_waited_on(tmp_path, name):
    f = tmp_path / "spec.yaml"
    f.write_text(DIGITS.read_text("utf-8"), "utf-8")
    os.mkfifo(tmp_path / name)  # reading one would wait for a writer forever
    user_error(["train", f, "--set", f"training.init={tmp_path / name}", "--out", tmp_path / "runs"], name, "FIFO")


def test_init_from_another_channel_count_or_input_size_names_both(source, tmp_path):
    rgb = spec("input.channels=3", "preprocess=[{type: normalize, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}]")
    model = build_model(rgb, num_classes=10)
    fake = tmp_path / "rgb-run"
    fake.mkdir()
    checkpoint.save(fake / "last.pt", {"model": model.state_dict(), "spec": rgb.to_yaml()})
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "rgb.safetensors"))
    f = tmp_path / "spec.yaml"
    f.write_text(DIGITS.read_text("utf-8"), "utf-8")
    base = ["train", f, "--out", tmp_path / "runs", "--set", "input.size=[8, 8]", "--set"]
    for init in (fake, tmp_path / "rgb.safetensors"):
        user_error([*base, f"training.init={init}"], "3-channel", "input.channels 1", str(init))
    # the source ran at 8x8 with a flatten: at 12x12 the dense head would change shape
    msg = user_error([*base, "model.layers.0.filters=8", "--set", f"training.init={source}", "--set", "input.size=12"],
                     "input.size [8, 8]", "[12, 12]")  # fmt: skip
    assert "head.linear.weight" in msg
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_freeze_and_unfreeze_under_ddp(source, tmp_path):
    """torchrun, 2 CPU ranks (gloo): the DDP wrapper is rebuilt when the frozen set changes."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "CONVSPEC_CACHE": str(tmp_path / "cache")}
    env.pop("WORLD_SIZE", None)
    sets = [*SMALL, *BINARY, f"training.init={source}", "training.epochs=2", "training.freeze=[0]"]
    sets += ["training.unfreeze_epoch=2"]
    args = ["train", DIGITS, "--out", tmp_path / "runs", "--nproc", "2", "--no-export"] + [
        a for s in sets for a in ("--set", s)
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "convspec.compiler", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((tmp_path / "runs").iterdir())
    assert json.loads((run / "results.json").read_text())["world_size"] == 2
    src, got = weights(source / "best.pt"), weights(run / "last.pt")
    assert not same(got["body.0.conv.weight"], src["body.0.conv.weight"])  # thawed in epoch 2, on both ranks

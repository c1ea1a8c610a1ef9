"""Crafted or damaged run folders, checkpoints and split files: one line naming the file, exit 1.

Each case damages a copy of a tiny trained run, runs ``convspec export RUN`` and/or
``convspec train --resume RUN`` and asserts a clean user error (exit 1, one line naming the file
and the key, no traceback) and that the run folder is exactly as it was: nothing written,
nothing half-written.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
import torch

from convspec.compiler.run import checkpoint
from convspec.compiler.run.checkpoint_format import CheckpointError
from convspec.compiler.run.files import WriteError
from convspec.runtime.files import WriteError as RuntimeWriteError
from convspec.specs import ConvspecError

from .conftest import cli, files_of, read_only, user_error


def edit_checkpoint(run, name: str, change) -> None:
    state = torch.load(run / name, weights_only=True)
    change(state)
    torch.save(state, run / name)


def refused(run, command: str, *words: str, max_lines: int = 4) -> str:
    """Run export or resume on ``run``; assert a clean error and an unchanged run folder."""
    before = files_of(run)
    args = ("export", run) if command == "export" else ("train", "--resume", run)
    stderr = user_error(cli(*args), *words, max_lines=max_lines)
    assert files_of(run) == before, "the run folder changed"
    return stderr


# ------------------------------------------------------- spec.yaml against the checkpoint


def test_export_refuses_a_hand_edited_spec_yaml_with_the_diff(tiny_run):
    spec = tiny_run / "spec.yaml"
    spec.write_text(spec.read_text("utf-8").replace("size: [8, 8]", "size: [10, 10]"), "utf-8")
    assert "size: [10, 10]" in spec.read_text("utf-8")
    stderr = refused(tiny_run, "export", "spec.yaml", "differs", "best.pt", max_lines=12)
    diff = [ln for ln in stderr.splitlines() if ln.startswith(("-", "+"))]
    assert any("8" in ln for ln in diff if ln.startswith("-")) and any("10" in ln for ln in diff if ln[0] == "+")
    assert not (tiny_run / "model.onnx").exists()


def test_a_spec_yaml_that_differs_only_in_epochs_or_is_missing_is_accepted(tiny_run):
    from convspec.compiler.export.checks import check_spec_file
    from convspec.compiler.run.folder import Run
    from convspec.specs import load_spec_text

    run = Run(tiny_run)
    saved = load_spec_text(torch.load(run.last, weights_only=True)["spec"])
    text = run.spec.read_text("utf-8")
    run.spec.write_text(text.replace("epochs: 1", "epochs: 5"), "utf-8")
    assert "epochs: 5" in run.spec.read_text("utf-8")
    check_spec_file(run, saved, run.last)  # a resumed run may change epochs: not a difference
    run.spec.unlink()
    check_spec_file(run, saved, run.last)  # the checkpoint's spec is used


def test_export_refuses_a_spec_yaml_that_is_a_folder(tiny_run):
    (tiny_run / "spec.yaml").unlink()
    (tiny_run / "spec.yaml").mkdir()
    refused(tiny_run, "export", "spec.yaml", "not a regular file")


# ------------------------------------------------------------------ crafted checkpoints

CRAFTED = {
    "epoch-a-string": (lambda s: s.update(epoch="x"), "resume", ("last.pt", "epoch", "integer")),
    "history-an-int": (lambda s: s.update(history=5), "resume", ("last.pt", "history", "list")),
    "model-a-list": (lambda s: s.update(model=[1, 2]), "both", ("model", "dict")),
    "model-holds-a-string": (lambda s: s["model"].update(w="x"), "both", ("model.w", "tensor")),
    "no-optimizer": (lambda s: s.pop("optimizer"), "resume", ("last.pt", "optimizer", "missing")),
    "no-spec": (lambda s: s.pop("spec"), "both", ("spec", "missing")),
    "spec-a-number": (lambda s: s.update(spec=3), "both", ("spec", "string")),
    "class-names-an-int": (lambda s: s.update(class_names=5), "both", ("class_names", "list")),
    "rng-missing": (lambda s: s.pop("rng"), "resume", ("rng", "missing")),
    "epoch-beyond-history": (lambda s: s.update(epoch=7), "resume", ("epoch is 7", "history holds 1")),
    "negative-stale": (lambda s: s.update(stale=-1), "resume", ("stale", "greater than or equal to 0")),
    "bool-epoch": (lambda s: s.update(epoch=True), "resume", ("epoch", "integer")),
    "elapsed-nan": (
        lambda s: s.update(elapsed={"train_s": float("nan"), "images_seen": 3}),
        "resume",
        ("elapsed.train_s", "finite"),
    ),
    "not-a-dict": (None, "both", ("not a convspec checkpoint", "list")),
}


@pytest.mark.parametrize("case", CRAFTED, ids=list(CRAFTED))
def test_crafted_checkpoints_are_named_by_key(tiny_run, case):
    change, where, words = CRAFTED[case]
    for name in ("last.pt", "best.pt"):
        if change is None:
            torch.save([1, 2, 3], tiny_run / name)
        else:
            edit_checkpoint(tiny_run, name, change)
    if where in ("resume", "both"):
        refused(tiny_run, "resume", "not a convspec checkpoint", *words)
    if where in ("export", "both"):
        refused(tiny_run, "export", "best.pt", *[w for w in words if w != "last.pt"])


def test_weights_of_another_shape_name_the_first_tensor_and_both_shapes(tiny_run):
    state = torch.load(tiny_run / "last.pt", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.ndim == 4)  # the conv's weight
    shape = tuple(state["model"][name].shape)
    for ckpt in ("last.pt", "best.pt"):
        edit_checkpoint(tiny_run, ckpt, lambda s: s["model"].update({name: torch.zeros(7, *shape[1:])}))
    for command, ckpt in (("export", "best.pt"), ("resume", "last.pt")):
        stderr = refused(tiny_run, command, ckpt, "do not fit", name)
        assert str((7, *shape[1:])) in stderr and str(shape) in stderr, stderr


def test_a_missing_or_extra_tensor_is_named(tiny_run):
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    first = next(iter(state["model"]))
    edit_checkpoint(tiny_run, "best.pt", lambda s: s["model"].pop(first))
    refused(tiny_run, "export", "best.pt", first, "missing")
    extra = {first: state["model"][first], "extra.w": torch.zeros(3)}
    edit_checkpoint(tiny_run, "best.pt", lambda s: s["model"].update(extra))
    refused(tiny_run, "export", "best.pt", "extra.w")


def test_an_optimizer_state_of_another_model_is_refused_by_resume(tiny_run):
    edit_checkpoint(tiny_run, "last.pt", lambda s: s["optimizer"].update(param_groups=[]))
    refused(tiny_run, "resume", "last.pt", "optimizer")


def test_random_generator_state_that_torch_refuses_is_named(tiny_run):
    edit_checkpoint(tiny_run, "last.pt", lambda s: s["rng"].update(shuffle=torch.zeros(3, dtype=torch.uint8)))
    refused(tiny_run, "resume", "last.pt", "rng")


def test_checkpoint_that_is_a_folder_or_a_device(tiny_run):
    for name in ("best.pt", "last.pt"):
        (tiny_run / name).unlink()
    (tiny_run / "best.pt").mkdir()
    refused(tiny_run, "export", "best.pt", "is a folder")
    (tiny_run / "best.pt").rmdir()
    os.symlink("/dev/zero", tiny_run / "last.pt")
    refused(tiny_run, "resume", "last.pt", "is a device, not a checkpoint file")


def test_a_run_path_that_is_a_file(tmp_path):
    (tmp_path / "run").write_text("x")
    user_error(cli("export", tmp_path / "run"), "run", "not a folder")


# ------------------------------------------------------------------------- split.json

SPLITS = {
    "class-names-a-string": (lambda d: d.update(class_names="ab"), ("class_names", "list")),
    "files-of-numbers": (lambda d: d["splits"]["train"].update(files=[1, 2]), ("splits.train.files[0]", "string")),
    "lengths-differ": (lambda d: d["splits"]["val"]["labels"].append("a"), ("splits.val", "labels")),
    "no-test-split": (lambda d: d["splits"].pop("test"), ("splits", "test")),
    "unknown-label": (lambda d: d["splits"]["train"]["labels"].__setitem__(0, "zebra"), ("zebra",)),
    "version-2": (lambda d: d.update(version=2), ("version",)),
    "empty-train": (lambda d: d["splits"]["train"].update(files=[], labels=[]), ("splits.train", "no files")),
    "nested-too-deeply": (None, ("nested too deeply",)),
    "a-list": (lambda d: None, ("not a convspec split file",)),
}


@pytest.mark.parametrize("case", SPLITS, ids=list(SPLITS))
def test_split_json_with_wrong_types_is_named(tiny_run, case):
    change, words = SPLITS[case]
    path = tiny_run / "split.json"
    doc = json.loads(path.read_text("utf-8"))
    if case == "nested-too-deeply":  # past the recursion limit: a RecursionError once escaped as a traceback
        path.write_text("[" * 100_000 + "]" * 100_000, "utf-8")
        refused(tiny_run, "resume", "split.json", "not a readable split file", *words)
        return
    if case == "a-list":
        doc = [doc]
    else:
        change(doc)
    path.write_text(json.dumps(doc), "utf-8")
    refused(tiny_run, "resume", "split.json", "not a convspec split file", *words)


def test_read_split_refuses_a_device_unread(tmp_path):
    from convspec.compiler.data.split import read_split

    os.symlink("/dev/zero", tmp_path / "split.json")
    with pytest.raises(ConvspecError, match="not a regular file"):
        read_split(tmp_path / "split.json")


# ------------------------------------------------------------- writing checkpoints


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, where):
    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = "convspec.compiler.run.checkpoint.torch.save" if where == "torch.save" else "os.replace"
    monkeypatch.setattr(target, full)
    with pytest.raises(RuntimeWriteError) as info:  # the writer's own error, or the checkpoint's (a subclass)
        checkpoint.save(tmp_path / "last.pt", {"model": {}, "spec": "version: 1"})
    monkeypatch.undo()
    message = str(info.value)
    assert message.startswith(str(tmp_path / "last.pt")) and "no space left" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no temporary file


def test_a_disk_that_fills_up_at_the_first_checkpoint_leaves_no_run_folder(tmp_path, monkeypatch):
    """--out passed its check, then filled up at last.pt: no folder with a spec and split but no checkpoint."""
    from pathlib import Path

    from convspec.compiler.training.loop import train
    from convspec.specs import load_spec

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("convspec.compiler.run.checkpoint.torch.save", full)
    examples = Path(__file__).resolve().parents[2] / "examples"
    spec = load_spec(examples / "digits.yaml", overrides=["training.epochs=1", "input.size=[8, 8]"])
    out = tmp_path / "runs"
    out.mkdir()
    (out / "digits-cnn").mkdir()  # an earlier run: the new one is digits-cnn-2, and only it goes
    (out / "digits-cnn" / "keep.txt").write_text("an earlier run's file")
    with pytest.raises(RuntimeWriteError, match=r"digits-cnn-2/last\.pt: .*no space left"):
        train(spec, out=out, export=False, progress=False, log=lambda _m: None)
    assert sorted(p.name for p in out.iterdir()) == ["digits-cnn"]
    assert (out / "digits-cnn" / "keep.txt").exists()


def test_saving_into_a_read_only_folder_names_the_path(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    read_only(folder)
    try:
        with pytest.raises(WriteError, match="ro/last.pt: cannot write the checkpoint: permission denied"):
            checkpoint.save(folder / "last.pt", {"model": {}, "spec": "version: 1"})
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_checkpoint_errors_are_convspec_errors(tmp_path):
    torch.save({"format": 1, "model": {}, "spec": "x", "epoch": "x"}, tmp_path / "a.pt")
    checkpoint.load(tmp_path / "a.pt")  # enough for export
    with pytest.raises(CheckpointError, match="not a convspec checkpoint: optimizer: missing") as info:
        checkpoint.load(tmp_path / "a.pt", resume=True)
    assert isinstance(info.value, ConvspecError)

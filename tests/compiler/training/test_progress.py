"""What training prints: one whole line per epoch, as it ends, when stderr is not a terminal."""

from __future__ import annotations

from convspec.compiler.training.progress import Progress


def record(epoch: int) -> dict:
    return {
        "epoch": epoch, "train_loss": 0.5, "train_accuracy": 0.75, "val_loss": 0.25, "val_accuracy": 0.875,
        "images_per_s": 12345.0, "time_s": 1.25,
    }  # fmt: skip


def test_a_log_file_gets_one_whole_line_per_epoch_as_it_ends(capsys):
    with Progress(True, 3, steps=100) as bar:
        for epoch in (1, 2):
            bar.start_epoch(epoch)
            for _ in range(100):
                bar.step(lambda: (0.5, 0.75, 1000.0))
            bar.end_epoch(record(epoch))
            lines = capsys.readouterr().err.splitlines()  # printed now, not when training ends
            assert lines == [
                f"epoch {epoch}/3 loss 0.5000 acc 0.7500 val_loss 0.2500 val_acc 0.8750 12,345 img/s 1.2 s"
            ]


def test_a_disabled_bar_prints_nothing(capsys):
    with Progress(False, 1, steps=1) as bar:
        bar.start_epoch(1)
        bar.step(lambda: (0.0, 0.0, 0.0))
        bar.end_epoch(record(1))
    assert capsys.readouterr().err == ""

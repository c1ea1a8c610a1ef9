"""What a person sees while training runs: a Rich progress bar and log lines on stderr."""

from __future__ import annotations

import time
from collections.abc import Callable

Log = Callable[[str], None]

REFRESH_S = 0.25  # Why: reading the loss from a GPU waits for it; at most 4 reads a second


def _stderr_console(**kwargs):
    """A Rich console on stderr whose broken pipe (``| head`` left) raises BrokenPipeError.

    Why: Rich exits 1 there itself; the CLI exits as SIGPIPE would (141), and the run keeps last.pt.
    """
    from rich.console import Console

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    return PipeConsole(stderr=True, **kwargs)


def stderr_log() -> Log:
    """Messages to stderr through Rich (no markup: paths and class names are user data)."""
    from convspec.specs.errors import printable

    console = _stderr_console(highlight=False, soft_wrap=True)  # Why soft: a log file gets whole lines
    return lambda msg: console.print(printable(msg), markup=False)


def silent(_msg: str) -> None:
    """The log of a process that does not speak (ranks other than 0 under torchrun)."""


class Progress:
    """A Rich progress bar over epochs and steps, showing loss, accuracy and images/s.

    When stderr is not a terminal (a log file, CI, ``nohup``), one plain line per epoch instead, as
    it ends: Rich would draw nothing until the last epoch, and then squeezed to 80 columns.
    """

    def __init__(self, enabled: bool, epochs: int, steps: int):
        self.enabled, self.epochs, self.steps = enabled, epochs, steps
        self.progress = None
        self.task = None
        self.last_read = 0.0
        self.lines: Log | None = None  # the plain per-epoch log, when stderr is not a terminal

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            console = _stderr_console(highlight=False)
            if not console.is_terminal:
                self.lines = lambda msg: console.print(msg, markup=False, soft_wrap=True)  # whole lines
                return self

            self.progress = RichProgress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[stats]}"),
                console=console,
                transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False

    def start_epoch(self, epoch: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task("train", total=self.steps, epoch=f"{epoch}/{self.epochs}", stats="")

    def step(self, stats: Callable[[], tuple[float, float, float]]) -> None:
        """Advance one step; ``stats()`` (loss, accuracy, images/s) is called only when the bar redraws."""
        if self.progress is None:
            return
        now = time.perf_counter()
        if now - self.last_read < REFRESH_S:
            self.progress.update(self.task, advance=1)
            return
        self.last_read = now
        loss, acc, ips = stats()
        self.progress.update(self.task, advance=1, stats=f"loss {loss:.4f} acc {acc:.4f} {ips:,.0f} img/s")

    def end_epoch(self, record: dict) -> None:
        val = f" val_loss {record['val_loss']:.4f} val_acc {record['val_accuracy']:.4f}" if "val_loss" in record else ""
        stats = f"loss {record['train_loss']:.4f} acc {record['train_accuracy']:.4f}{val}"
        if self.lines is not None:
            self.lines(
                f"epoch {record['epoch']}/{self.epochs} {stats} {record['images_per_s']:,.0f} img/s "
                f"{record['time_s']:.1f} s"
            )
        elif self.progress is not None:
            self.progress.update(self.task, stats=f"{stats} {record['images_per_s']:,.0f} img/s")

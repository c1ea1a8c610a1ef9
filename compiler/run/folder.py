"""The run folder: one per ``convspec train``, numbered when the name is taken."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convspec.runtime.files import atomic_write_text, json_text
from convspec.runtime.results import read_results
from convspec.specs.readfile import FileReadError, parse_json, read_text

from .files import MARKER, writing


@dataclass(frozen=True)
class Run:
    """Paths of a run folder (``runs/NAME/``) and readers for what training wrote."""

    path: Path
    made_parent: bool = field(default=False, compare=False)  # new_run made ``out`` too: discard it if empty

    spec = property(lambda self: self.path / "spec.yaml")
    split = property(lambda self: self.path / "split.json")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    last = property(lambda self: self.path / "last.pt")
    best = property(lambda self: self.path / "best.pt")
    results = property(lambda self: self.path / "results.json")
    report = property(lambda self: self.path / "report.md")
    curves = property(lambda self: self.path / "curves.png")
    confusion = property(lambda self: self.path / "confusion.png")
    onnx = property(lambda self: self.path / "model.onnx")
    onnx_int8 = property(lambda self: self.path / "model.int8.onnx")
    export_json = property(lambda self: self.path / "export.json")

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def read_results(self) -> dict[str, Any]:
        """results.json, or {} when there is none. Raises FileReadError: a FIFO, a device, not JSON,
        or a key of the wrong type (:func:`convspec.runtime.results.read_results`)."""
        return read_results(self.results) if os.path.lexists(self.results) else {}

    def write_json(self, path: Path, data: Any) -> None:
        with writing(path):
            atomic_write_text(path, json_text(data, indent=2) + "\n")

    def history(self) -> list[dict]:
        if not os.path.lexists(self.metrics):
            return []
        lines = read_text(self.metrics, "json").splitlines()
        try:
            return [parse_json(line) for line in lines if line.strip()]
        except ValueError as e:
            raise FileReadError(self.metrics, f"a line is not JSON ({e})") from None


def new_run(out: str | os.PathLike, name: str) -> Run:
    """Create ``out/name``, or ``out/name-2``, ``-3``... when it exists (as Ultralytics does).

    The folder gets the marker file ``.convspec-run`` (:data:`MARKER`), so that listing a data
    folder skips it: a run written inside the data never becomes a class.

    Raises:
        WriteError: ``out`` is a file, read-only, on a full disk, ...
    """
    out = Path(out)
    made_parent = not os.path.lexists(out)
    with writing(out, "the run folder"):
        out.mkdir(parents=True, exist_ok=True)
        for k in range(1, 10_000):
            path = out / (name if k == 1 else f"{name}-{k}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            try:
                mark_run_folder(path)
            except BaseException:  # a disk that is full: no empty folder left behind
                with contextlib.suppress(OSError):
                    path.rmdir()
                raise
            return Run(path, made_parent)
    raise RuntimeError(f"too many runs named {name} in {out}")


def discard_new_run(run: Run) -> None:
    """Remove a run folder made by this call before its first result: a folder without one is
    neither resumable nor a result (a disk that filled up at ``last.pt`` left spec.yaml and split.json).
    Only the files a new run writes first go, then the folder if that empties it."""
    for path in (run.last, run.split, run.spec, run.path / MARKER):
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run.path.rmdir()  # Why not rmtree: anything else in it is not this call's to delete
        if run.made_parent:
            run.path.parent.rmdir()  # the --out folder this call made, if nothing else is in it


def mark_run_folder(path: str | os.PathLike) -> Path:
    """Write ``path/.convspec-run``: the folder holds convspec's outputs, never data."""
    marker = Path(path) / MARKER
    with writing(marker):
        atomic_write_text(marker, "convspec run folder: data listing skips this folder\n")
    return marker

"""``convspec serve MODEL``: the command over :func:`convspec.runtime.serve.run`.

Torch-free: it imports only :mod:`convspec.runtime` (and FastAPI / uvicorn, the ``serve``
extra, inside the command).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from convspec.specs import ConvspecError

from ._common import user_errors
from ._group import at_least

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str, option: str = "--max-bytes") -> int:
    """``20MB`` -> 20_000_000, ``512KB`` -> 512_000, ``1MiB`` -> 1_048_576, ``1000`` -> 1000 bytes.

    Raises:
        ConvspecError: not a positive size.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", text, flags=re.IGNORECASE)
    if not m:
        raise ConvspecError(f"{option} {text}: expected a size such as 20MB, 512KB, 1MiB or a number of bytes")
    n = int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])
    if n < 1:
        raise ConvspecError(f"{option} {text}: must be at least 1 byte")
    return n


@user_errors
def serve(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="An exported .onnx model (or a run folder).")],
    host: Annotated[
        str, typer.Option("--host", help="Interface to listen on (0.0.0.0: every interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", callback=at_least(0, high=65535), help="TCP port.")] = 8000,
    max_batch: Annotated[
        int, typer.Option("--max-batch", callback=at_least(1), help="Most images per inference run.")
    ] = 32,
    max_delay_ms: Annotated[
        float,
        typer.Option(
            "--max-delay-ms",
            callback=at_least(0, " ms", high=10_000),
            help="How long a batch waits for more images (0-10000 ms).",
        ),
    ] = 5.0,
    max_bytes: Annotated[
        str, typer.Option("--max-bytes", help="Largest request body (20MB, 512KB, 1MiB); 413 above it.")
    ] = "20MB",
    workers: Annotated[
        int, typer.Option("--workers", callback=at_least(1), help="Processes, each with its own model session.")
    ] = 1,
) -> None:
    """Serve a model over HTTP: POST /predict, GET /health, /metadata, /metrics, and a page at /."""
    from convspec.runtime.serve import run

    limit = parse_size(max_bytes)
    path = model
    if model.is_dir():
        if not (model / "model.onnx").is_file():
            raise ConvspecError(
                f"{model}: is a folder without model.onnx; give an .onnx file (or run: convspec export {model})"
            )
        path = model / "model.onnx"
    run(path, host=host, port=port, max_batch=max_batch, max_delay_ms=max_delay_ms, max_bytes=limit, workers=workers)

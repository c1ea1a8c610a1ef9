"""Serve an exported model over HTTP: ``convspec serve MODEL.onnx`` (the ``serve`` extra).

>>> from convspec.runtime.serve import create_app, run
>>> app = create_app("runs/digits-cnn/model.onnx")      # a FastAPI app (tests, other ASGI servers)
>>> run("runs/digits-cnn/model.onnx", port=8000)         # uvicorn, until Ctrl-C

Endpoints (``../shared/SPEC.md``, "Serving"): ``POST /predict`` (one image as the body,
source ``"body"``; or several multipart ``file`` fields, source = each part's file name;
``?top_k=K``) answers ``{"predictions": [...]}``, each item what ``convspec predict
--format json`` prints for that image; ``GET /health``, ``/metadata``, ``/metrics``
(Prometheus text) and ``/`` (a page to try images). Torch-free.
"""

from __future__ import annotations

import json
import os
import socket

from convspec.specs import ConvspecError
from convspec.specs.extras import require

from .app import BODY, ENV, ClientError, create_app

__all__ = ["BODY", "ClientError", "create_app", "run"]


def run(
    model_path: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: int = 32,
    max_delay_ms: float = 5.0,
    max_bytes: int = 20_000_000,
    workers: int = 1,
) -> None:
    """Serve ``model_path`` with uvicorn until interrupted.

    Args:
        model_path: the ``.onnx`` file.
        host, port: where to listen (``127.0.0.1`` is this machine only; ``0.0.0.0`` every interface).
        max_batch, max_delay_ms, max_bytes: see :func:`create_app`.
        workers: processes, each with its own model session and batcher, sharing the port;
            ORT's threads are divided among them.

    Raises:
        MissingExtra: the ``serve`` extra is not installed.
        ModelError: the model cannot be used (checked before listening).
        ConvspecError: ``host:port`` cannot be listened on (taken, not this machine's, no such host).
    """
    uvicorn = require("uvicorn", "serve", "convspec serve")
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (got {workers})")
    path = os.fspath(model_path)
    check_address(host, port)
    common = dict(
        host=host,
        port=port,
        access_log=False,
        log_level="info",
        timeout_graceful_shutdown=5,
        # Why bounded: each connection may hold a body of up to max_bytes while it arrives
        limit_concurrency=MAX_CONNECTIONS,
        http=_protocol(),
        h11_max_incomplete_event_size=64 << 10,
    )
    if workers == 1:
        app = create_app(path, max_batch=max_batch, max_delay_ms=max_delay_ms, max_bytes=max_bytes)
        uvicorn.run(app, **common)
        return
    from ..predictor import Predictor

    Predictor(path, providers="cpu")  # Why a session: a bad model fails here, once, not in N workers forever
    # Why divide: N sessions each taking every core would fight over them.
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ[ENV] = json.dumps(
        dict(
            model_path=os.path.abspath(path),
            max_batch=max_batch,
            max_delay_ms=max_delay_ms,
            max_bytes=max_bytes,
            intra_op_threads=threads,
        )
    )
    uvicorn.run("convspec.runtime.serve.app:app_from_env", factory=True, workers=workers, **common)


MAX_CONNECTIONS = 128  # open connections per process; more are answered 503


def _protocol():
    """httptools with a cap on request heads where it is installed (uvicorn's choice), else h11 (capped)."""
    try:
        from .http import BoundedHttpTools
    except ImportError:
        return "h11"
    return BoundedHttpTools


def check_address(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will, and let go: a taken port is one line, not uvicorn's exit 3.

    Raises:
        ConvspecError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn decides
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no obstacle
            sock.bind((host, port))
    except OSError as e:
        why = e.strerror or str(e)
        raise ConvspecError(f"--host {host} --port {port}: cannot listen there ({why})") from None

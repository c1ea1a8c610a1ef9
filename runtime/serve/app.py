"""The HTTP app: ``POST /predict``, ``GET /health``, ``/metadata``, ``/metrics`` and ``/`` (a page).

One :class:`~convspec.runtime.Predictor` (one ORT session) per process; uploads are read
whole (up to ``max_bytes``), decoded in a thread pool by the runtime's one image loader
(:func:`convspec.runtime.images.load_image_bytes`, the pixels ``convspec predict`` sees), and
only then queued for the :class:`~.batcher.Batcher`. Every answer to a client's mistake is a
4xx with ``{"error": "..."}``; the server's own failures are a 500 with the same shape and
no traceback.

FastAPI, uvicorn and prometheus-client are the ``serve`` extra, imported inside
:func:`create_app` (``pip install "convspec[serve]"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.resources
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from convspec.specs.extras import require

from ..images import ImageError, ImageTooLarge, load_image_bytes
from ..predictor import Predictor
from .batcher import Batcher

FEATURE = "convspec serve"
ENV = "CONVSPEC_SERVE"  # JSON of create_app's arguments, for uvicorn's worker processes
BODY = "body"  # the source name of an image sent as the raw request body
ENDPOINTS = ("/predict", "/health", "/metadata", "/metrics", "/")


class ClientError(Exception):
    """A request the server refuses: HTTP ``status``, a metrics ``kind``, a one-line ``message``."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def _version() -> str:
    try:
        return importlib.metadata.version("convspec")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def page_html() -> str:
    """The try-it page served at ``GET /`` (one self-contained file, no outside URLs)."""
    return importlib.resources.files(__package__).joinpath("page.html").read_text("utf-8")


def create_app(
    model_path: str | os.PathLike,
    *,
    max_batch: int = 32,
    max_delay_ms: float = 5.0,
    max_bytes: int = 20_000_000,
    intra_op_threads: int | None = None,
):
    """A FastAPI app serving one exported model.

    Args:
        model_path: the ``.onnx`` file.
        max_batch: the most images per ONNX Runtime run.
        max_delay_ms: how long the first image of a batch waits for others.
        max_bytes: the largest request body accepted (413 above it).
        intra_op_threads: ORT's intra-op threads (default: ORT's choice, all cores).

    Returns:
        a ``fastapi.FastAPI`` application (serve it with uvicorn, or :func:`convspec.runtime.serve.run`).

    Raises:
        MissingExtra: FastAPI / prometheus-client / python-multipart not installed.
        ModelError: the model cannot be used (see :class:`~convspec.runtime.Predictor`).
    """
    fastapi = require("fastapi", "serve", FEATURE)
    prom = require("prometheus_client", "serve", FEATURE)
    require("python_multipart", "serve", FEATURE)
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, Response

    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1 (got {max_bytes})")
    predictor = Predictor(model_path, intra_op_threads=intra_op_threads, spinning=False)
    info = predictor.info
    channels, size, resize = info.channels, info.size, info.resize
    classes = predictor.classes

    registry = prom.CollectorRegistry()
    m_requests = prom.Counter(
        "convspec_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=registry
    )
    m_errors = prom.Counter("convspec_errors", "Refused or failed requests by kind", ["kind"], registry=registry)
    m_images = prom.Counter("convspec_images", "Images predicted", registry=registry)
    m_batch = prom.Histogram(
        "convspec_batch_size",
        "Images per ONNX Runtime run",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        registry=registry,
    )
    m_latency = prom.Histogram(
        "convspec_request_latency_seconds",
        "POST /predict: seconds from the request's arrival to its answer",
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        registry=registry,
    )

    def run_batch(batch: np.ndarray) -> np.ndarray:
        return predictor.class_probabilities(predictor.predict_arrays(batch))

    arriving = [0]  # requests inside POST /predict that have not queued their images yet
    batcher = Batcher(
        run_batch,
        max_batch=max_batch,
        max_delay=max_delay_ms / 1000.0,
        on_batch=m_batch.observe,
        arriving=lambda: arriving[0],
    )
    decode_pool = ThreadPoolExecutor(
        max_workers=min(8, (os.cpu_count() or 1) + 2), thread_name_prefix="convspec-decode"
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await batcher.close()
        decode_pool.shutdown(wait=False)

    app = fastapi.FastAPI(
        title="convspec serve",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.predictor = predictor
    app.state.registry = registry

    # -- errors: always {"error": "..."}, never a traceback

    def error(status: int, kind: str, message: str) -> JSONResponse:
        m_errors.labels(kind).inc()
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(ClientError)
    async def client_error(_request, e: ClientError):
        return error(e.status, e.kind, e.message)

    @app.exception_handler(HTTPException)
    async def http_error(_request, e: HTTPException):
        return error(e.status_code, "http", str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, e: RequestValidationError):
        return error(400, "bad_request", "; ".join(str(x.get("msg", x)) for x in e.errors()) or "bad request")

    @app.exception_handler(Exception)
    async def internal_error(_request, e: Exception):
        return error(500, "internal", f"internal server error ({type(e).__name__}); see the server's log")

    # -- reading requests

    async def read_body(request: Request) -> bytes:
        """The whole body, or 413 as soon as it is over ``max_bytes`` (read before anything is queued)."""
        length = request.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ClientError(400, "bad_request", f"Content-Length is not a number (got {length!r})")
            if int(length) > max_bytes:
                raise ClientError(
                    413, "too_large", f"request body is {int(length)} bytes, over the limit of {max_bytes} bytes"
                )
        chunks, total = [], 0
        try:
            async for chunk in request.stream():
                total += len(chunk)
                if total > max_bytes:
                    raise ClientError(413, "too_large", f"request body is over the limit of {max_bytes} bytes")
                chunks.append(chunk)
        except ClientDisconnect:
            raise ClientError(400, "disconnected", "the client went away before sending the whole body") from None
        return b"".join(chunks)

    async def uploads(request: Request, body: bytes) -> list[tuple[str, bytes]]:
        """``(source, bytes)`` per image: the raw body, or each multipart ``file`` field."""
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            if not body:
                raise ClientError(
                    400, "bad_request", "empty request: send one image as the body, or multipart 'file' fields"
                )
            return [(BODY, body)]

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, receive).form(max_part_size=max_bytes)
        except Exception as e:  # Why broad: starlette's MultiPartException and python-multipart's own errors
            raise ClientError(
                400, "bad_request", f"cannot parse the multipart body ({str(e) or type(e).__name__})"
            ) from None
        try:
            files, names = [], []
            for i, (key, value) in enumerate(form.multi_items()):
                names.append(key)
                if key != "file":
                    continue
                if isinstance(value, str):
                    raise ClientError(400, "bad_request", f"multipart part {i} 'file' is a text field, not a file")
                files.append((value.filename or f"file[{len(files)}]", await value.read()))
        finally:
            await form.close()
        if not files:
            got = ", ".join(repr(n) for n in names) or "no parts"
            raise ClientError(400, "bad_request", f"no multipart 'file' fields (got {got}); send images as 'file'")
        return files

    def top_k_of(request: Request) -> int:
        raw = request.query_params.get("top_k", "1")
        try:
            k = int(raw)
        except ValueError:
            raise ClientError(400, "bad_request", f"top_k must be a whole number >= 1 (got {raw!r})") from None
        if k < 1:
            raise ClientError(400, "bad_request", f"top_k must be >= 1 (got {k})")
        return min(k, len(classes))

    async def decode(items: list[tuple[str, bytes]]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        jobs = [
            loop.run_in_executor(decode_pool, load_image_bytes, data, src, channels, size, resize)
            for src, data in items
        ]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for r in results:  # the first bad part in request order names the answer
            if isinstance(r, ImageTooLarge):
                raise ClientError(422, "bomb", str(r))
            if isinstance(r, ImageError):
                raise ClientError(400, "bad_image", str(r))
            if isinstance(r, BaseException):
                raise r
        return results  # type: ignore[return-value]

    # -- endpoints

    # Why Starlette routes (app.add_route) and not FastAPI's decorators: the endpoints take the raw
    # Request and build their own responses, and FastAPI's per-request dependency solving and
    # response validation cost about as much CPU as the model itself on small images.

    async def predict(request: Request):
        arriving[0] += 1
        try:
            k = top_k_of(request)
            items = await uploads(request, await read_body(request))
            arrays = await decode(items)
        finally:
            arriving[0] -= 1
        rows = await batcher.submit(arrays)
        m_images.inc(len(rows))
        # Why the private method: the same Prediction (and so the same JSON) as Predictor.predict.
        preds = [predictor._prediction(src, row, k).to_dict() for (src, _), row in zip(items, rows)]
        return JSONResponse({"predictions": preds})

    async def health(_request: Request):
        return JSONResponse({"status": "ok"})

    meta = {
        "model": os.path.basename(predictor.path),
        "classes": classes,
        "task": info.task,
        "input": {"channels": channels, "size": list(size), "resize": resize},
        "threshold": _threshold(predictor),
        "test_metrics": info.test_metrics or None,
        "version": _version(),
        "model_version": info.version or None,
        "max_batch": max_batch,
        "max_bytes": max_bytes,
    }

    async def metadata(_request: Request):
        return JSONResponse(meta)

    async def metrics(_request: Request):
        return Response(prom.generate_latest(registry), media_type=prom.CONTENT_TYPE_LATEST)

    page = page_html()

    async def index(_request: Request):
        return HTMLResponse(page)

    app.add_route("/predict", predict, methods=["POST"])
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/metadata", metadata, methods=["GET"])
    app.add_route("/metrics", metrics, methods=["GET"])
    app.add_route("/", index, methods=["GET"])

    app.add_middleware(_Count, requests=m_requests, latency=m_latency)
    return app


def _threshold(predictor: Predictor) -> float | None:
    """The model's operating threshold (``convspec.threshold`` metadata, binary models), else None."""
    return predictor.threshold


class _Count:
    """ASGI middleware: count every HTTP request by endpoint and status; time ``POST /predict``.

    Why plain ASGI: Starlette's BaseHTTPMiddleware adds a task and a stream copy per request.
    """

    def __init__(self, app, requests, latency):
        self.app, self.requests, self.latency = app, requests, latency

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in ENDPOINTS else "other"
            self.requests.labels(endpoint, str(status[0])).inc()
            if endpoint == "/predict":
                self.latency.observe(time.perf_counter() - start)


def app_from_env():
    """:func:`create_app` with the arguments in ``$CONVSPEC_SERVE`` (uvicorn's ``factory`` for ``--workers``)."""
    args = json.loads(os.environ[ENV])
    return create_app(args.pop("model_path"), **args)

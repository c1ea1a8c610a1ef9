"""The HTTP app: ``POST /predict``, ``GET /health``, ``/metadata``, ``/metrics`` and ``/`` (a page).

One :class:`~convspec.runtime.Predictor` (one ORT session) per process; uploads are read
whole (up to ``max_bytes``), decoded by the runtime's one image loader
(:func:`convspec.runtime.images.open_image_bytes`, the pixels ``convspec predict`` sees; in a
thread pool unless the header says the image is a thumbnail), and only then queued for the
:class:`~.batcher.Batcher`. Every answer to a client's mistake is a 4xx with ``{"error": ...}``;
the server's own failures are a 500 with the same shape and no traceback. ``POST /predict``
is served by the outermost middleware on the raw ASGI scope (:class:`_Front`); the other
endpoints are Starlette routes.

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
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from convspec.specs.extras import require

from ..images import ImageError, ImageTooLarge, open_image_bytes
from ..predictor import Predictor
from .batcher import Batcher

FEATURE = "convspec serve"
ENV = "CONVSPEC_SERVE"  # JSON of create_app's arguments, for uvicorn's worker processes
BODY = "body"  # the source name of an image sent as the raw request body
ENDPOINTS = ("/predict", "/health", "/metadata", "/metrics", "/")
INLINE_PIXELS = 128 * 128  # images up to this size decode on the event loop (well under a millisecond)
INLINE_BYTES = 1 << 20  # files larger than this are opened in the decode pool too (their headers may be slow)
BODY_IDLE_S = 30.0  # a request body that sends nothing for this long is answered 408


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
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response

    if max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1 (got {max_bytes})")
    if not 0 <= max_delay_ms <= 10_000:  # inf: one stalled upload held every other request forever
        raise ValueError(f"max_delay_ms must be 0 to 10000 (got {max_delay_ms})")
    predictor = Predictor(model_path, intra_op_threads=intra_op_threads, spinning=False)
    info = predictor.info
    channels, size, resize = info.channels, info.size, info.resize

    def decode_one(opened) -> np.ndarray:
        return opened.decode(channels, size, resize, bits_stored=info.bits_stored)

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

    # -- reading requests (raw ASGI: POST /predict bypasses the router, see _Front)

    async def read_body(scope, receive) -> bytes:
        """The whole body, or 413 as soon as it is over ``max_bytes`` (read before anything is queued)."""
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise ClientError(400, "bad_request", f"Content-Length is not a number (got {length!r})")
            if int(length) > max_bytes:
                raise ClientError(
                    413, "too_large", f"request body is {int(length)} bytes, over the limit of {max_bytes} bytes"
                )
        chunks, total = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), BODY_IDLE_S)
            except asyncio.TimeoutError:  # noqa: UP041 - Python 3.10's is not the builtin. Why: a stalled upload would pin its bytes (and a connection) forever
                raise ClientError(
                    408, "timeout", f"no part of the request body arrived for {BODY_IDLE_S:g} s"
                ) from None
            if message["type"] == "http.disconnect":  # 499: nginx's "client closed request", not a bad request
                raise ClientError(499, "disconnected", "the client went away before sending the whole body")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > max_bytes:
                raise ClientError(413, "too_large", f"request body is over the limit of {max_bytes} bytes")
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def uploads(scope, body: bytes) -> list[tuple[str, bytes]]:
        """``(source, bytes)`` per image: the raw body, or each multipart ``file`` field."""
        ctype = _header(scope, b"content-type") or ""
        if not ctype.lower().startswith("multipart/form-data"):
            if not body:
                raise ClientError(
                    400, "bad_request", "empty request: send one image as the body, or multipart 'file' fields"
                )
            return [(BODY, body)]

        boundary = _boundary(ctype)
        if boundary and b"--" + boundary + b"--" not in body:  # Why: a body cut after a whole part lost the rest unseen
            raise ClientError(
                400, "bad_request", f"the multipart body ({len(body)} bytes) is cut short: it has no closing boundary"
            )

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, receive).form(max_part_size=max_bytes)
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
                if isinstance(value, str):  # Why name filename=: RFC 7578 forbids filename*, so parsers skip it
                    raise ClientError(
                        400,
                        "bad_request",
                        f"multipart part {i} 'file' is a text field, not a file: its Content-Disposition "
                        'needs filename="..." (filename* alone is not read, RFC 7578)',
                    )
                files.append((value.filename or f"file[{len(files)}]", await value.read()))
        finally:
            await form.close()
        if not names:  # a body cut short (or a wrong boundary): the parser found no whole part
            raise ClientError(
                400,
                "bad_request",
                f"the multipart body ({len(body)} bytes) holds no complete part: cut short, or its boundary is "
                "not the one in Content-Type",
            )
        if not files:
            got = ", ".join(repr(n) for n in names)
            raise ClientError(400, "bad_request", f"no multipart 'file' fields (got {got}); send images as 'file'")
        return files

    def top_k_of(scope) -> int:
        query = scope.get("query_string", b"")
        raw = dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True)).get("top_k", "1") if query else "1"
        if raw.strip().isdigit() and len(raw.strip()) > 9:  # past int()'s digit limit too: every class
            return len(classes)
        try:
            k = int(raw)
        except ValueError:
            shown = raw if len(raw) <= 40 else raw[:37] + "..."
            raise ClientError(400, "bad_request", f"top_k must be a whole number >= 1 (got {shown!r})") from None
        if k < 1:
            raise ClientError(400, "bad_request", f"top_k must be >= 1 (got {k})")
        return min(k, len(classes))

    def open_and_decode(src: str, data: bytes) -> np.ndarray:
        return decode_one(open_image_bytes(data, src))

    async def decode(items: list[tuple[str, bytes]]) -> list[np.ndarray]:
        results: list[Any] = []
        jobs = {}
        for i, (src, data) in enumerate(items):
            if len(data) > INLINE_BYTES:  # Why: a file's headers may be megabytes of chunks or strips (seconds)
                results.append(None)
                jobs[i] = asyncio.get_running_loop().run_in_executor(decode_pool, open_and_decode, src, data)
                continue
            try:  # headers only, here: microseconds, and a bomb is refused before any decode
                results.append(open_image_bytes(data, src))
            except ImageError as e:
                results.append(e)
        for i, opened in enumerate(results):
            if isinstance(opened, ImageError) or i in jobs:
                continue
            # Why inline below INLINE_PIXELS: for a thumbnail the thread hop costs more CPU than the
            # decode; larger images (and so every slow decode) go to the pool and never block the loop.
            if opened.pixels <= INLINE_PIXELS:
                try:
                    results[i] = decode_one(opened)
                except ImageError as e:
                    results[i] = e
            else:
                jobs[i] = asyncio.get_running_loop().run_in_executor(decode_pool, decode_one, opened)
        if jobs:
            for i, r in zip(jobs, await asyncio.gather(*jobs.values(), return_exceptions=True)):
                results[i] = r
        for r in results:  # the first bad part in request order names the answer
            if isinstance(r, ImageTooLarge):
                raise ClientError(422, "bomb", str(r))
            if isinstance(r, ImageError):
                raise ClientError(400, "bad_image", str(r))
            if isinstance(r, BaseException):
                raise r
        return results

    # -- endpoints

    async def predict(scope, receive) -> bytes:
        """``POST /predict``: the JSON answer, or a ClientError."""
        arriving[0] += 1
        try:
            k = top_k_of(scope)
            items = await uploads(scope, await read_body(scope, receive))
            arrays = await decode(items)
        finally:
            arriving[0] -= 1
        rows = await batcher.submit(arrays)
        m_images.inc(len(rows))
        # Why the private method: the same Prediction (and so the same JSON) as Predictor.predict.
        preds = [predictor._prediction(src, row, k).to_dict() for (src, _), row in zip(items, rows)]
        return _json({"predictions": preds})

    async def health(_request: Request):
        return JSONResponse({"status": "ok"})

    meta = {
        "model": os.path.basename(predictor.path),
        "classes": classes,
        "task": info.task,
        "input": {"channels": channels, "size": list(size), "resize": resize, "bits_stored": info.bits_stored},
        "threshold": _threshold(predictor),
        "metrics": info.test_metrics or None,  # SPEC.md's name: the model's test metrics
        "test_metrics": info.test_metrics or None,  # the same, by the name the metadata uses
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

    app.add_route("/health", health, methods=["GET"])
    app.add_route("/metadata", metadata, methods=["GET"])
    app.add_route("/metrics", metrics, methods=["GET"])
    app.add_route("/", index, methods=["GET"])

    app.add_middleware(_Front, predict=predict, requests=m_requests, latency=m_latency, errors=m_errors)
    return app


def _threshold(predictor: Predictor) -> float | None:
    """The model's operating threshold (``convspec.threshold`` metadata, binary models), else None."""
    return predictor.threshold


def _boundary(ctype: str) -> bytes | None:
    """The multipart boundary in a Content-Type header (quoted or not), as bytes; None without one."""
    m = re.search(r'boundary="?([^";]+)"?', ctype, re.IGNORECASE)
    return m.group(1).strip().encode("latin-1", "replace") if m else None


def _header(scope, name: bytes) -> str | None:
    """The first value of the lower-case header ``name``, or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _json(content: Any) -> bytes:
    """JSON as Starlette's JSONResponse renders it (and so the same floats as ``convspec predict --format json``)."""
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


class _Front:
    """ASGI middleware: serve ``/predict`` itself; count every HTTP request by endpoint and status.

    Why ``/predict`` here and not as a route: on small images Starlette's router, request
    wrapper and exception middleware cost as much CPU per request as the model (FastAPI's
    decorators, with dependency solving and response validation, more); the other endpoints
    are not hot and stay routes. Why plain ASGI: Starlette's BaseHTTPMiddleware adds a task
    and a stream copy per request.
    """

    def __init__(self, app, predict, requests, latency, errors):
        self.app, self.predict, self.latency, self.errors = app, predict, latency, errors
        self._requests = requests
        self._counters: dict[tuple[str, int], Any] = {}  # Why: labels() costs a lock and a lookup per call

    def count(self, endpoint: str, status: int) -> None:
        counter = self._counters.get((endpoint, status))
        if counter is None:
            counter = self._counters[endpoint, status] = self._requests.labels(endpoint, str(status))
        counter.inc()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/predict":
            return await self.serve_predict(scope, receive, send)
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.count(path if path in ENDPOINTS else "other", status[0])

    async def serve_predict(self, scope, receive, send):
        start = time.perf_counter()
        headers = [(b"content-type", b"application/json")]
        failure = None
        if scope["method"] != "POST":
            status, kind, body = 405, "http", _json({"error": "Method Not Allowed"})
            headers.append((b"allow", b"POST"))
        else:
            try:
                status, kind, body = 200, None, await self.predict(scope, receive)
            except ClientError as e:
                status, kind, body = e.status, e.kind, _json({"error": e.message})
            except Exception as e:  # the server's own failure: a JSON 500 here, the traceback in the log
                status, kind, failure = 500, "internal", e
                body = _json({"error": f"internal server error ({type(e).__name__}); see the server's log"})
        if kind is not None:
            self.errors.labels(kind).inc()
        headers.append((b"content-length", str(len(body)).encode("latin-1")))
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.count("/predict", status)
            self.latency.observe(time.perf_counter() - start)
        if failure is not None:
            raise failure  # Why: uvicorn logs it with its traceback, as Starlette's ServerErrorMiddleware does


def app_from_env():
    """:func:`create_app` with the arguments in ``$CONVSPEC_SERVE`` (uvicorn's ``factory`` for ``--workers``)."""
    args = json.loads(os.environ[ENV])
    return create_app(args.pop("model_path"), **args)

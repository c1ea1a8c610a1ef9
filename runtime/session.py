"""ONNX Runtime sessions: providers, options, and opening a model file with clear errors.

Torch-free. Why the CUDA probe (:func:`cuda_usable`): ``onnxruntime-gpu`` lists
``CUDAExecutionProvider`` on every machine, and asking for it where the CUDA libraries are
missing prints two red error lines from ORT's C++ logger (which no Python setting scopes to
one session). The probe asks the dynamic loader for the driver and the CUDA runtime/cuBLAS
libraries ORT's CUDA provider links against (``ctypes.CDLL``, microseconds, cached); only when
they load is CUDA asked for, and the session's own ``get_providers()`` then says whether it
was taken.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
from collections.abc import Sequence
from typing import Any

from convspec.specs.errors import ConvspecError
from convspec.specs.readfile import FileReadError, check_regular, open_regular

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class ModelError(ConvspecError):
    """A model file or input that cannot be used: missing, corrupt, not ONNX, wrong input."""


@functools.cache
def cuda_usable() -> bool:
    """Whether ORT's CUDA provider can load here (without asking ORT, which would log errors).

    Linux: the driver (``libcuda.so.1``) and the CUDA runtime and cuBLAS libraries of the
    CUDA major version this onnxruntime-gpu was built with must load; when only the driver
    does, ``onnxruntime.preload_dlls()`` gets one chance to find them in NVIDIA's pip wheels.
    Elsewhere the provider's presence in the build decides (ORT is then left to try).
    """
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False
    if not sys.platform.startswith("linux"):
        return True
    import ctypes

    def loads(names: list[str]) -> bool:
        for name in names:
            try:
                ctypes.CDLL(name)
            except OSError:
                return False
        return True

    if not loads(["libcuda.so.1"]):
        return False  # no NVIDIA driver: the common CPU-only box
    try:
        from onnxruntime.capi import build_and_package_info as build

        major = str(build.cuda_version).split(".")[0]
    except (ImportError, AttributeError):
        return True
    if not major.isdigit():
        return True
    libs = [f"libcudart.so.{major}", f"libcublasLt.so.{major}", f"libcublas.so.{major}"]
    if loads(libs):
        return True
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return False
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            preload()
        except Exception:
            return False
    return loads(libs)


def resolve_providers(providers: str | Sequence[str] = "auto") -> list[str]:
    """``"auto"`` (CUDA when usable, then CPU), ``"cpu"``, ``"cuda"`` or an explicit list."""
    if isinstance(providers, str):
        key = providers.lower()
        if key == "auto":
            return [CUDA, CPU] if cuda_usable() else [CPU]
        if key == "cpu":
            return [CPU]
        if key == "cuda":
            if not cuda_usable():
                raise ModelError(
                    "providers='cuda': CUDA is not usable here (no NVIDIA driver, or onnxruntime-gpu's "
                    "CUDA/cuBLAS libraries are not found); use providers='auto' or 'cpu'"
                )
            return [CUDA, CPU]
        raise ModelError(f"providers must be auto, cpu, cuda or a list of ORT provider names (got {providers!r})")
    return list(providers)


@functools.cache
def quiet_ort() -> None:
    """ORT's process-wide C++ logger to errors-and-above only (once per process).

    Why: a graph that fails while loading or running logs its own ``[E:onnxruntime:...]``
    lines to stderr before the exception; the exception becomes one ModelError line, so the
    log line would be a second, raw copy of the same failure. Severity 4 (fatal) keeps those
    off the terminal; the session options' own level (3) covers per-session warnings.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(4)


def session_options(intra_op_threads: int | None = None, *, spinning: bool = True):
    """Full graph optimization; ORT's per-session warnings kept off the user's screen.

    ``spinning=False``: ORT's idle worker threads sleep instead of busy-waiting for the next
    run (a server between requests, sharing its cores with decoding and HTTP).
    """
    import onnxruntime as ort

    quiet_ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Why 4 (fatal only): warnings ("some nodes were not assigned to the preferred EP" on CUDA)
    # are noise, and every error ORT logs while loading or running also comes back as the
    # exception that becomes one ModelError line; the log line would be a raw second copy.
    so.log_severity_level = 4
    if intra_op_threads:
        so.intra_op_num_threads = int(intra_op_threads)
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def open_session(
    model: str | os.PathLike | bytes,
    providers: str | Sequence[str] = "auto",
    intra_op_threads: int | None = None,
    *,
    spinning: bool = True,
):
    """An ORT ``InferenceSession`` for a model file (or serialized bytes), with clear errors.

    Raises:
        ModelError: the file is missing, a folder, empty, not an ONNX model, truncated or
            corrupt, or uses operators this onnxruntime cannot run.
    """
    import onnxruntime as ort

    if isinstance(model, bytes):
        name, source = "<model bytes>", model
    else:
        name = os.fspath(model)
        _check_file(name)
        source = name
    try:
        return ort.InferenceSession(
            source,
            sess_options=session_options(intra_op_threads, spinning=spinning),
            providers=resolve_providers(providers),
        )
    except ModelError:
        raise
    except Exception as e:  # ORT raises its own Fail / InvalidProtobuf / InvalidGraph / RuntimeError
        raise ModelError(_load_failure(name, source, e)) from None


def _check_file(name: str) -> None:
    """A regular file within ``LIMITS["model"]``: a FIFO or device would block or never end in ORT."""
    try:
        st = check_regular(name, "model")
    except FileReadError as e:
        if e.reason == "file not found":
            raise ModelError(f"{name}: model file not found") from None
        if e.reason == "is a folder, not a regular file":
            raise ModelError(f"{name}: is a folder, not an .onnx model file") from None
        raise ModelError(str(e)) from None
    if st.st_size == 0:
        raise ModelError(f"{name}: empty file (0 bytes), not an ONNX model")


def _load_failure(name: str, source: Any, e: Exception) -> str:
    """Explain why ORT refused a model: not ONNX at all, or an ONNX file that is damaged."""
    text = " ".join(str(e).split())
    head = b""
    if isinstance(source, bytes):
        head = source[:8]
    else:
        with contextlib.suppress(OSError, ConvspecError), open_regular(source, "model") as f:
            head = f.read(8)
    if head.startswith(b"PK"):
        return (
            f"{name}: not an ONNX model (it is a zip archive, e.g. a PyTorch checkpoint); "
            "export a run with: convspec export RUN"
        )
    looks_onnx = len(head) >= 2 and head[0] == 0x08 and 1 <= head[1] <= 32  # field 1 (ir_version), varint
    if "protobuf" in text.lower() or "INVALID_PROTOBUF" in text:
        if looks_onnx:
            return f"{name}: the ONNX model cannot be parsed: the file is truncated or corrupt; export it again"
        return f"{name}: not an ONNX model (the file is not an ONNX protobuf)"
    if looks_onnx:
        return f"{name}: onnxruntime cannot load this ONNX model (truncated, corrupt or unsupported): {text[:300]}"
    return f"{name}: not an ONNX model ({text[:300]})"

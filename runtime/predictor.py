"""Run an exported model with ONNX Runtime: sessions, providers, input checks, batched prediction.

Torch-free (onnxruntime, numpy, Pillow). A :class:`Predictor` holds one ORT session and the
model's :class:`~convspec.runtime.metadata.ModelInfo`; images go through the same loader
training used (:func:`convspec.runtime.images.load_image`), so a model is served exactly
the pixels it was trained on.

Providers: ``"auto"`` puts CUDA first where it can work and CPU always last
(:mod:`convspec.runtime.session`).
"""

from __future__ import annotations

import collections
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .images import ImageError, load_image, prepare_array
from .metadata import ModelInfo, session_info
from .metrics import predictions
from .session import CPU, CUDA, ModelError, cuda_usable, open_session, resolve_providers  # noqa: F401  (re-exported)

# The float input of one ORT run on the CPU in :meth:`Predictor.scored_chunks` (see _run_images).
CPU_RUN_BYTES = 2 << 20
# The uint8 pixels of one worker's batch in :meth:`Predictor.scored_chunks`, at most.
CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class Chunk:
    """One batch of :meth:`Predictor.scored_chunks`.

    Attributes:
        start: the index of its first item.
        kept: the indices of the items that loaded, ascending.
        sources: their sources (file path as given, or ``<array i>``).
        probabilities: ``(len(kept), K)`` class probabilities (binary: ``[1 - p, p]``).
        errors: the :class:`ImageError` of each item that did not load, in order.
    """

    start: int
    kept: list[int]
    sources: list[str]
    probabilities: np.ndarray
    errors: list[ImageError]

    @property
    def failures(self) -> list[tuple[str, str]]:
        """``(source, reason)`` of the items that did not load."""
        return [(e.path, e.reason) for e in self.errors]


@dataclass(frozen=True)
class Prediction:
    """The prediction for one image.

    Attributes:
        source: the file path as given, or ``<array i>`` for the i-th array.
        label: the most probable class.
        probability: its probability.
        top: the ``top_k`` most probable ``(label, probability)``, best first.
        probabilities: every class's probability, in the model's class order (binary
            models: both classes, ``1 - p`` and ``p``).
    """

    source: str
    label: str
    probability: float
    top: list[tuple[str, float]]
    probabilities: dict[str, float] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "label": self.label,
            "probability": self.probability,
            "top": [{"label": lab, "probability": p} for lab, p in self.top],
        }


def _check_io(session, name: str) -> tuple[str, str, tuple]:
    """The single uint8 (N, C, H, W) input and the first output, or a ModelError."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        names = ", ".join(f"{i.name} {i.type} {list(i.shape)}" for i in inputs)
        raise ModelError(
            f"{name}: the model takes {len(inputs)} inputs ({names}); "
            "convspec models take one uint8 image batch (N, C, H, W)"
        )
    inp = inputs[0]
    if inp.type != "tensor(uint8)" or len(inp.shape) != 4:
        raise ModelError(
            f"{name}: the model's input {inp.name!r} is {inp.type} {list(inp.shape)}; "
            "convspec models take uint8 pixels (N, C, H, W) (export with: convspec export RUN)"
        )
    outputs = session.get_outputs()
    if not outputs or len(outputs[0].shape) != 2:
        got = f"{outputs[0].type} {list(outputs[0].shape)}" if outputs else "no output"
        raise ModelError(f"{name}: the model's output is {got}; expected probabilities (N, classes)")
    return inp.name, outputs[0].name, tuple(inp.shape)


# ------------------------------------------------------------------ predictor


class Predictor:
    """An exported convspec model, ready to classify images.

    Args:
        path: the ``.onnx`` file (or its serialized bytes).
        providers: ``"auto"`` (CUDA first where usable, CPU fallback), ``"cpu"``, ``"cuda"``,
            or a list of ORT provider names.
        intra_op_threads: ORT's intra-op thread count (default: ORT's choice, all cores).
        spinning: let ORT's idle threads busy-wait for the next run (fastest for back-to-back
            batches; a server turns it off, see :func:`~convspec.runtime.session.session_options`).

    Thread-safe: ``predict`` and ``predict_arrays`` may be called from many threads at once
    (ORT's ``run`` is thread-safe and the predictor holds no mutable state).

    Raises:
        ModelError: see :func:`open_session`; or a model whose input is not uint8
            ``(N, C, H, W)``, or whose metadata is malformed.

    Example:
        >>> p = Predictor("runs/digits-cnn/model.onnx")
        >>> p.predict(["a.png", "b.png"], top_k=3)[0].label
    """

    def __init__(
        self,
        path: str | os.PathLike | bytes,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int | None = None,
        *,
        spinning: bool = True,
    ):
        self.path = "<model bytes>" if isinstance(path, bytes) else os.fspath(path)
        self.session = open_session(path, providers, intra_op_threads, spinning=spinning)
        if isinstance(providers, str) and providers.lower() == "cuda" and CUDA not in self.session.get_providers():
            raise ModelError(f"{self.path}: providers='cuda' but onnxruntime could not start CUDA; use 'auto' or 'cpu'")
        self._input, self._output, shape = _check_io(self.session, self.path)
        try:
            self.info: ModelInfo = session_info(self.session, self.path)
        except ValueError as e:
            raise ModelError(str(e)) from None
        c, h, w = shape[1:]
        graph = tuple(d if isinstance(d, int) else None for d in (c, h, w))
        if any(g is not None and g != m for g, m in zip(graph, self.info.input_shape, strict=True)):
            raise ModelError(
                f"{self.path}: the metadata says input {list(self.info.input_shape)} "
                f"but the graph takes {list(shape[1:])}"
            )
        n = shape[0]
        self._fixed_batch = n if isinstance(n, int) and n > 0 else None
        self._classes = list(self.info.classes)
        self._binary = self.info.task == "binary"
        self._threshold = 0.5 if self.info.threshold is None else float(self.info.threshold)
        # Why cache-sized runs on the CPU: a run's float activations of a MB or two stay in cache
        # (3x224x224, workers decoding and scoring 64 images a batch: runs of 3 images 3,400
        # images/s against 2,630 for 64 with one ORT thread, 2,500 against 2,190 with ORT's
        # default pool); a GPU wants whole batches, a fixed-batch model its size
        on_cpu = CUDA not in self.session.get_providers() and self._fixed_batch is None
        self._run_images = max(1, CPU_RUN_BYTES // (4 * math.prod(self.info.input_shape))) if on_cpu else None

    # -- what the model is

    @property
    def providers(self) -> list[str]:
        """Execution providers the session actually uses, in priority order."""
        return list(self.session.get_providers())

    @property
    def classes(self) -> list[str]:
        return list(self._classes)

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return self.info.input_shape

    @property
    def threshold(self) -> float | None:
        """Binary models: the operating threshold from the metadata (0.5 without one); None for multiclass."""
        return self._threshold if self._binary else None

    def __repr__(self) -> str:
        return (
            f"Predictor({self.path!r}, {self.info.task}, {len(self._classes)} classes, "
            f"input {list(self.input_shape)}, providers={self.providers})"
        )

    # -- running it

    def predict_arrays(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities of a ready batch: uint8 ``(N, C, H, W)`` at the model's size.

        Returns:
            float32 ``(N, outputs)``: ``(N, 1)`` (probability of the second class) for
            binary models, ``(N, K)`` softmax for multiclass.

        Raises:
            ModelError: not a uint8 array, or not ``(N, C, H, W)`` with the model's C, H, W.
        """
        batch = self._check_batch(batch)
        if self._fixed_batch is None or len(batch) == self._fixed_batch:
            return self._run(batch)
        k = self._fixed_batch  # a model exported with dynamic_batch: false
        parts = []
        for i in range(0, len(batch), k):
            chunk = batch[i : i + k]
            n = len(chunk)
            if n < k:
                chunk = np.concatenate([chunk, np.zeros((k - n, *chunk.shape[1:]), np.uint8)])
            parts.append(self._run(chunk)[:n])
        return np.concatenate(parts) if parts else np.zeros((0, 1 if self._binary else len(self._classes)), np.float32)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One ORT run; a graph that fails, or returns the wrong shape, is a ModelError naming the model."""
        try:
            out = self.session.run([self._output], {self._input: batch})[0]
        except Exception as e:  # ORT's Fail / RuntimeException / InvalidArgument: a graph that cannot run
            raise ModelError(
                f"{self.path}: the model failed when run on a batch of {len(batch)}: {ort_message(e)}"
            ) from None
        want = 1 if self._binary else len(self._classes)
        if not isinstance(out, np.ndarray) or out.ndim != 2 or out.shape != (len(batch), want):
            got = list(getattr(out, "shape", ())) or type(out).__name__
            raise ModelError(
                f"{self.path}: the model returned {got} for a batch of {len(batch)}; its metadata lists "
                f"{len(self._classes)} classes, so ({len(batch)}, {want}) was expected"
            )
        if not np.isfinite(out).all():  # Why here: NaN would pass as label 0 and as invalid JSON downstream
            bad = int((~np.isfinite(out)).any(axis=1).sum())
            raise ModelError(
                f"{self.path}: the model returned NaN or infinite probabilities for {bad} of {len(batch)} images; "
                "its weights or graph are broken"
            )
        return out

    def class_probabilities(self, probs: np.ndarray) -> np.ndarray:
        """``(N, K)`` per class: binary ``(N, 1)`` outputs become ``[1 - p, p]``."""
        probs = np.asarray(probs, dtype=np.float64)
        if self._binary and probs.shape[1] == 1:
            return np.concatenate([1.0 - probs, probs], axis=1)
        return probs

    def decide(self, class_probs: np.ndarray) -> np.ndarray:
        """Predicted class indices of ``(N, K)`` class probabilities (binary: ``p >= threshold``, as in training)."""
        return predictions(class_probs, self.info.task, self._threshold)

    def predict(
        self,
        items: Iterable[str | os.PathLike | np.ndarray] | str | os.PathLike | np.ndarray,
        top_k: int = 1,
        batch_size: int = 64,
        *,
        on_error: str = "raise",
        failures: list[tuple[str, str]] | None = None,
    ) -> list[Prediction]:
        """Classify images: file paths, or arrays (``(H, W)``, ``(H, W, C)``, ``(C, H, W)``).

        Every image is loaded with the model's channels, size and resize mode, as in training.

        Args:
            items: paths and/or arrays (one item alone works too; a 4-D array is a batch).
            top_k: how many classes to list per image in ``Prediction.top``.
            batch_size: images per ORT run.
            on_error: ``raise`` (the first unreadable image raises its ImageError) or
                ``skip`` (left out of the result; reported through ``failures``).
            failures: a list to which ``(source, reason)`` is appended per skipped image.

        Returns:
            One :class:`Prediction` per (readable) image, in input order.
        """
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip' (got {on_error!r})")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 (got {top_k})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        items = _as_items(items)
        k = min(top_k, len(self._classes))
        out: list[Prediction] = []
        for chunk in self.scored_chunks(items, batch_size):
            if chunk.errors and on_error == "raise":
                raise chunk.errors[0]  # Why the object itself: ImageTooLarge stays ImageTooLarge
            if failures is not None:
                failures.extend(chunk.failures)
            out.extend(self._prediction(src, p, k) for src, p in zip(chunk.sources, chunk.probabilities, strict=True))
        return out

    def scored_chunks(self, items: Sequence[str | os.PathLike | np.ndarray], batch_size: int = 64) -> Iterator[Chunk]:
        """Load and score ``items`` a batch at a time: one :class:`Chunk` per ``batch_size`` items, in order.

        Why each worker loads and scores its own batch, one worker a core: on the CPU, decoding and
        ONNX Runtime share the cores; a worker that does both keeps its batch in cache and hands
        nothing to another thread, and the workers' runs fill the cores (with ``intra_op_threads=1``
        they fill them exactly, as the CLI does: ``convspec predict`` went from 0.69x to 1.05x of
        Pillow's decoding alone at 224 px, bench/real_size.py). Memory: one batch a worker and one
        waiting, each at most :data:`CHUNK_BYTES` of pixels (64 images at 224 px, 21 at 1024 px).
        """
        items = _as_items(items)  # one file as predict() takes it, not its characters; bad items named
        cores = min(8, os.cpu_count() or 1)
        # Why smaller batches for a few items: each core still gets one (50 files, 2 cores: 2 of 25)
        fit = max(1, CHUNK_BYTES // math.prod(self.info.input_shape))
        batch_size = max(1, min(batch_size, fit, -(-len(items) // cores)))
        starts = range(0, len(items), batch_size)

        def chunk(start: int) -> Chunk:
            loaded = [self._load(i, it) for i, it in enumerate(items[start : start + batch_size], start)]
            good = [(i, src, a) for i, (src, a) in enumerate(loaded, start) if not isinstance(a, ImageError)]
            bad = [a for _, a in loaded if isinstance(a, ImageError)]
            if not good:
                return Chunk(start, [], [], np.zeros((0, len(self._classes))), bad)
            batch = np.stack([a for _, _, a in good])
            run = self._run_images or len(batch)
            probs = np.concatenate([self.predict_arrays(batch[i : i + run]) for i in range(0, len(batch), run)])
            kept, sources = [i for i, _, _ in good], [src for _, src, _ in good]
            return Chunk(start, kept, sources, self.class_probabilities(probs), bad)

        # Why no pool for one image: a server calling predict([image]) from many threads must not start threads per call
        workers = min(cores, len(starts))
        if workers <= 1:
            yield from map(chunk, starts)
            return
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convspec-predict")
        try:
            pending = collections.deque(pool.submit(chunk, s) for s in starts[: workers + 1])
            for s in starts[workers + 1 :]:
                yield pending.popleft().result()
                pending.append(pool.submit(chunk, s))
            while pending:
                yield pending.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    # -- internals

    def _load(self, i: int, item: Any) -> tuple[str, np.ndarray | ImageError]:
        c, (h, w), how = self.info.channels, self.info.size, self.info.resize
        if isinstance(item, np.ndarray):
            src = f"<array {i}>"
            try:
                return src, prepare_array(item, c, (h, w), how, bits_stored=self.info.bits_stored)
            except ImageError as e:
                return src, ImageError(src, e.reason)
        src = os.fspath(item)
        try:
            return src, load_image(src, c, (h, w), how, bits_stored=self.info.bits_stored)
        except ImageError as e:
            return src, e

    def _prediction(self, source: str, p: np.ndarray, k: int) -> Prediction:
        if self._binary:
            order = [1, 0][:k] if p[1] >= self._threshold else [0, 1][:k]
        else:
            order = np.argsort(-p, kind="stable")[:k]
        top = [(self._classes[j], float(p[j])) for j in order]
        return Prediction(
            source=source,
            label=top[0][0],
            probability=top[0][1],
            top=top,
            probabilities={name: float(v) for name, v in zip(self._classes, p, strict=True)},
        )

    def _check_batch(self, batch: Any) -> np.ndarray:
        if not isinstance(batch, np.ndarray):
            raise ModelError(f"expected a numpy uint8 array (N, C, H, W), got {type(batch).__name__}")
        want = self.input_shape
        if batch.dtype != np.uint8:
            raise ModelError(
                f"expected uint8 pixels (N, {', '.join(map(str, want))}), got dtype {batch.dtype}; "
                "use Predictor.predict (or prepare_array) to convert images"
            )
        if batch.ndim != 4 or tuple(batch.shape[1:]) != want:
            raise ModelError(
                f"expected an array of shape (N, {', '.join(map(str, want))}) (N, C, H, W), "
                f"got {tuple(batch.shape)}; use Predictor.predict to load and resize images"
            )
        return np.ascontiguousarray(batch)


def ort_message(e: Exception, limit: int = 300) -> str:
    """ORT's exception text without its error-code prefix and C++ source locations."""
    text = " ".join(str(e).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"/\S+\.(?:h|cc|cpp):\d+ .*? was false\. ", "", text)  # "file.h:84 Fn(args) cond was false."
    text = re.sub(r"/\S*onnxruntime\S*\.(?:h|cc|cpp):\d+ ", "", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_items(items: Any) -> list:
    """``items`` as a list of paths and arrays; a TypeError naming the first item that is neither.

    Why bytes are refused: ``b"a.png"`` was read as a sequence of ints (a raw TypeError from deep
    inside), and bytes could as well be an encoded image as a path.
    """
    if isinstance(items, (bytes, bytearray)):
        raise TypeError(
            "items: bytes are neither a path nor an image here; give a path as str, or decode an encoded "
            "image with convspec.runtime.load_image_bytes and pass the array"
        )
    if isinstance(items, (str, os.PathLike)):
        return [items]
    if isinstance(items, np.ndarray):
        return list(items) if items.ndim == 4 else [items]
    out = list(items)
    for i, item in enumerate(out):
        if not isinstance(item, (str, os.PathLike, np.ndarray)):
            raise TypeError(f"items[{i}]: expected a file path (str) or a numpy array (got {type(item).__name__})")
    return out

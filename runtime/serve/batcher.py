"""Dynamic batching: concurrent requests' images gathered into one ONNX Runtime run.

Each image waits in an asyncio queue; one task takes the first, then as many more as arrive
within ``max_delay`` (up to ``max_batch``), stacks them and runs the model in a thread of
its own, so the event loop never blocks on inference. Only decoded, ready images are queued:
a slow or vanished client never holds a batch.

Why hand-written: the serving libraries that batch (Triton, Ray Serve, BentoML) are whole
servers; the loop below is all this needs, and it is small enough to read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class Batcher:
    """Gathers single images into batches for ``run_batch``.

    Args:
        run_batch: uint8 ``(N, C, H, W)`` -> ``(N, K)`` rows, one per image (runs in a worker thread).
        max_batch: the most images per run.
        max_delay: seconds the first image of a batch waits for company.
        on_batch: called with each batch's size (metrics).
        arriving: how many requests are on their way (being read or decoded); when it says 0
            and the queue is empty, a batch runs at once instead of waiting out ``max_delay``
            (a lone client pays no delay; under load, images queue while a batch runs).

    The batching task starts with the first :meth:`submit` in a running event loop (and
    again in a new loop, as a test client may use one per request).
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 32,
        max_delay: float = 0.005,
        on_batch: Callable[[int], None] | None = None,
        arriving: Callable[[], int] | None = None,
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1 (got {max_batch})")
        if max_delay < 0:
            raise ValueError(f"max_delay must be >= 0 (got {max_delay})")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_delay = float(max_delay)
        self.on_batch = on_batch
        self.arriving = arriving
        # Why one thread: one ORT session runs one batch at a time and uses every core inside.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convspec-ort")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def submit(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """The model's output row for each image (``(C, H, W)`` uint8), in order."""
        queue = self._ensure_started()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, fut in zip(images, futures):
            queue.put_nowait((image, fut))
        if len(futures) == 1:  # Why: most requests carry one image; gather costs a task-like future more
            return [await futures[0]]
        return list(await asyncio.gather(*futures))

    async def close(self) -> None:
        """Stop the batching task (pending images get a cancelled error) and the ORT thread."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        self._pool.shutdown(wait=False)

    # -- internals

    def _ensure_started(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._run(self._queue), name="convspec-batcher")
        assert self._queue is not None
        return self._queue

    async def _run(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            deadline = loop.time() + self.max_delay
            if self.max_batch > 1:
                await asyncio.sleep(0)  # Why: let requests whose bytes are already here reach the queue
            while len(items) < self.max_batch:
                try:
                    items.append(queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                if self.arriving is not None and self.arriving() == 0:
                    break  # nobody else is coming: waiting would only add latency
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:
                    break
            live = [(image, fut) for image, fut in items if not fut.done()]  # a cancelled request's images
            if not live:
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            try:
                out = await loop.run_in_executor(self._pool, self.run_batch, np.stack([image for image, _ in live]))
            except asyncio.CancelledError:
                for _, fut in live:
                    fut.cancel()
                raise
            except Exception as e:  # the model failed: every waiting request hears it, the loop goes on
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), row in zip(live, out):
                if not fut.done():
                    fut.set_result(row)

"""uvicorn's HTTP protocol with a cap on a request's head (its URL and headers).

Why: h11 caps the head (``h11_max_incomplete_event_size``); httptools, which uvicorn prefers when
installed, has no cap, and one connection sending 160 MB of header lines held 365 MB of memory
without an answer. A class at module level so that ``--workers``' processes can unpickle it.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 << 10  # as h11's default is 16 KiB; browsers send a few KiB of cookies at most


class HeadTooLarge(Exception):
    """Raised inside httptools' callbacks: uvicorn answers 400 and closes the connection."""


class BoundedHttpTools(HttpToolsProtocol):
    """httptools with :data:`MAX_HEAD_BYTES` for a request's URL and headers together."""

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def _count(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge(f"request head over {MAX_HEAD_BYTES} bytes")

"""``weights: pretrained`` without a network: huggingface_hub reads its cache at once.

Why by hand: huggingface_hub retries a hub it cannot reach for about 50 s (five backoffs, with a
log line each), even for weights already in its cache. When a quick connect to the hub fails,
the download runs in huggingface_hub's offline mode (what ``HF_HUB_OFFLINE=1`` sets), which loads
cached weights at once and fails at once for weights that are not there.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlparse

PROBE_S = 3.0  # a hub that accepts no connection within this is taken as unreachable
PROXIES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")  # behind one, the proxy decides


def reachable(endpoint: str, timeout: float = PROBE_S) -> bool:
    """Whether a TCP connection to ``endpoint``'s host opens within ``timeout`` seconds."""
    if any(os.environ.get(v) for v in PROXIES):
        return True
    url = urlparse(endpoint)
    if not url.hostname:
        return True  # not a URL we can probe: let huggingface_hub say what is wrong with it
    port = url.port or (80 if url.scheme == "http" else 443)
    opened: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            opened.append(False)

    probe = threading.Thread(target=connect, daemon=True)  # Why a thread: name lookup ignores socket timeouts
    probe.start()
    probe.join(timeout)
    return bool(opened and opened[0])


@contextlib.contextmanager
def offline_when_unreachable() -> Iterator[str | None]:
    """Run the body in huggingface_hub's offline mode when its hub cannot be reached.

    Yields why it is offline, for messages (``huggingface.co cannot be reached``), or None online.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # timm without huggingface_hub downloads from plain URLs
        yield None
        return
    if constants.HF_HUB_OFFLINE:
        yield "HF_HUB_OFFLINE is set"
        return
    endpoint = getattr(constants, "ENDPOINT", None) or "https://huggingface.co"
    if reachable(endpoint):
        yield None
        return
    constants.HF_HUB_OFFLINE = True  # what is_offline_mode() returns
    try:
        yield f"{urlparse(endpoint).hostname or endpoint} cannot be reached"
    finally:
        constants.HF_HUB_OFFLINE = False


def cache_folder() -> str:
    """Where huggingface_hub keeps downloaded weights (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return "~/.cache/huggingface/hub"

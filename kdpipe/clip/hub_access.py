"""May the Hugging Face hub be asked for weights, and where is its local cache.

Without a network, huggingface_hub retries each request with growing waits (~75 s of
``Retrying in 8s`` per file) before failing with no hint. One short TCP connect to the hub,
made once per process and only when weights are not in the cache already, tells instead; weights
that are cached are then read with huggingface_hub's offline mode switched on for the call.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 2.0
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")

_reachable: dict[tuple[str, int], bool] = {}  # (host, port) -> answer, once per process


def offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_address() -> tuple[str, int]:
    """The host and port of the hub endpoint (``HF_ENDPOINT`` or huggingface.co)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def _connect(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:  # no route, no DNS, refused, timed out: all mean no download
        return False


def hub_unreachable() -> bool:
    """True when a short connect to the hub fails; asked once per process."""
    if any(os.environ.get(v) for v in PROXY_VARS):
        return False  # behind a proxy a direct connect says nothing: let huggingface_hub try
    address = hub_address()
    if address not in _reachable:
        _reachable[address] = _connect(*address, PROBE_TIMEOUT_S)
    return not _reachable[address]


def why_no_download() -> str | None:
    """None when weights may be downloaded; otherwise why not, in a few words."""
    if offline_env():
        return "HF_HUB_OFFLINE=1 forbids downloading"
    if hub_unreachable():
        host, port = hub_address()
        return f"{host}:{port} cannot be reached (no network?)"
    return None


def hub_cache(cache_dir: str | os.PathLike | None = None) -> str:
    """The folder weights are looked for in: ``cache_dir``, else HF_HUB_CACHE (from HF_HOME)."""
    from huggingface_hub import constants

    return str(Path(cache_dir or constants.HF_HUB_CACHE).expanduser().resolve())


@contextlib.contextmanager
def hub_switched_off(active: bool = True) -> Iterator[None]:
    """huggingface_hub's offline mode for one call: cached files are read without asking the hub.

    huggingface_hub reads HF_HUB_OFFLINE once at import, so the environment cannot switch it now;
    its module constant can, and is put back afterwards.
    """
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    if active:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved

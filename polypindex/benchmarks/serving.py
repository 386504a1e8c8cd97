"""Starting a benchmark's server: a free loopback port, and waiting until it is healthy."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_healthy(
    client: httpx.Client,
    server: subprocess.Popen[bytes],
    seconds: float,
    ready: Callable[[dict[str, Any]], bool] = lambda health: True,
) -> None:
    """Poll ``GET /healthz`` until it answers 200 and ``ready(body)``; exit with the
    server's stderr (when piped) if it dies or ``seconds`` pass first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            r = client.get("/healthz")
            if r.status_code == 200 and ready(r.json()):
                return
        except (httpx.TransportError, ValueError):
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            err = server.stderr.read().decode() if server.stderr else ""
            raise SystemExit(f"server did not become healthy: {err[-3000:]}")
        time.sleep(0.2)

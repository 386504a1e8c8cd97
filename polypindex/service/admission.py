"""Load shedding: above capacity the service answers 503 ``overloaded`` with
``Retry-After`` at once instead of queueing without limit (docs/deploy.md#sizing).

The blocking work of requests runs in one thread pool of ``settings.worker_threads``
threads (the cores; :func:`bound_worker_pool`, set at start-up), so requests never
convoy on the GIL in 40 threads. :class:`AdmissionMiddleware` counts the requests in
progress (running in the pool or waiting for it) on the event loop; when
``worker_threads + max_queued_requests`` are, the next one is refused before its body
is read, its key checked or any work is done. The probes and ``/metrics`` are never
refused (:data:`ALWAYS_ADMITTED`), so an orchestrator still sees a busy process as
live and ready.
"""

from __future__ import annotations

import math

from anyio import to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from polypindex.service.errors import error_response
from polypindex.service.metrics import observe_shed

__all__ = ["ALWAYS_ADMITTED", "AdmissionMiddleware", "bound_worker_pool"]

ALWAYS_ADMITTED = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})


def bound_worker_pool(threads: int) -> None:
    """Run the blocking work of requests (sync endpoints, ``run_in_threadpool``) in at
    most ``threads`` threads of the running event loop (anyio's default: 40)."""
    to_thread.current_default_thread_limiter().total_tokens = threads


class AdmissionMiddleware:
    """Admit at most ``capacity + max_queued`` requests at once; refuse the rest with
    503 ``overloaded`` and ``Retry-After: retry_after_s``.

    The count lives on the event loop (one per process), so it needs no lock.
    """

    def __init__(
        self, app: ASGIApp, *, capacity: int, max_queued: int, retry_after_s: float = 1.0
    ) -> None:
        self.app = app
        self.limit = capacity + max_queued
        self.max_queued = max_queued
        self.retry_after = str(max(1, math.ceil(retry_after_s)))
        self.in_progress = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in ALWAYS_ADMITTED:
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.limit:
            observe_shed()
            response = error_response(
                503,
                "overloaded",
                f"the service is at capacity ({self.in_progress} requests in progress, at most "
                f"{self.max_queued} waiting: setting max_queued_requests); retry after "
                f"{self.retry_after} s",
            )
            response.headers["Retry-After"] = self.retry_after
            await response(scope, receive, send)
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1

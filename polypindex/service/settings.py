"""The service's one settings object: the artefact layout plus the per-request limits.

:class:`Settings` extends :class:`polypindex.model.core.layout.Layout` (the one reader of
the ``POLYPINDEX_*`` environment, shared with the command line), so every path
defaults to a place under ``home`` (``<home>/models/demo/encoder.onnx``,
``<home>/index``) and setting ``POLYPINDEX_HOME`` alone is enough; each can still be
set on its own (``POLYPINDEX_MODEL_PATH``, ``POLYPINDEX_DATABASE_URL``,
``POLYPINDEX_INDEX_DIR``, ...), and so can the limits below (``POLYPINDEX_MAX_K``, ...).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field

from polypindex.model.core.layout import Layout


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; a container's CPU set)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Settings(Layout):
    """Where the service finds its artefacts (see :class:`Layout`), and its limits.

    Attributes:
        max_frames_per_request: most frames one tracklet query may carry.
        max_k: largest ``k`` accepted by ``POST /search``.
        max_image_bytes: largest encoded image accepted per frame, in bytes.
        max_image_pixels: most pixels (width × height, read from the image header before
            decoding) of a query frame; larger: 413 ``image_too_large``.
        max_body_bytes: largest request body, enforced while it is read; larger: 413
            ``payload_too_large`` (service/limits.py; docs/deploy.md#limits).
        max_concurrent_embeddings: requests decoding and embedding frames at the same
            time; more wait their turn (bounds memory: every frame of a request is
            decoded at once, and ONNX Runtime already uses all cores per call).
        worker_threads: threads running the blocking work of requests (sync endpoints,
            search, store reads, embedding); default: the cores this process may use.
            More threads than cores only convoy on the GIL (docs/deploy.md#sizing).
        max_queued_requests: requests admitted beyond ``worker_threads`` to wait for a
            thread; above ``worker_threads + max_queued_requests`` in progress a request
            is refused at once with 503 ``overloaded`` and ``Retry-After`` (the probes and
            ``/metrics`` never are; service/admission.py).
        min_probe_auroc: the validation AUROC a probe needs for its predictions to be
            shown as decisions (``reliable``; model.scoring.probe_quality).
        index_refresh_seconds: how often the index upkeep thread checks the store for
            procedures indexed or deleted by another process (and then syncs the index
            with it, off the request path); ``0``: every pass (about 20 ms). Jobs run by
            this service reach its index at once, whatever this is.
        index_max_behind: the most store changes (docs/store.md#replicas) the index may
            not have applied yet for ``/readyz`` to say ready; ``None``: no bound.
        run_jobs: run indexing jobs in this process (a background worker thread);
            ``False``: ``POST /procedures`` and ``/jobs`` answer 503.
        auth: ``"keys"``: every endpoint but ``/healthz`` and ``/metrics`` needs an API key
            (``polypindex keys create``); ``"open"``: no key is checked, on any host
            (say so explicitly, e.g. behind an authenticating proxy); ``"auto"`` (default):
            keys when the store has any, else open on a loopback ``host`` and a refusal to
            start on any other.
        host: the address ``polypindex serve`` binds (``POLYPINDEX_HOST``); decides
            whether ``auth="auto"`` may run open.
        port: the port ``polypindex serve`` binds (``POLYPINDEX_PORT``).
        cors_origins: browser origins allowed to call the API cross-site
            (``POLYPINDEX_CORS_ORIGINS='["https://viewer.example"]'``); empty (default):
            no CORS headers at all.
    """

    max_frames_per_request: int = Field(default=256, ge=1)
    max_k: int = Field(default=100, ge=1)
    max_image_bytes: int = Field(default=8_000_000, ge=1)
    max_image_pixels: int = Field(default=25_000_000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1)
    max_concurrent_embeddings: int = Field(default=2, ge=1)
    worker_threads: int = Field(default_factory=lambda: usable_cores(), ge=1)
    max_queued_requests: int = Field(default=64, ge=0)
    index_refresh_seconds: float = Field(default=10.0, ge=0)
    index_max_behind: int | None = Field(default=1000, ge=0)
    min_probe_auroc: float = Field(default=0.7, ge=0.0, le=1.0)
    run_jobs: bool = True
    # Access (docs/deploy.md#keys-and-scopes; service/auth.py).
    auth: Literal["auto", "keys", "open"] = "auto"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    cors_origins: list[str] = Field(default_factory=list)

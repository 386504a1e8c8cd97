"""Prometheus metrics at ``GET /metrics`` (docs/deploy.md#metrics).

- Requests and latency by route template, method and status:
  ``prometheus-fastapi-instrumentator`` (``http_requests_total``,
  ``http_request_duration_seconds``, ...).
- Work inside requests, timed where it happens (``service.backend`` calls
  :func:`observe_embedding` and :func:`observe_index_search`):
  ``polypindex_embedding_seconds`` (one query tracklet decoded and embedded) and
  ``polypindex_index_search_seconds`` (one vector index search).
- Read from the app's state and the store at each scrape (:class:`StateCollector`):
  ``polypindex_index_vectors{generation}`` (the loaded index generation's size),
  ``polypindex_store_tracklets{encoder_version}`` (rows per generation in the store),
  ``polypindex_job_queue_depth`` (queued indexing jobs), ``polypindex_jobs{status}``
  (jobs per status; ``status="failed"`` counts the failures), and
  ``polypindex_auth_open`` (1 when no API key is checked).
- The process: ``process_resident_memory_bytes``, CPU seconds, open files.

Each app gets its own registry (``create_app`` can run many times in one process);
the two histograms are process-wide objects registered in each.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator

from polypindex.indexer.job_store import JobStore
from polypindex.indexer.store import Store

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
EMBEDDING_SECONDS = Histogram(
    "polypindex_embedding_seconds",
    "Seconds to decode and embed one query tracklet's frames.",
    buckets=_SECONDS_BUCKETS,
    registry=None,
)
INDEX_SEARCH_SECONDS = Histogram(
    "polypindex_index_search_seconds",
    "Seconds of one vector index search.",
    buckets=_SECONDS_BUCKETS,
    registry=None,
)
SHED_REQUESTS = Counter(
    "polypindex_requests_shed",
    "Requests refused with 503 overloaded (above worker_threads + max_queued_requests).",
    registry=None,
)
JOB_STATUSES = ("queued", "running", "succeeded", "failed")


def observe_embedding(seconds: float) -> None:
    """Record one query tracklet's decoding + embedding time."""
    EMBEDDING_SECONDS.observe(max(0.0, seconds))


def observe_shed() -> None:
    """Count one request refused because the service was at capacity."""
    SHED_REQUESTS.inc()


def observe_index_search(seconds: float) -> None:
    """Record one vector index search's time."""
    INDEX_SEARCH_SECONDS.observe(max(0.0, seconds))


def _job_counts(store: Store) -> dict[str, int]:
    counts = JobStore(store).status_counts()
    return {status: counts.get(status, 0) for status in (*JOB_STATUSES, *counts)}


class StateCollector(Collector):
    """Gauges read at scrape time from an app's loaded index, store and auth mode."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        state = self.app.state
        index = getattr(state, "index", None)
        encoder = getattr(state, "encoder", None)
        store: Store | None = getattr(state, "store", None)
        vectors = GaugeMetricFamily(
            "polypindex_index_vectors",
            "Vectors in the loaded index, by generation (encoder version).",
            labels=["generation"],
        )
        if index is not None and encoder is not None:
            vectors.add_metric([str(encoder.version)], float(len(index)))
        yield vectors
        auth = getattr(state, "auth", None)
        yield GaugeMetricFamily(
            "polypindex_auth_open",
            "1 when the service checks no API key (open mode), else 0.",
            value=1.0 if auth is not None and auth.mode == "open" else 0.0,
        )
        if store is None:
            return
        try:
            versions = {v: store.count_tracklets(v) for v in store.encoder_versions()}
            jobs = _job_counts(store)
        except Exception:  # a scrape must not fail because the database is down
            logger.warning("metrics: the database does not answer", exc_info=True)
            return
        stored = GaugeMetricFamily(
            "polypindex_store_tracklets",
            "Tracklets in the store, by encoder version (index generation).",
            labels=["encoder_version"],
        )
        for version, n in versions.items():
            stored.add_metric([version], float(n))
        yield stored
        yield GaugeMetricFamily(
            "polypindex_job_queue_depth", "Indexing jobs waiting to run.", value=jobs["queued"]
        )
        by_status = GaugeMetricFamily(
            "polypindex_jobs", "Indexing jobs by status (failed: the failures).", labels=["status"]
        )
        for status, n in jobs.items():
            by_status.add_metric([status], float(n))
        yield by_status


def install_metrics(app: FastAPI) -> CollectorRegistry:
    """Instrument ``app`` and serve its registry at ``/metrics``; returns the registry."""
    registry = CollectorRegistry()
    registry.register(EMBEDDING_SECONDS)
    registry.register(INDEX_SEARCH_SECONDS)
    registry.register(SHED_REQUESTS)
    registry.register(StateCollector(app))
    ProcessCollector(registry=registry)
    Instrumentator(
        registry=registry,
        excluded_handlers=[METRICS_PATH],
        should_group_status_codes=False,
        should_ignore_untemplated=False,
        should_group_untemplated=True,  # one "none" handler for unknown paths, not one per path
    ).instrument(app)

    def metrics() -> Response:
        """Prometheus text exposition of this service's metrics (no API key needed)."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(
        METRICS_PATH, metrics, methods=["GET"], include_in_schema=False, summary="Metrics"
    )
    app.state.metrics_registry = registry
    return registry


def metric_value(registry: CollectorRegistry, name: str, **labels: Any) -> float | None:
    """A sample's value in ``registry`` (tests, diagnostics), or ``None``."""
    return registry.get_sample_value(name, {k: str(v) for k, v in labels.items()} or None)

"""No collapse: above ``worker_threads + max_queued_requests`` requests in progress the
service answers 503 ``overloaded`` with ``Retry-After`` at once (service/admission.py),
and the requests it admitted still succeed."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from helpers.service_api import MeanColourEncoder, Setup, assert_error, frame, started

from polypindex.service.metrics import metric_value


class GatedEncoder(MeanColourEncoder):
    """Embeds only once ``release`` is set; ``entered`` is set when the first call starts."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(30), "the test never released the encoder"
        return super().embed_tracklet(images, boxes)


BY_FRAMES = {"query": {"frames": [frame()]}, "k": 3}


def _in_background(c: TestClient, out: list[Any]) -> threading.Thread:
    thread = threading.Thread(target=lambda: out.append(c.post("/search", json=BY_FRAMES)))
    thread.start()
    return thread


def _wait_admitted(c: TestClient, n: int) -> None:
    """Until the admission middleware counts ``n`` requests in progress."""
    admission = c.app.middleware_stack  # type: ignore[attr-defined]
    while admission is not None and type(admission).__name__ != "AdmissionMiddleware":
        admission = getattr(admission, "app", None)
    assert admission is not None
    for _ in range(3000):
        if admission.in_progress >= n:
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"never {n} requests in progress")


def test_a_second_request_over_capacity_gets_503_with_retry_after(setup: Setup) -> None:
    settings = setup.settings.model_copy(update={"worker_threads": 1, "max_queued_requests": 0})
    encoder = GatedEncoder()
    first: list[Any] = []
    with started(settings, encoder) as c:
        thread = _in_background(c, first)
        assert encoder.entered.wait(30)
        refused = c.post("/search", json={"query": {"tracklet_id": setup.red_id}})
        live = c.get("/livez")  # the probes are never refused
        encoder.release.set()
        thread.join(30)
        after = c.post("/search", json={"query": {"tracklet_id": setup.red_id}})
        shed = metric_value(c.app.state.metrics_registry, "polypindex_requests_shed_total")  # type: ignore[attr-defined]
    message = assert_error(refused, 503, "overloaded", "max_queued_requests")
    assert "retry after 1 s" in message
    assert refused.headers["Retry-After"] == "1"
    assert live.status_code == 200
    assert first[0].status_code == 200, first[0].text  # the admitted one was served
    assert after.status_code == 200  # capacity is given back
    assert shed == 1.0


def test_requests_within_the_queue_wait_and_succeed(setup: Setup) -> None:
    settings = setup.settings.model_copy(update={"worker_threads": 1, "max_queued_requests": 1})
    encoder = GatedEncoder()
    answers: list[Any] = []
    with started(settings, encoder) as c:
        running = _in_background(c, answers)
        assert encoder.entered.wait(30)
        queued = _in_background(c, answers)
        _wait_admitted(c, 2)  # one running, one waiting for the single worker thread
        refused = c.post("/search", json={"query": {"tracklet_id": setup.red_id}})
        encoder.release.set()
        running.join(30)
        queued.join(30)
    assert_error(refused, 503, "overloaded")
    assert [a.status_code for a in answers] == [200, 200]


def test_default_capacity_is_the_cores_plus_a_bounded_queue() -> None:
    from polypindex.service.settings import Settings, usable_cores

    settings = Settings()
    assert settings.worker_threads == usable_cores() >= 1
    assert settings.max_queued_requests == 64

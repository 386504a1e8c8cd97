"""Indexing over HTTP in the service tests: the indexer's fake encoder answering the
service as well, a service of the tests' defaults started with it, a COCO job body,
and waiting for a job to end."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi.testclient import TestClient

from helpers.indexing import FakeEncoder
from helpers.service_api import started
from polypindex.service.settings import Settings


class ServiceFakeEncoder(FakeEncoder):
    """The indexer's fake encoder, also answering the service's ``embed_tracklet``."""

    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        seq = np.stack([cv2.resize(img, (32, 32)) for img in images]).astype(np.float32) / 255.0
        return self.embed_sequences([seq.transpose(0, 3, 1, 2)])[0]


def job_settings(tmp_path: Path) -> Settings:
    """A service home under ``tmp_path`` whose index is refreshed at every request (a
    test module's fixture: ``settings = pytest.fixture(job_settings, name="settings")``)."""
    return Settings(home=tmp_path / "home", index_refresh_seconds=0)


def job_client(settings: Settings) -> Iterator[TestClient]:
    """A started client of a new app with the :class:`ServiceFakeEncoder` (a test module's
    fixture: ``client = pytest.fixture(job_client, name="client")``)."""
    with started(settings, ServiceFakeEncoder()) as client:
        yield client


def coco_job(root: Path, **extra: Any) -> dict[str, Any]:
    """The body of ``POST /procedures`` indexing the COCO dataset at ``root``."""
    return {"kind": "coco", "root": str(root), "min_tracklet_length": 3, **extra}


def wait_for(
    client: TestClient, job_id: str, wait_s: float = 20.0, *, retry_errors: bool = False
) -> dict[str, Any]:
    """The job's body once it has succeeded or failed (polled every 50 ms, at most
    ``wait_s``). An error answer fails at once, unless ``retry_errors`` (a fault test:
    asked again until the deadline)."""
    deadline = time.monotonic() + wait_s
    while True:
        r = client.get(f"/jobs/{job_id}")
        if not retry_errors:
            assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body.get("status") in ("succeeded", "failed"):
            return body
        assert time.monotonic() < deadline, f"job still {body.get('status', body)} after {wait_s}s"
        time.sleep(0.05)

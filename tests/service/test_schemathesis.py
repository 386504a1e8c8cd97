"""Schemathesis over the whole published OpenAPI (issue 11): 0 server errors, 0 response
schema violations, on SQLite and on PostgreSQL.

The app serves a tiny index (:func:`helpers.service_api` rows: three procedures of
16-dim vectors) with a fake encoder that embeds frames and runs jobs, so every
operation gets past its dependencies and its body is validated. The budget is bounded
(``MAX_EXAMPLES`` per operation and generation mode, derandomised, no shrinking), so
the run is repeatable and takes about a minute per backend on 2 cores.

When the service runs with API keys (service/auth.py), the run uses an admin key.
``POLYPINDEX_SCHEMATHESIS_REPORT=<file>`` writes the case and failure counts there
as JSON (what docs/results.md quotes).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers.databases import pg_schema_url
from helpers.indexing import FakeEncoder, linear_probe
from helpers.service_api import PROCEDURES, unit_rows

from polypindex.indexer.generations import open_or_rebuild
from polypindex.indexer.store import Store
from polypindex.model.scoring.probe import probe_path
from polypindex.service.app import create_app
from polypindex.service.settings import Settings

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, Phase, given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = int(os.environ.get("POLYPINDEX_SCHEMATHESIS_EXAMPLES", "20"))
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


class ServiceFakeEncoder(FakeEncoder):
    def embed_tracklet(self, images: Sequence[np.ndarray], boxes: np.ndarray) -> np.ndarray:
        seq = np.stack([cv2.resize(img, (32, 32)) for img in images]).astype(np.float32) / 255.0
        return self.embed_sequences([seq.transpose(0, 3, 1, 2)])[0]


def tiny_world(settings: Settings) -> None:
    """Three procedures of unit vectors made by the fake encoder's version, and a snapshot."""
    store = Store(settings.database_url)
    rng = np.random.default_rng(0)
    enc = ServiceFakeEncoder()
    for uid in PROCEDURES:
        store.replace_procedure(uid, "test", "synthetic", enc.version, unit_rows(rng, uid, 4))
    open_or_rebuild(settings.index_dir, store, enc.version, enc.dim, save=True)
    store.close()
    for task in ("size", "histology"):  # both probes, so /predict answers
        probe = linear_probe(task, enc.version, rng.standard_normal(enc.dim))
        probe.save(probe_path(settings.probes_folder, task))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, TestClient]]:
    home = tmp_path / "home"
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{home / 'index.sqlite'}"])
        home.mkdir(parents=True)
    else:
        urls = pg_schema_url()
    for url in urls:
        settings = Settings(
            home=home,
            database_url=url,
            index_refresh_seconds=0,
            max_frames_per_request=4,
            max_image_bytes=50_000,
        )
        settings.data_roots[0].mkdir(parents=True, exist_ok=True)
        tiny_world(settings)
        headers = _admin_headers(settings)
        app = create_app(settings)
        app.state.encoder = ServiceFakeEncoder()
        with TestClient(app, raise_server_exceptions=False, headers=headers) as client:
            yield request.param, client


def _admin_headers(settings: Settings) -> dict[str, str]:
    """An admin key's header when the auth helper's keys exist in this tree, else none
    (the service then runs open on the loopback address)."""
    try:
        from helpers.auth import add_key, bearer
    except ImportError:
        return {}
    return dict(bearer(add_key(settings, "schemathesis", "admin")))


def _send(client: TestClient, case: Any) -> Any:
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    body: dict[str, Any] = {}
    if "json" in kwargs:
        body["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        body["content"] = kwargs["data"]
    return client.request(
        kwargs["method"],
        kwargs["url"],
        headers={**client.headers, **(kwargs.get("headers") or {})},
        params=kwargs.get("params"),
        cookies=kwargs.get("cookies"),
        **body,
    )


def _fuzz(
    client: TestClient,
    operation: Any,
    mode: Any,
    counts: dict[str, Any],
    failures: list[str],
) -> None:
    """Run ``MAX_EXAMPLES`` generated cases of one operation and mode through the checks."""
    label = f"{operation.method.upper()} {operation.path}"

    @hsettings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        response = _send(client, case)
        counts["cases"] += 1
        status = str(response.status_code)
        counts["statuses"][status] = counts["statuses"].get(status, 0) + 1
        try:
            case.validate_response(response, checks=CHECKS)
        except (FailureGroup, AssertionError) as exc:
            counts["failures"] += 1
            if len(failures) < 20:
                failures.append(f"{label} [{mode.value}] {response.status_code}: {exc}")

    # Unsatisfiable: e.g. no negative case can be made for an operation without inputs
    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    served: tuple[str, TestClient],
) -> None:
    backend, client = served
    doc = client.get("/openapi.json").json()
    schema = schemathesis.openapi.from_dict(doc)
    stats: dict[str, Any] = {"backend": backend, "max_examples": MAX_EXAMPLES, "operations": {}}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        counts: dict[str, Any] = {"cases": 0, "failures": 0, "statuses": {}}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(client, operation, mode, counts, failures)
        stats["operations"][f"{operation.method.upper()} {operation.path}"] = counts
    stats["cases"] = sum(c["cases"] for c in stats["operations"].values())
    stats["failures"] = sum(c["failures"] for c in stats["operations"].values())
    report = os.environ.get("POLYPINDEX_SCHEMATHESIS_REPORT")
    if report:
        path = Path(report.replace("{backend}", backend))
        path.write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    assert stats["cases"] > 10 * len(stats["operations"]), stats
    assert failures == [], "\n\n".join(failures)

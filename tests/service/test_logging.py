"""Structured logs: one JSON record per request (request id, route template, method,
status, latency, key name), request ids taken from or given in ``X-Request-ID``, no
frames, embeddings, SQL parameters or absolute paths; the job runner's messages reach
the log once logging is configured (``polypindex serve`` does)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers.indexing import FakeEncoder
from helpers.service_api import MeanColourEncoder, Setup, frame, png_b64, started
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from polypindex.indexer.store import Store
from polypindex.indexer.tables import JobModel
from polypindex.service.observability import JsonFormatter, configure_logging, scrub_pairs
from polypindex.service.settings import Settings


class Log:
    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def requests(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["logger"] == "polypindex.access"]


@pytest.fixture
def log(setup: Setup) -> Iterator[Log]:
    """The process's logging configured as ``serve`` does, into a buffer; undone after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    uvicorn_access = logging.getLogger("uvicorn.access")
    saved_access = (uvicorn_access.disabled, uvicorn_access.propagate)
    stream = io.StringIO()
    handler = configure_logging(stream=stream, scrub=scrub_pairs(setup.root, [setup.root / "data"]))
    try:
        yield Log(stream)
    finally:
        root.removeHandler(handler)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        uvicorn_access.disabled, uvicorn_access.propagate = saved_access


def test_one_json_record_per_request(setup: Setup, log: Log) -> None:
    with started(setup.settings, MeanColourEncoder()) as client:
        r = client.delete("/procedures/no/such/uid", headers={"X-Request-ID": "abc-123"})
        assert r.status_code == 404 and r.headers["x-request-id"] == "abc-123"
        client.get("/no-such-path")
    first, unmatched = log.requests()[-2:]
    assert first["message"] == "request" and first["request_id"] == "abc-123"
    assert (first["method"], first["route"], first["status"]) == (
        "DELETE",
        "/procedures/{uid:path}",
        404,
    )
    assert first["key"] == "open" and first["latency_ms"] >= 0
    assert first["level"] == "INFO" and datetime.fromisoformat(first["ts"]).tzinfo is not None
    assert "no/such/uid" not in json.dumps(first)  # the route template, never the raw path
    assert unmatched["route"] == "<unmatched>" and unmatched["status"] == 404


@pytest.mark.parametrize("given", ["", "has space", "x" * 129, b"\xe9-accent", "a/b", "a\tb"])
def test_an_invalid_request_id_is_replaced(setup: Setup, log: Log, given: str | bytes) -> None:
    with started(setup.settings, MeanColourEncoder()) as client:
        r = client.get("/healthz", headers={"X-Request-ID": given})
    made = r.headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0  # a new id
    assert log.requests()[-1]["request_id"] == made


def test_frames_and_embeddings_never_reach_the_log(setup: Setup, log: Log) -> None:
    image = png_b64((10, 200, 30))
    embedding = [0.123456789] + [0.0] * 15
    with started(setup.settings, MeanColourEncoder()) as client:
        client.post("/search", json={"query": {"frames": [{**frame(), "image_b64": image}]}})
        client.post("/search", json={"query": {"embedding": embedding}})
        client.post("/search", json={"query": {"frames": [{"image_b64": "!!bad", "bbox": [1]}]}})
    assert log.requests()[-1]["route"] == "/search"
    assert image[:40] not in log.text and "0.123456789" not in log.text
    assert "!!bad" not in log.text


def test_known_folders_are_replaced_by_their_names(setup: Setup, log: Log) -> None:
    logging.getLogger("polypindex.test").warning("cannot read %s", setup.root / "data" / "x.json")
    logging.getLogger("polypindex.test").warning("index at %s", setup.root / "index")
    messages = [r["message"] for r in log.records()[-2:]]
    assert messages == ["cannot read <data root 0>/x.json", "index at $POLYPINDEX_HOME/index"]
    assert str(setup.root) not in log.text


def test_the_formatter_writes_exceptions_as_one_json_line() -> None:
    try:
        raise RuntimeError("kaboom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %d", (3,), True)
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    body = json.loads(line)
    assert body["message"] == "failed 3" and "RuntimeError: kaboom" in body["exception"]


def test_sql_parameters_are_hidden(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with Store(url) as store, store.sessions() as session, pytest.raises(SQLAlchemyError) as err:
        session.execute(text("SELECT * FROM no_such_table WHERE x = :v"), {"v": "SECRET-42"})
    assert "SECRET-42" not in str(err.value) and "hidden" in str(err.value)


def test_the_requeued_jobs_message_reaches_the_log(setup: Setup, log: Log, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    now = datetime.now(UTC)
    dead = now - timedelta(hours=1)  # its process stopped renewing the lease an hour ago
    with Store(settings.database_url) as store, store.sessions.begin() as session:
        session.add(
            JobModel(
                id="left-running",
                kind="coco",
                status="running",
                params_json=json.dumps({"kind": "coco", "root": "/nowhere"}),
                progress_json="{}",
                created_at=dead,
                updated_at=dead,
            )
        )
    with started(settings, FakeEncoder()):
        pass
    queued = [r for r in log.records() if "queued again" in r["message"]]
    assert queued and queued[0]["level"] == "INFO"
    assert queued[0]["logger"] == "polypindex.service.resources"

"""Every write attempt is audited (issue 24), refused ones included: a body over the size
limit (413) or one that is not JSON (422), with or without a key, each leaves its row
with who sent it; and the log's tracebacks are scrubbed like error bodies (no SQL, no
raw path)."""

from __future__ import annotations

import io
import json
import logging
import sqlite3
from pathlib import Path

import pytest
from helpers.auth import add_key, bearer
from helpers.service_api import MeanColourEncoder, started
from sqlalchemy import create_engine, text

from polypindex.indexer.audit import AuditEntry, recent
from polypindex.indexer.store import Store
from polypindex.service.observability import JsonFormatter, configure_logging
from polypindex.service.settings import Settings

POST_JOBS = "POST /procedures"
NOT_JSON = {"content-type": "application/json"}


def rows(settings: Settings) -> list[AuditEntry]:
    with Store(settings.database_url) as store:
        return list(reversed(recent(store, 100)))


def test_refused_bodies_are_audited_with_their_sender(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, auth="keys", max_body_bytes=1000)
    writer = add_key(settings, "writer", "write")
    big = b'{"kind": "coco", "root": "' + b"x" * 2000 + b'"}'
    with started(settings, MeanColourEncoder()) as client:
        answers = [
            client.post("/procedures", content=b"{not json", headers=NOT_JSON),
            client.post(
                "/procedures", content=b"{not json", headers={**NOT_JSON, **bearer(writer)}
            ),
            client.post("/procedures", content=big, headers=NOT_JSON),
            client.post("/procedures", content=big, headers={**NOT_JSON, **bearer(writer)}),
            client.post("/procedures", content=big, headers={**NOT_JSON, **bearer("pxk_forged")}),
            client.delete("/procedures/p%00q", headers=bearer(writer)),  # a 422 of its path
        ]
    statuses = [r.status_code for r in answers]
    assert statuses[1] == 422 and statuses[3] == 413 and statuses[5] == 422, statuses
    audited = [(r.actor, r.action, r.status) for r in rows(settings) if " /" in r.action]
    assert audited == [
        ("anonymous", POST_JOBS, statuses[0]),  # 401 once the key is checked first, else 422
        ("writer", POST_JOBS, 422),
        ("anonymous", POST_JOBS, statuses[2]),
        ("writer", POST_JOBS, 413),
        ("invalid-key", POST_JOBS, statuses[4]),
        ("writer", "DELETE /procedures/{uid:path}", 422),
    ]


def test_refused_bodies_in_open_mode_are_audited_as_open(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, max_body_bytes=1000)
    with started(settings, MeanColourEncoder()) as client:
        assert client.post("/procedures", content=b"[", headers=NOT_JSON).status_code == 422
        big = client.post("/procedures", content=b"[" * 2000, headers=NOT_JSON)
        assert big.status_code == 413
        assert client.post("/search", content=b"[", headers=NOT_JSON).status_code == 422
    assert [(r.actor, r.action, r.status) for r in rows(settings) if " /" in r.action] == [
        ("open", POST_JOBS, 422),
        ("open", POST_JOBS, 413),
    ]  # the search is a read: no row


def _sql_error_record(db: Path) -> logging.LogRecord:
    """A record holding a real SQLAlchemy error whose text carries its statement."""
    engine = create_engine(f"sqlite:///{db}", hide_parameters=True)
    insert = " ".join(["INSERT INTO t (id, secret_column)", "VALUES (:id, :v)"])
    values = {"id": 1, "v": "".join(["pat", "ient"])}  # built: no source line shows them
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, secret_column TEXT)"))
            for _ in range(2):
                conn.execute(text(insert), values)
    except Exception as exc:
        assert "secret_column" in str(exc)  # the raw error text carries the statement
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "storage fault", (), None)
        record.exc_info = (type(exc), exc, exc.__traceback__)
        return record
    finally:
        engine.dispose()
    raise AssertionError("the query should fail")


def test_a_logged_database_traceback_has_no_sql_and_no_raw_path(tmp_path: Path) -> None:
    record = _sql_error_record(tmp_path / "x.db")
    try:
        open(tmp_path / "private" / "patient-42.jpg", "rb")  # noqa: SIM115
    except OSError as exc:
        path_record = logging.LogRecord("t", logging.ERROR, __file__, 1, "read", (), None)
        path_record.exc_info = (type(exc), exc, exc.__traceback__)
    for rec, secrets in (
        (record, ["secret_column", "INSERT INTO", "patient"]),
        (path_record, [str(tmp_path)]),
    ):
        line = json.loads(JsonFormatter().format(rec))
        for secret in secrets:
            assert secret not in line["exception"], line["exception"]
        assert 'File "' in line["exception"]  # still says where it failed
    assert "patient-42.jpg" in json.loads(JsonFormatter().format(path_record))["exception"]
    assert sqlite3.sqlite_version  # the SQL error above came from SQLite


def test_the_served_log_of_a_storage_fault_is_scrubbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polypindex.service import errors

    stream = io.StringIO()
    handler = configure_logging("INFO", stream)
    try:
        record = _sql_error_record(tmp_path / "y.db")
        errors.logger.error("storage fault", exc_info=record.exc_info)
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert "storage fault" in out and "secret_column" not in out and "INSERT" not in out

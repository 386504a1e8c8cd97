"""Alembic migrations on SQLite and PostgreSQL: up, down, the models match, Store refuses old schemas."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from polypindex.indexer import migrate
from polypindex.indexer.store import Store
from polypindex.indexer.tables import Base

TABLES = {
    "procedures",
    "tracklets",
    "jobs",
    "tracklet_predictions",
    "api_keys",
    "audit",
    "tracklet_entities",
    "changes",
}


def _tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_head_constant_matches_the_scripts() -> None:
    assert migrate.head_revision() == migrate.alembic_head_revision()


def test_upgrade_down_and_up_again_and_models_match(db_url: str) -> None:
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        assert migrate.schema_state(engine) == (None, migrate.head_revision())
        assert migrate.upgrade(engine) == (None, migrate.head_revision())
        assert _tables(db_url) == TABLES
        assert migrate.upgrade(engine) == (migrate.head_revision(),) * 2  # a no-op
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diffs == [], f"the ORM models and the migrations differ: {diffs}"
        migrate.downgrade(engine, migrate.BASELINE_REVISION)
        assert _tables(db_url) == {"procedures", "tracklets"}
        migrate.downgrade(engine, "base")
        assert _tables(db_url) == set()
        migrate.upgrade(engine)
        assert _tables(db_url) == TABLES
    finally:
        engine.dispose()


def test_store_refuses_a_schema_that_is_behind(db_url: str) -> None:
    with pytest.raises(migrate.SchemaOutOfDateError, match="polypindex db upgrade"):
        Store(db_url, migrate=False)
    engine = create_engine(db_url, poolclass=NullPool)
    migrate.upgrade(engine, migrate.BASELINE_REVISION)
    engine.dispose()
    with pytest.raises(migrate.SchemaOutOfDateError, match="is at revision '0001' but"):
        Store(db_url, migrate=False)
    Store(db_url).close()  # migrate=True brings it to the head
    Store(db_url, migrate=False).close()


def test_store_refuses_a_schema_from_newer_software(db_url: str) -> None:
    Store(db_url).close()
    engine = create_engine(db_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(migrate.SchemaOutOfDateError, match="newer PolypIndex"):
        Store(db_url, migrate=False)


LEGACY_SQLITE = """
CREATE TABLE procedures (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, uid VARCHAR(255) NOT NULL,
    dataset_id VARCHAR(255), source TEXT NOT NULL, encoder_version VARCHAR(255) NOT NULL,
    n_tracklets INTEGER NOT NULL, created_at DATETIME NOT NULL, UNIQUE (uid));
CREATE TABLE tracklets (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, procedure_id INTEGER NOT NULL,
    key VARCHAR(512) NOT NULL, identity_label VARCHAR(255), start_frame INTEGER NOT NULL,
    end_frame INTEGER NOT NULL, n_frames INTEGER NOT NULL, boxes_json TEXT NOT NULL,
    thumbnail_path TEXT, embedding BLOB NOT NULL, embedding_dim INTEGER NOT NULL,
    encoder_version VARCHAR(255) NOT NULL, size_mm FLOAT, histology VARCHAR(255),
    created_at DATETIME NOT NULL,
    CONSTRAINT uq_tracklets_procedure_key UNIQUE (procedure_id, key),
    FOREIGN KEY(procedure_id) REFERENCES procedures (id) ON DELETE CASCADE);
CREATE INDEX ix_tracklets_encoder_version_id ON tracklets (encoder_version, id);
CREATE INDEX ix_tracklets_procedure_id ON tracklets (procedure_id);
INSERT INTO procedures VALUES (1, 'A', NULL, 's', 'enc-a', 1, '2026-01-01 00:00:00');
INSERT INTO tracklets VALUES (1, 1, 'k', NULL, 0, 1, 2, '{}', NULL,
    X'0000803f00000000', 2, 'enc-a', NULL, NULL, '2026-01-01 00:00:00');
"""


def test_a_create_all_database_is_adopted(tmp_path: Path) -> None:
    """What the code before migrations made (create_all: an unnamed UNIQUE on uid)."""
    path = tmp_path / "legacy.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(LEGACY_SQLITE)
    url = f"sqlite:///{path}"
    with Store(url) as store:
        assert store.tracklet_ids("enc-a").tolist() == [1]  # the data survived
        store.replace_procedure("A", None, "s", "enc-b", [])  # the new constraint is in
    assert _tables(url) == TABLES
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diffs == [], diffs


def test_concurrent_upgrades_are_serialised(db_url: str) -> None:
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(db_url).close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _tables(db_url) == TABLES


def test_0003_keeps_the_data_and_allows_one_row_per_generation(db_url: str) -> None:
    engine = create_engine(db_url, poolclass=NullPool)
    migrate.upgrade(engine, "0002")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO procedures (uid, source, encoder_version, n_tracklets, created_at) "
                "VALUES ('A', 's', 'enc-a', 1, '2026-01-01 00:00:00+00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO tracklets (procedure_id, key, start_frame, end_frame, n_frames, "
                "boxes_json, embedding, embedding_dim, encoder_version, created_at) VALUES "
                "((SELECT id FROM procedures WHERE uid = 'A'), 'k', 0, 1, 2, '{}', :e, 2, "
                "'enc-a', '2026-01-01 00:00:00+00:00')"
            ),
            {"e": b"\x00\x00\x80\x3f\x00\x00\x00\x00"},
        )
    engine.dispose()
    with Store(db_url) as store:  # upgrades to the head: the row survives the table rebuild
        (rec,) = store.get_tracklets(store.tracklet_ids("enc-a")).values()
        assert rec.procedure_uid == "A" and rec.embedding.tolist() == [1.0, 0.0]
        store.replace_procedure("A", None, "s", "enc-b", [])
        assert [p.encoder_version for p in store.list_procedures()] == ["enc-a", "enc-b"]
        assert store.count_tracklets("enc-a") == 1

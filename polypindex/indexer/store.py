"""The SQL store: procedures and tracklets, the source of truth (docs/store.md).

Every tracklet row carries its embedding (float32 bytes) and the encoder version
that made it, so the FAISS index (:mod:`indexer.vectors`) can always be
rebuilt from here. ``tracklets.id`` is the FAISS id (int64); ids are never
reused (SQLite ``AUTOINCREMENT``, PostgreSQL sequences), which is what lets an
index snapshot catch up with ``id > max_row_id``.

SQLite (``sqlite:///path/to/db.sqlite``) is the embedded default, PostgreSQL
(``postgresql+psycopg://user@host/db``) the deployed one. The schema is made by
the Alembic migrations in ``indexer/migrations`` (:mod:`indexer.migrate`); the
tables and the plain values read and written are :mod:`indexer.tables` (re-exported
here).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Select, create_engine, delete, event, func, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker
from sqlalchemy.pool import StaticPool

from polypindex.indexer.hits import query_tracklet
from polypindex.indexer.migrate import check_schema
from polypindex.indexer.migrate import upgrade as migrate_schema
from polypindex.indexer.sqlite import set_sqlite_pragmas, writable_check
from polypindex.indexer.store_changes import DELETED, REPLACED, WRITTEN, conflict, record_change
from polypindex.indexer.tables import (
    PredictionModel,
    PredictionRow,
    ProcedureModel,
    ProcedureRecord,
    TrackletModel,
    TrackletRecord,
    TrackletRow,
    decode_embeddings,
    embedding_bytes,
    prediction_model,
    procedure_record,
    tracklet_model,
    tracklet_record,
)
from polypindex.model.core.errors import (
    InvalidInputError,
    ProcedureNotFoundError,
)

__all__ = ["Store"]

# Rows fetched per ``IN (...)`` query (SQLite's bound-parameter limit is 32766).
_IN_CHUNK = 1000

_Q = TypeVar("_Q", bound="Select[*tuple[Any, ...]]")


def _chunks(values: Sequence[int], size: int = _IN_CHUNK) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def _of_tracklet_version(query: _Q, encoder_version: str | None) -> _Q:
    """A query over predictions restricted to tracklets of ``encoder_version`` when given."""
    if encoder_version is None:
        return query
    tracklet = TrackletModel.id == PredictionModel.tracklet_id
    return query.join(TrackletModel, tracklet).where(
        TrackletModel.encoder_version == encoder_version
    )


def _of_version(query: _Q, column: InstrumentedAttribute[str], encoder_version: str | None) -> _Q:
    """``query`` restricted to ``column == encoder_version`` when one is given."""
    return query if encoder_version is None else query.where(column == encoder_version)


class Store:
    """Procedures and tracklets in SQL (SQLite or PostgreSQL).

    Args:
        url: an SQLAlchemy URL, e.g. ``sqlite:///var/polypindex.sqlite`` or
            ``postgresql+psycopg://postgres@127.0.0.1:5432/polypindex``. The parent
            folder of an SQLite file is created if needed.
        echo: log the SQL statements.
        migrate: bring the schema to the newest revision on open (Alembic
            ``upgrade head``, a no-op when it is there already; the embedded
            default). ``False`` only checks it and refuses a database that is
            behind (a deployment that runs ``polypindex db upgrade`` itself).

    Raises:
        SchemaOutOfDateError: ``migrate=False`` and the schema is not at the head revision.
    """

    def __init__(self, url: str, *, echo: bool = False, migrate: bool = True) -> None:
        parsed = make_url(url)
        # hide_parameters: bound values (paths, uids) never reach logs or error messages
        kwargs: dict[str, Any] = {"echo": echo, "future": True, "hide_parameters": True}
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            database = parsed.database or ""
            if database in ("", ":memory:"):
                kwargs["poolclass"] = StaticPool
                kwargs["connect_args"] = {"check_same_thread": False}
            else:
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
                kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
        self.url = url
        self.engine: Engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            if parsed.database not in (None, "", ":memory:"):  # no SIGBUS on a read-only file
                check = writable_check(parsed.database)
                event.listen(self.engine, "connect", check)  # before the pragmas
                event.listen(self.engine, "checkout", check)
            event.listen(self.engine, "connect", set_sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        try:
            if migrate:
                migrate_schema(self.engine)
            else:
                check_schema(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    # -- lifecycle -----------------------------------------------------------------

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The session factory, for the store layer's modules only (they hold the queries
        of the other tables; docs/architecture.md#the-store)."""
        return self._sessions

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({make_url(self.url).render_as_string(hide_password=True)!r})"

    # -- writes --------------------------------------------------------------------

    def replace_procedure(
        self,
        uid: str,
        dataset_id: str | None,
        source: str,
        encoder_version: str,
        rows: Sequence[TrackletRow],
        *,
        if_absent: bool = False,
    ) -> list[int]:
        """Atomically replace a procedure's tracklets of one encoder version.

        One transaction deletes any existing procedure with this ``uid`` and
        ``encoder_version`` (and its tracklets) and inserts the new one, so a crash
        leaves either the old or the new version, never a mix. Rows of other
        encoder versions (other index generations) are left alone.

        Args:
            uid: the procedure UID.
            dataset_id: the dataset it comes from, if known.
            source: where it was read from (annotation file path / split).
            encoder_version: the encoder that made every row's embedding.
            rows: the tracklets; keys must be unique and embeddings share one dim.
            if_absent: the writer found the procedure absent when it began (it indexes
                without ``force``): a copy stored by now is another writer's, a conflict.

        Returns:
            The new tracklet ids (FAISS ids), in the order of ``rows``.

        Raises:
            ConflictError: another process committed this procedure and encoder version
                while this transaction ran, or (``if_absent``) since this writer began
                (nothing of this call is kept).
        """
        if not uid:
            raise InvalidInputError("procedure uid must be a non-empty string")
        if not encoder_version:
            raise InvalidInputError("encoder_version must be a non-empty string")
        counts = Counter(r.key for r in rows)
        duplicates = sorted(k for k, n in counts.items() if n > 1)
        if duplicates:
            raise InvalidInputError(f"procedure {uid!r}: duplicate tracklet key(s) {duplicates}")
        encoded = [embedding_bytes(r.embedding, r.key) for r in rows]
        dims = {dim for _, dim in encoded}
        if len(dims) > 1:
            raise InvalidInputError(
                f"procedure {uid!r}: embeddings of different dims {sorted(dims)}"
            )
        procedure = ProcedureModel(
            uid=uid,
            dataset_id=dataset_id,
            source=source,
            encoder_version=encoder_version,
            n_tracklets=len(rows),
        )
        try:
            return self._insert_procedure(procedure, rows, encoded, if_absent)
        except IntegrityError as exc:
            # The delete-then-insert transaction saw no row with this UID, yet one was
            # committed before ours: another indexer wrote the same procedure meanwhile.
            raise conflict(uid, encoder_version) from exc

    def _insert_procedure(
        self,
        procedure: ProcedureModel,
        rows: Sequence[TrackletRow],
        encoded: Sequence[tuple[bytes, int]],
        if_absent: bool,
    ) -> list[int]:
        """One transaction: delete the procedure's old generation, insert the new one,
        log the change (``indexer.store_changes``)."""
        uid, version = procedure.uid, procedure.encoder_version
        with self._sessions.begin() as session:
            old = self._delete_procedure(session, uid, version)
            if old is not None and if_absent:
                raise conflict(uid, version)
            session.add(procedure)
            session.flush()
            models = [
                tracklet_model(row, procedure.id, enc, procedure.encoder_version)
                for row, enc in zip(rows, encoded, strict=True)
            ]
            session.add_all(models)
            session.flush()
            session.add_all(
                prediction_model(int(m.id), p)
                for row, m in zip(rows, models, strict=True)
                for p in row.predictions
            )
            new = [int(m.id) for m in models]
            record_change(session, REPLACED if old else WRITTEN, uid, version, new, old or [])
            return new

    def delete_procedure(self, uid: str, encoder_version: str | None = None) -> list[int]:
        """Delete a procedure and its tracklets (of every encoder version unless one is given).

        Returns:
            The ids of the tracklets removed (to remove from the vector index).

        Raises:
            ProcedureNotFoundError: no procedure has this UID (and encoder version).
        """
        with self._sessions.begin() as session:
            removed = self._delete_procedure(session, uid, encoder_version)
            if removed is not None:
                record_change(session, DELETED, uid, encoder_version, [], removed)
        if removed is None:
            raise ProcedureNotFoundError(f"no procedure with uid {uid!r}")
        return removed

    @staticmethod
    def _delete_procedure(
        session: Session, uid: str, encoder_version: str | None = None
    ) -> list[int] | None:
        query = select(ProcedureModel.id).where(ProcedureModel.uid == uid)
        query = _of_version(query, ProcedureModel.encoder_version, encoder_version)
        proc_ids = list(session.scalars(query))
        if not proc_ids:
            return None
        ids = list(
            session.scalars(
                select(TrackletModel.id)
                .where(TrackletModel.procedure_id.in_(proc_ids))
                .order_by(TrackletModel.id)
            )
        )
        # Explicit, so it does not depend on the database enforcing ON DELETE CASCADE.
        session.execute(delete(PredictionModel).where(PredictionModel.tracklet_id.in_(ids)))
        session.execute(delete(TrackletModel).where(TrackletModel.procedure_id.in_(proc_ids)))
        gone = session.execute(delete(ProcedureModel).where(ProcedureModel.id.in_(proc_ids)))
        # Conditional: a concurrent delete of the same procedure may have committed between
        # the reads above and these writes (SQLite reads outside the write lock, PostgreSQL
        # re-checks the rows after waiting); then this one deleted nothing and says so.
        if not gone.rowcount:  # type: ignore[attr-defined]
            return None
        return [int(i) for i in ids]

    # -- reads ---------------------------------------------------------------------

    def has_procedure(self, uid: str, encoder_version: str | None = None) -> bool:
        """Whether ``uid`` is stored (with embeddings of ``encoder_version`` when given)."""
        query = select(ProcedureModel.id).where(ProcedureModel.uid == uid)
        query = _of_version(query, ProcedureModel.encoder_version, encoder_version)
        with self._sessions() as session:
            return session.scalar(query) is not None

    def get_procedure(self, uid: str, encoder_version: str | None = None) -> ProcedureRecord:
        """The procedure with this UID (its newest generation unless ``encoder_version``).

        Raises:
            ProcedureNotFoundError: no such procedure.
        """
        query = select(ProcedureModel).where(ProcedureModel.uid == uid)
        query = _of_version(query, ProcedureModel.encoder_version, encoder_version)
        query = query.order_by(ProcedureModel.created_at.desc(), ProcedureModel.id.desc()).limit(1)
        with self._sessions() as session:
            model = session.scalar(query)
            if model is None:
                raise ProcedureNotFoundError(f"no procedure with uid {uid!r}")
            return procedure_record(model)

    def list_procedures(self, encoder_version: str | None = None) -> list[ProcedureRecord]:
        """All procedures (one record per UID and encoder version), ordered by UID."""
        query = select(ProcedureModel).order_by(ProcedureModel.uid, ProcedureModel.encoder_version)
        query = _of_version(query, ProcedureModel.encoder_version, encoder_version)
        with self._sessions() as session:
            return [procedure_record(m) for m in session.scalars(query)]

    def get_tracklet(self, tracklet_id: int) -> TrackletRecord:
        """The tracklet with this id; raises TrackletNotFoundError."""
        return query_tracklet(self.engine, tracklet_id)  # one prepared query

    def get_tracklets(self, ids: Iterable[int]) -> dict[int, TrackletRecord]:
        """The tracklets with these ids; ids that do not exist are absent from the result."""
        wanted = sorted({int(i) for i in ids})
        out: dict[int, TrackletRecord] = {}
        with self._sessions() as session:
            for chunk in _chunks(wanted):
                query = (
                    select(TrackletModel, ProcedureModel.uid)
                    .join(ProcedureModel, TrackletModel.procedure_id == ProcedureModel.id)
                    .where(TrackletModel.id.in_(chunk))
                )
                for model, proc_uid in session.execute(query):
                    out[int(model.id)] = tracklet_record(model, proc_uid)
        return out

    def tracklet_ids_for_procedure(self, uid: str) -> list[int]:
        """Tracklet ids of a procedure, every encoder version (empty if unknown), increasing."""
        query = (
            select(TrackletModel.id)
            .join(ProcedureModel, TrackletModel.procedure_id == ProcedureModel.id)
            .where(ProcedureModel.uid == uid)
            .order_by(TrackletModel.id)
        )
        with self._sessions() as session:
            return [int(i) for i in session.scalars(query)]

    def tracklet_ids(self, encoder_version: str) -> np.ndarray:
        """All tracklet ids of an encoder version: int64 ``(N,)``, increasing."""
        query = (
            select(TrackletModel.id)
            .where(TrackletModel.encoder_version == encoder_version)
            .order_by(TrackletModel.id)
        )
        with self._sessions() as session:
            return np.fromiter((int(i) for i in session.scalars(query)), dtype=np.int64)

    def iter_embeddings(
        self, encoder_version: str, after_id: int = 0, batch: int = 4096
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream the embeddings of one encoder version with ``id > after_id``, by id.

        Yields:
            ``(ids int64 (n,), vectors float32 (n, D))`` batches of at most ``batch`` rows.

        Raises:
            EncoderMismatchError: rows of this encoder version have different dims.
        """
        if batch < 1:
            raise InvalidInputError(f"batch must be >= 1, got {batch}")
        last = int(after_id)
        dim: int | None = None
        while True:
            query = (
                select(TrackletModel.id, TrackletModel.embedding, TrackletModel.embedding_dim)
                .where(TrackletModel.encoder_version == encoder_version, TrackletModel.id > last)
                .order_by(TrackletModel.id)
                .limit(batch)
            )
            with self._sessions() as session:
                rows = session.execute(query).all()
            if not rows:
                return
            ids, vectors, dim = decode_embeddings(rows, encoder_version, dim)
            last = int(ids[-1])
            yield ids, vectors

    def embeddings_for_ids(self, ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the given ids that exist: ``(ids int64 (n,), vectors float32 (n, D))``."""
        wanted = sorted({int(i) for i in ids})
        all_rows: list[Any] = []
        with self._sessions() as session:
            for chunk in _chunks(wanted):
                query = (
                    select(TrackletModel.id, TrackletModel.embedding, TrackletModel.embedding_dim)
                    .where(TrackletModel.id.in_(chunk))
                    .order_by(TrackletModel.id)
                )
                all_rows.extend(session.execute(query).all())
        if not all_rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        ids_arr, vectors, _ = decode_embeddings(all_rows, "(mixed)", None)
        return ids_arr, vectors

    # -- predictions -----------------------------------------------------------------

    def predictions_for(self, ids: Iterable[int]) -> dict[int, dict[str, PredictionRow]]:
        """The stored predictions of these tracklets: ``{id: {task: PredictionRow}}``."""
        wanted = sorted({int(i) for i in ids})
        out: dict[int, dict[str, PredictionRow]] = {}
        with self._sessions() as session:
            for chunk in _chunks(wanted):
                for m in session.scalars(
                    select(PredictionModel).where(PredictionModel.tracklet_id.in_(chunk))
                ):
                    out.setdefault(int(m.tracklet_id), {})[m.task] = PredictionRow(
                        m.task, m.label, float(m.probability), m.probe_version
                    )
        return out

    def replace_predictions(self, task: str, predictions: dict[int, PredictionRow]) -> int:
        """Store (or overwrite) one task's predictions for existing tracklets, in one transaction.

        Returns how many were written; ids no longer stored are skipped.
        """
        if any(p.task != task for p in predictions.values()):
            raise InvalidInputError(
                f"replace_predictions({task!r}) got predictions of another task"
            )
        written = 0
        with self._sessions.begin() as session:
            for chunk in _chunks(sorted(predictions)):
                present = set(
                    session.scalars(select(TrackletModel.id).where(TrackletModel.id.in_(chunk)))
                )
                session.execute(
                    delete(PredictionModel).where(
                        PredictionModel.task == task, PredictionModel.tracklet_id.in_(present)
                    )
                )
                session.add_all(prediction_model(int(i), predictions[i]) for i in sorted(present))
                written += len(present)
        return written

    def tracklet_ids_with_prediction(
        self, task: str, label: str, encoder_version: str | None = None
    ) -> set[int]:
        """Ids of the tracklets whose stored ``task`` prediction is ``label``."""
        query = select(PredictionModel.tracklet_id).where(
            PredictionModel.task == task, PredictionModel.label == label
        )
        query = _of_tracklet_version(query, encoder_version)
        with self._sessions() as session:
            return {int(i) for i in session.scalars(query)}

    def count_predictions(self, encoder_version: str | None = None) -> dict[str, int]:
        """Stored predictions per task (of one encoder generation when given)."""
        query = select(PredictionModel.task, func.count()).group_by(PredictionModel.task)
        query = _of_tracklet_version(query, encoder_version)
        with self._sessions() as session:
            return {str(t): int(n) for t, n in session.execute(query)}

    def max_tracklet_id(self) -> int:
        """The highest tracklet id currently stored (0 when empty)."""
        with self._sessions() as session:
            return int(session.scalar(select(func.max(TrackletModel.id))) or 0)

    def count_tracklets(self, encoder_version: str | None = None) -> int:
        """Number of tracklets (of one encoder version when given)."""
        query = _of_version(
            select(func.count(TrackletModel.id)), TrackletModel.encoder_version, encoder_version
        )
        with self._sessions() as session:
            return int(session.scalar(query) or 0)

    def encoder_versions(self) -> list[str]:
        """The encoder versions that have at least one tracklet, sorted."""
        query = (
            select(TrackletModel.encoder_version).distinct().order_by(TrackletModel.encoder_version)
        )
        with self._sessions() as session:
            return [str(v) for v in session.scalars(query)]

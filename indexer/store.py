"""The SQL store: procedures and tracklets, the source of truth (SPEC §8).

Every tracklet row carries its embedding (float32 bytes) and the encoder version
that made it, so the FAISS index (:mod:`indexer.vector_index`) can always be
rebuilt from here. ``tracklets.id`` is the FAISS id (int64); ids are never
reused (SQLite ``AUTOINCREMENT``, PostgreSQL sequences), which is what lets an
index snapshot catch up with ``id > max_row_id``.

SQLite (``sqlite:///path/to/db.sqlite``) is the embedded default, PostgreSQL
(``postgresql+psycopg://user@host/db``) the deployed one. The schema is made by
the Alembic migrations in ``indexer/migrations`` (:mod:`indexer.migrate`); the
models below must match the newest revision (a test compares them).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from polypindex.indexer.migrate import check_schema
from polypindex.indexer.migrate import upgrade as migrate_schema
from polypindex.model.errors import (
    ConflictError,
    EncoderMismatchError,
    InvalidInputError,
    ProcedureNotFoundError,
    TrackletNotFoundError,
)

# Rows fetched per ``IN (...)`` query (SQLite's bound-parameter limit is 32766).
_IN_CHUNK = 1000


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base of the PolypIndex tables."""


class ProcedureModel(Base):
    """One indexed procedure (a colonoscopy video)."""

    __tablename__ = "procedures"
    __table_args__ = (
        UniqueConstraint("uid", "encoder_version", name="uq_procedures_uid_encoder_version"),
        Index("ix_procedures_uid", "uid"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uid: Mapped[str] = mapped_column(String(255), nullable=False)
    dataset_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    source: Mapped[str] = mapped_column(Text, nullable=False, default="")
    encoder_version: Mapped[str] = mapped_column(String(255), nullable=False)
    n_tracklets: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=_utcnow
    )


class TrackletModel(Base):
    """One tracklet with its embedding; ``id`` is its FAISS id."""

    __tablename__ = "tracklets"
    __table_args__ = (
        UniqueConstraint("procedure_id", "key", name="uq_tracklets_procedure_key"),
        Index("ix_tracklets_encoder_version_id", "encoder_version", "id"),
        Index("ix_tracklets_procedure_id", "procedure_id"),
        {"sqlite_autoincrement": True},
    )

    # int64 like FAISS ids; SQLite's AUTOINCREMENT needs exactly "INTEGER PRIMARY KEY".
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    procedure_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("procedures.id", ondelete="CASCADE"), nullable=False
    )
    key: Mapped[str] = mapped_column(String(512), nullable=False)
    identity_label: Mapped[str | None] = mapped_column(String(255), nullable=True)
    start_frame: Mapped[int] = mapped_column(Integer, nullable=False)
    end_frame: Mapped[int] = mapped_column(Integer, nullable=False)
    n_frames: Mapped[int] = mapped_column(Integer, nullable=False)
    boxes_json: Mapped[str] = mapped_column(Text, nullable=False, default="{}")
    thumbnail_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    embedding_dim: Mapped[int] = mapped_column(Integer, nullable=False)
    encoder_version: Mapped[str] = mapped_column(String(255), nullable=False)
    size_mm: Mapped[float | None] = mapped_column(Float, nullable=True)
    histology: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=_utcnow
    )


class PredictionModel(Base):
    """A probe's prediction for one tracklet and task (size, histology)."""

    __tablename__ = "tracklet_predictions"
    __table_args__ = (Index("ix_tracklet_predictions_task_label", "task", "label"),)

    tracklet_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("tracklets.id", ondelete="CASCADE"),
        primary_key=True,
    )
    task: Mapped[str] = mapped_column(String(32), primary_key=True)
    label: Mapped[str] = mapped_column(String(64), nullable=False)
    probability: Mapped[float] = mapped_column(Float, nullable=False)
    probe_version: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=_utcnow
    )


class JobModel(Base):
    """One background job (e.g. indexing a procedure), its state kept here so it survives restarts."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created_at", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    params_json: Mapped[str] = mapped_column(Text, nullable=False)
    progress_json: Mapped[str] = mapped_column(Text, nullable=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class PredictionRow:
    """A probe's prediction for a tracklet (stored in ``tracklet_predictions``).

    Attributes:
        task: ``"size"`` or ``"histology"``.
        label: the predicted class name.
        probability: calibrated probability of the task's positive class
            (diminutive, adenoma), in [0, 1].
        probe_version: the probe that made it.
    """

    task: str
    label: str
    probability: float
    probe_version: str


@dataclass(frozen=True)
class TrackletRow:
    """A tracklet to insert (input of :meth:`Store.replace_procedure`).

    Attributes:
        key: ``Tracklet.key``, unique within its procedure.
        start_frame: first frame id.
        end_frame: last frame id.
        n_frames: frames in the tracklet (before subsampling).
        embedding: float32 ``(D,)`` tracklet embedding.
        boxes: summary of the boxes (see ``indexer.pipeline.summarize_boxes``).
        identity_label: ground-truth identity when the input is annotated
            (evaluation only), else ``None``.
        thumbnail_path: path of a JPEG thumbnail, relative to the index directory.
        size_mm: annotated polyp size in millimetres, if any.
        histology: annotated histology, if any.
        predictions: the installed probes' predictions, written in the same
            transaction as the row.
    """

    key: str
    start_frame: int
    end_frame: int
    n_frames: int
    embedding: np.ndarray
    boxes: dict[str, Any] = field(default_factory=dict)
    identity_label: str | None = None
    thumbnail_path: str | None = None
    size_mm: float | None = None
    histology: str | None = None
    predictions: tuple[PredictionRow, ...] = ()


@dataclass(frozen=True, eq=False)
class TrackletRecord:
    """A stored tracklet (a plain value, detached from any session).

    Attributes:
        embedding: float32 ``(D,)``, as stored (L2-normalised by the encoder).
        boxes: the boxes summary dict.
    """

    id: int
    procedure_uid: str
    key: str
    identity_label: str | None
    start_frame: int
    end_frame: int
    n_frames: int
    boxes: dict[str, Any]
    thumbnail_path: str | None
    embedding: np.ndarray
    encoder_version: str
    size_mm: float | None
    histology: str | None


@dataclass(frozen=True)
class ProcedureRecord:
    """A stored procedure."""

    id: int
    uid: str
    dataset_id: str | None
    source: str
    encoder_version: str
    n_tracklets: int
    created_at: datetime


def _prediction_model(tracklet_id: int, p: PredictionRow) -> PredictionModel:
    probability = float(p.probability)
    if not p.task or not p.label or not 0.0 <= probability <= 1.0:
        raise InvalidInputError(
            f"tracklet {tracklet_id}: a prediction needs a task, a label and a probability in "
            f"[0, 1], got {p}"
        )
    return PredictionModel(
        tracklet_id=tracklet_id,
        task=p.task,
        label=p.label,
        probability=probability,
        probe_version=p.probe_version,
    )


def _to_bytes(embedding: np.ndarray, key: str) -> tuple[bytes, int]:
    vec = np.asarray(embedding, dtype=np.float32)
    if vec.ndim != 1 or vec.size == 0:
        raise InvalidInputError(
            f"tracklet {key!r}: embedding must be a non-empty 1-D vector, got shape {vec.shape}"
        )
    if not np.all(np.isfinite(vec)):
        raise InvalidInputError(f"tracklet {key!r}: embedding contains NaN or infinite values")
    return np.ascontiguousarray(vec, dtype="<f4").tobytes(), int(vec.size)


def _from_bytes(data: bytes, dim: int, tracklet_id: int) -> np.ndarray:
    vec = np.frombuffer(data, dtype="<f4")
    if vec.size != dim:
        raise EncoderMismatchError(
            f"tracklet {tracklet_id}: stored embedding has {vec.size} values but embedding_dim={dim}"
        )
    return vec.astype(np.float32)  # a writable copy in native byte order


def _chunks(values: Sequence[int], size: int = _IN_CHUNK) -> Iterator[list[int]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


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
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
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
            event.listen(self.engine, "connect", _set_sqlite_pragmas)
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
        """The session factory (for other tables of the store, e.g. ``indexer.jobs``)."""
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

        Returns:
            The new tracklet ids (FAISS ids), in the order of ``rows``.

        Raises:
            ConflictError: another process committed this procedure and encoder version
                while this transaction ran (nothing of this call is kept).
        """
        if not uid:
            raise InvalidInputError("procedure uid must be a non-empty string")
        if not encoder_version:
            raise InvalidInputError("encoder_version must be a non-empty string")
        counts = Counter(r.key for r in rows)
        duplicates = sorted(k for k, n in counts.items() if n > 1)
        if duplicates:
            raise InvalidInputError(f"procedure {uid!r}: duplicate tracklet key(s) {duplicates}")
        encoded = [_to_bytes(r.embedding, r.key) for r in rows]
        dims = {dim for _, dim in encoded}
        if len(dims) > 1:
            raise InvalidInputError(
                f"procedure {uid!r}: embeddings of different dims {sorted(dims)}"
            )
        try:
            return self._replace_procedure(uid, dataset_id, source, encoder_version, rows, encoded)
        except IntegrityError as exc:
            # The delete-then-insert transaction saw no row with this UID, yet one was
            # committed before ours: another indexer wrote the same procedure meanwhile.
            raise ConflictError(
                f"procedure {uid!r} (encoder {encoder_version}) was written by another "
                f"indexer while this one was indexing it; this write was rolled back and the "
                f"other one stands. Index each procedure from one process at a time; "
                f"re-running skips it (or replaces it with --force)"
            ) from exc

    def _replace_procedure(
        self,
        uid: str,
        dataset_id: str | None,
        source: str,
        encoder_version: str,
        rows: Sequence[TrackletRow],
        encoded: Sequence[tuple[bytes, int]],
    ) -> list[int]:
        with self._sessions.begin() as session:
            self._delete_procedure(session, uid, encoder_version)
            procedure = ProcedureModel(
                uid=uid,
                dataset_id=dataset_id,
                source=source,
                encoder_version=encoder_version,
                n_tracklets=len(rows),
            )
            session.add(procedure)
            session.flush()
            models = [
                TrackletModel(
                    procedure_id=procedure.id,
                    key=row.key,
                    identity_label=row.identity_label,
                    start_frame=int(row.start_frame),
                    end_frame=int(row.end_frame),
                    n_frames=int(row.n_frames),
                    boxes_json=json.dumps(row.boxes, sort_keys=True),
                    thumbnail_path=row.thumbnail_path,
                    embedding=data,
                    embedding_dim=dim,
                    encoder_version=encoder_version,
                    size_mm=None if row.size_mm is None else float(row.size_mm),
                    histology=row.histology,
                )
                for row, (data, dim) in zip(rows, encoded, strict=True)
            ]
            session.add_all(models)
            session.flush()
            session.add_all(
                _prediction_model(int(m.id), p)
                for row, m in zip(rows, models, strict=True)
                for p in row.predictions
            )
            return [int(m.id) for m in models]

    def delete_procedure(self, uid: str, encoder_version: str | None = None) -> list[int]:
        """Delete a procedure and its tracklets (of every encoder version unless one is given).

        Returns:
            The ids of the tracklets removed (to remove from the vector index).

        Raises:
            ProcedureNotFoundError: no procedure has this UID (and encoder version).
        """
        with self._sessions.begin() as session:
            removed = self._delete_procedure(session, uid, encoder_version)
        if removed is None:
            raise ProcedureNotFoundError(f"no procedure with uid {uid!r}")
        return removed

    @staticmethod
    def _delete_procedure(
        session: Session, uid: str, encoder_version: str | None = None
    ) -> list[int] | None:
        query = select(ProcedureModel.id).where(ProcedureModel.uid == uid)
        if encoder_version is not None:
            query = query.where(ProcedureModel.encoder_version == encoder_version)
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
        session.execute(delete(ProcedureModel).where(ProcedureModel.id.in_(proc_ids)))
        return [int(i) for i in ids]

    # -- reads ---------------------------------------------------------------------

    def has_procedure(self, uid: str, encoder_version: str | None = None) -> bool:
        """Whether ``uid`` is stored (with embeddings of ``encoder_version`` when given)."""
        query = select(ProcedureModel.id).where(ProcedureModel.uid == uid)
        if encoder_version is not None:
            query = query.where(ProcedureModel.encoder_version == encoder_version)
        with self._sessions() as session:
            return session.scalar(query) is not None

    def get_procedure(self, uid: str, encoder_version: str | None = None) -> ProcedureRecord:
        """The procedure with this UID (its newest generation unless ``encoder_version``).

        Raises:
            ProcedureNotFoundError: no such procedure.
        """
        query = select(ProcedureModel).where(ProcedureModel.uid == uid)
        if encoder_version is not None:
            query = query.where(ProcedureModel.encoder_version == encoder_version)
        query = query.order_by(ProcedureModel.created_at.desc(), ProcedureModel.id.desc()).limit(1)
        with self._sessions() as session:
            model = session.scalar(query)
            if model is None:
                raise ProcedureNotFoundError(f"no procedure with uid {uid!r}")
            return _procedure_record(model)

    def list_procedures(self, encoder_version: str | None = None) -> list[ProcedureRecord]:
        """All procedures (one record per UID and encoder version), ordered by UID."""
        query = select(ProcedureModel).order_by(ProcedureModel.uid, ProcedureModel.encoder_version)
        if encoder_version is not None:
            query = query.where(ProcedureModel.encoder_version == encoder_version)
        with self._sessions() as session:
            return [_procedure_record(m) for m in session.scalars(query)]

    def get_tracklet(self, tracklet_id: int) -> TrackletRecord:
        """The tracklet with this id; raises TrackletNotFoundError."""
        found = self.get_tracklets([tracklet_id])
        if int(tracklet_id) not in found:
            raise TrackletNotFoundError(f"no tracklet with id {tracklet_id}")
        return found[int(tracklet_id)]

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
                    out[int(model.id)] = _tracklet_record(model, proc_uid)
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
            ids, vectors, dim = _decode_embeddings(rows, encoder_version, dim)
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
        ids_arr, vectors, _ = _decode_embeddings(all_rows, "(mixed)", None)
        return ids_arr, vectors

    # -- predictions -----------------------------------------------------------------

    def predictions_for(self, ids: Iterable[int]) -> dict[int, dict[str, PredictionRow]]:
        """The stored predictions of these tracklets: ``{id: {task: PredictionRow}}``."""
        wanted = sorted({int(i) for i in ids})
        out: dict[int, dict[str, PredictionRow]] = {}
        with self._sessions() as session:
            for start in range(0, len(wanted), 1000):
                chunk = wanted[start : start + 1000]
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
            items = sorted(predictions.items())
            for start in range(0, len(items), 1000):
                chunk = dict(items[start : start + 1000])
                present = set(
                    session.scalars(select(TrackletModel.id).where(TrackletModel.id.in_(chunk)))
                )
                session.execute(
                    delete(PredictionModel).where(
                        PredictionModel.task == task, PredictionModel.tracklet_id.in_(present)
                    )
                )
                session.add_all(_prediction_model(int(i), chunk[i]) for i in sorted(present))
                written += len(present)
        return written

    def tracklet_ids_with_prediction(
        self, task: str, label: str, encoder_version: str | None = None
    ) -> set[int]:
        """Ids of the tracklets whose stored ``task`` prediction is ``label``."""
        query = select(PredictionModel.tracklet_id).where(
            PredictionModel.task == task, PredictionModel.label == label
        )
        if encoder_version is not None:
            query = query.join(
                TrackletModel, TrackletModel.id == PredictionModel.tracklet_id
            ).where(TrackletModel.encoder_version == encoder_version)
        with self._sessions() as session:
            return {int(i) for i in session.scalars(query)}

    def count_predictions(self, encoder_version: str | None = None) -> dict[str, int]:
        """Stored predictions per task (of one encoder generation when given)."""
        query = select(PredictionModel.task, func.count()).group_by(PredictionModel.task)
        if encoder_version is not None:
            query = query.join(
                TrackletModel, TrackletModel.id == PredictionModel.tracklet_id
            ).where(TrackletModel.encoder_version == encoder_version)
        with self._sessions() as session:
            return {str(t): int(n) for t, n in session.execute(query)}

    def max_tracklet_id(self) -> int:
        """The highest tracklet id currently stored (0 when empty)."""
        with self._sessions() as session:
            return int(session.scalar(select(func.max(TrackletModel.id))) or 0)

    def count_tracklets(self, encoder_version: str | None = None) -> int:
        """Number of tracklets (of one encoder version when given)."""
        query = select(func.count(TrackletModel.id))
        if encoder_version is not None:
            query = query.where(TrackletModel.encoder_version == encoder_version)
        with self._sessions() as session:
            return int(session.scalar(query) or 0)

    def encoder_versions(self) -> list[str]:
        """The encoder versions that have at least one tracklet, sorted."""
        query = (
            select(TrackletModel.encoder_version).distinct().order_by(TrackletModel.encoder_version)
        )
        with self._sessions() as session:
            return [str(v) for v in session.scalars(query)]


def _decode_embeddings(
    rows: Sequence[Any], encoder_version: str, dim: int | None
) -> tuple[np.ndarray, np.ndarray, int]:
    dims = {int(r.embedding_dim) for r in rows}
    if dim is not None:
        dims.add(dim)
    if len(dims) != 1:
        raise EncoderMismatchError(
            f"embeddings of encoder version {encoder_version!r} have different dims {sorted(dims)}"
        )
    (the_dim,) = dims
    ids = np.fromiter((int(r.id) for r in rows), dtype=np.int64, count=len(rows))
    vectors = np.empty((len(rows), the_dim), dtype=np.float32)
    for i, r in enumerate(rows):
        vectors[i] = _from_bytes(r.embedding, the_dim, int(r.id))
    return ids, vectors, the_dim


def _procedure_record(model: ProcedureModel) -> ProcedureRecord:
    return ProcedureRecord(
        id=int(model.id),
        uid=model.uid,
        dataset_id=model.dataset_id,
        source=model.source,
        encoder_version=model.encoder_version,
        n_tracklets=int(model.n_tracklets),
        created_at=model.created_at,
    )


def _tracklet_record(model: TrackletModel, procedure_uid: str) -> TrackletRecord:
    return TrackletRecord(
        id=int(model.id),
        procedure_uid=procedure_uid,
        key=model.key,
        identity_label=model.identity_label,
        start_frame=int(model.start_frame),
        end_frame=int(model.end_frame),
        n_frames=int(model.n_frames),
        boxes=json.loads(model.boxes_json or "{}"),
        thumbnail_path=model.thumbnail_path,
        embedding=_from_bytes(model.embedding, int(model.embedding_dim), int(model.id)),
        encoder_version=model.encoder_version,
        size_mm=model.size_mm,
        histology=model.histology,
    )

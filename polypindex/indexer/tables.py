"""The tables of the SQL store and the plain values read from and written to them.

The SQLAlchemy models below must match the newest Alembic revision in
``indexer/migrations`` (a test compares them); :class:`~polypindex.indexer.store.Store`
is the only code that queries them (``indexer.jobs`` uses :class:`JobModel` through
the store's sessions). Embeddings are stored as little-endian float32 bytes with
their dim (:func:`embedding_bytes`, :func:`embedding_from_bytes`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from polypindex.model.core.errors import EncoderMismatchError, InvalidInputError


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


class EntityModel(Base):
    """The polyp entity of one tracklet within its procedure (``indexer.grouping``);
    per encoder version since tracklets are, and leaves with its tracklet."""

    __tablename__ = "tracklet_entities"
    __table_args__ = (Index("ix_tracklet_entities_procedure_id", "procedure_id"),)

    tracklet_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("tracklets.id", ondelete="CASCADE"),
        primary_key=True,
    )
    procedure_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("procedures.id", ondelete="CASCADE"), nullable=False
    )
    encoder_version: Mapped[str] = mapped_column(String(255), nullable=False)
    entity: Mapped[int] = mapped_column(Integer, nullable=False)
    method: Mapped[str] = mapped_column(String(32), nullable=False)
    cut: Mapped[float] = mapped_column(Float, nullable=False)
    calibrated: Mapped[bool] = mapped_column(Boolean, nullable=False)
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
    # the lease of a running job, renewed by its worker (indexer.job_store)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiKeyModel(Base):
    """One API key of the HTTP service (``indexer.keys``): its name, scope and the
    SHA-256 of its token (the token itself is shown once and never stored)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    scope: Mapped[str] = mapped_column(String(16), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=_utcnow
    )
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditModel(Base):
    """One write to the service or to its keys (``indexer.audit``): who, what, when, result."""

    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_at", "at"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=_utcnow)
    actor: Mapped[str] = mapped_column(String(64), nullable=False)
    action: Mapped[str] = mapped_column(String(255), nullable=False)
    target: Mapped[str | None] = mapped_column(String(512), nullable=True)
    status: Mapped[int] = mapped_column(Integer, nullable=False)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class ChangeModel(Base):
    """One write to a procedure, numbered by ``id`` (only grows): what replicas follow
    (``indexer.store_changes``)."""

    __tablename__ = "changes"
    __table_args__ = (
        Index("ix_changes_encoder_version_id", "encoder_version", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=_utcnow)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    uid: Mapped[str] = mapped_column(String(255), nullable=False)
    encoder_version: Mapped[str | None] = mapped_column(String(255), nullable=True)
    added_json: Mapped[str] = mapped_column(Text, nullable=False)
    removed_json: Mapped[str] = mapped_column(Text, nullable=False)


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


@dataclass(frozen=True)
class TrackletSummary:
    """A tracklet as the timeline shows it (no embedding, no per-frame boxes)."""

    id: int
    key: str
    start_frame: int
    end_frame: int
    n_frames: int
    identity_label: str | None
    has_thumbnail: bool
    predictions: dict[str, PredictionRow] = field(default_factory=dict)
    entity_id: int | None = None


def prediction_model(tracklet_id: int, p: PredictionRow) -> PredictionModel:
    """The row of one prediction; InvalidInputError unless it has a task, a label and a
    probability in [0, 1]."""
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


def embedding_bytes(embedding: np.ndarray, key: str) -> tuple[bytes, int]:
    """``(little-endian float32 bytes, dim)`` of a finite non-empty 1-D embedding."""
    vec = np.asarray(embedding, dtype=np.float32)
    if vec.ndim != 1 or vec.size == 0:
        raise InvalidInputError(
            f"tracklet {key!r}: embedding must be a non-empty 1-D vector, got shape {vec.shape}"
        )
    if not np.all(np.isfinite(vec)):
        raise InvalidInputError(f"tracklet {key!r}: embedding contains NaN or infinite values")
    return np.ascontiguousarray(vec, dtype="<f4").tobytes(), int(vec.size)


def embedding_from_bytes(data: bytes, dim: int, tracklet_id: int) -> np.ndarray:
    """The float32 ``(dim,)`` vector stored as ``data``; EncoderMismatchError if it has
    another number of values."""
    vec = np.frombuffer(data, dtype="<f4")
    if vec.size != dim:
        raise EncoderMismatchError(
            f"tracklet {tracklet_id}: stored embedding has {vec.size} values but embedding_dim={dim}"
        )
    return vec.astype(np.float32)  # a writable copy in native byte order


def _shared_fields(source: TrackletRow | TrackletModel) -> dict[str, Any]:
    """The fields a :class:`TrackletRow`, its table row and its :class:`TrackletRecord`
    have in common, as stored (frame numbers as plain ints)."""
    return {
        "key": source.key,
        "identity_label": source.identity_label,
        "thumbnail_path": source.thumbnail_path,
        "histology": source.histology,
        **{name: int(getattr(source, name)) for name in ("start_frame", "end_frame", "n_frames")},
    }


def tracklet_model(
    row: TrackletRow, procedure_id: int, encoded: tuple[bytes, int], encoder_version: str
) -> TrackletModel:
    """The row to insert for ``row``, its embedding already :func:`embedding_bytes`-encoded."""
    data, dim = encoded
    return TrackletModel(
        procedure_id=procedure_id,
        boxes_json=json.dumps(row.boxes, sort_keys=True),
        embedding=data,
        embedding_dim=dim,
        encoder_version=encoder_version,
        size_mm=None if row.size_mm is None else float(row.size_mm),
        **_shared_fields(row),
    )


def decode_embeddings(
    rows: Sequence[Any], encoder_version: str, dim: int | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(ids, vectors (n, D), D)`` of rows with ``id``, ``embedding`` and ``embedding_dim``.

    Raises:
        EncoderMismatchError: the rows (and ``dim``, when given) disagree on the dim.
    """
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
        vectors[i] = embedding_from_bytes(r.embedding, the_dim, int(r.id))
    return ids, vectors, the_dim


def procedure_record(model: ProcedureModel) -> ProcedureRecord:
    """The plain value of a procedure row."""
    return ProcedureRecord(
        id=int(model.id),
        uid=model.uid,
        dataset_id=model.dataset_id,
        source=model.source,
        encoder_version=model.encoder_version,
        n_tracklets=int(model.n_tracklets),
        created_at=model.created_at,
    )


def tracklet_record(model: TrackletModel, procedure_uid: str) -> TrackletRecord:
    """The plain value of a tracklet row (of the procedure ``procedure_uid``)."""
    return TrackletRecord(
        id=int(model.id),
        procedure_uid=procedure_uid,
        boxes=json.loads(model.boxes_json or "{}"),
        embedding=embedding_from_bytes(model.embedding, int(model.embedding_dim), int(model.id)),
        encoder_version=model.encoder_version,
        size_mm=model.size_mm,
        **_shared_fields(model),
    )

"""Polyp entities of stored procedures (docs/grouping.md): group each procedure's
tracklets with :func:`model.scoring.grouping.group` and keep the result in
``tracklet_entities`` (one row per tracklet, per encoder version since tracklets are).

Computed at indexing time (:func:`group_procedure`, called by the pipeline right
after a procedure's transaction), recomputed by ``polypindex index group``
(:func:`group_stored`), read by ``GET /procedures/{uid}/polyps``
(:func:`procedure_polyps`) and ``/search`` (:func:`indexer.store_entities.entity_ids`).

The same-polyp probability is the model's within-procedure one when the encoder
carries a calibration (:func:`model.scoring.reid.probability_matrix`: cosine, time gap,
frame overlap, box size ratio), merged by default at that context's ``same`` operating
point (:func:`model.scoring.grouping.calibrated_cut`); else ``sigmoid(cosine)``, cut at
the model's ``reid_threshold``. The rows say which.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from polypindex.indexer.store import Store
from polypindex.indexer.store_entities import (
    procedure_entity_rows,
    procedure_tracklet_ids,
    replace_entities,
)
from polypindex.indexer.tables import PredictionRow, TrackletRecord
from polypindex.model.scoring.calibration import Calibration
from polypindex.model.scoring.grouping import (
    DEFAULT_CUT,
    DEFAULT_METHOD,
    TrackletSpan,
    calibrated_cut,
    group,
)
from polypindex.model.scoring.pairs import TrackletFacts
from polypindex.model.scoring.reid import probability_matrix, reid_score

logger = logging.getLogger(__name__)

__all__ = [
    "Entity",
    "GroupingReport",
    "default_cut",
    "facts_of",
    "group_procedure",
    "group_records",
    "group_stored",
    "procedure_polyps",
    "record_probabilities",
    "reid_calibration",
    "span_of",
]


def reid_calibration(encoder: object) -> Calibration | None:
    """The encoder's fitted calibration (``OnnxEncoder.reid_calibration``), or ``None``
    for an encoder without one (older models, test stand-ins)."""
    calibration = getattr(encoder, "reid_calibration", None)
    return calibration if isinstance(calibration, Calibration) else None


def span_of(record: TrackletRecord) -> TrackletSpan:
    """The grouping view of a stored tracklet: its frame ids and its mean box (the
    stored boxes summary keeps only first/last/mean boxes), or its frame range when the
    summary has no frame ids. Without a box it gets one shared placeholder box, so it
    is never cannot-linked (nothing says its boxes differ)."""
    boxes = record.boxes or {}
    frames = boxes.get("frame_ids") or list(range(record.start_frame, record.end_frame + 1))
    mean = boxes.get("mean") or [0.0, 0.0, 1.0, 1.0]
    return TrackletSpan(record.id, np.asarray(frames, dtype=np.int64), np.asarray(mean, float))


def facts_of(record: TrackletRecord) -> TrackletFacts:
    """The pair facts of a stored tracklet (procedure, span, frame ids, mean box)."""
    return TrackletFacts.of_stored(
        record.procedure_uid, record.id, record.start_frame, record.end_frame, record.boxes
    )


def record_probabilities(
    records: Sequence[TrackletRecord], calibration: Calibration | None
) -> np.ndarray:
    """(N, N) same-polyp probabilities of one procedure's stored tracklets: the
    calibration's within-procedure ones, or ``sigmoid(cosine)`` without a calibration."""
    e = np.stack([r.embedding for r in records]).astype(np.float64)
    if calibration is None:
        return np.asarray(reid_score(np.clip(e @ e.T, -1.0, 1.0)), dtype=np.float64)
    return probability_matrix(e, [facts_of(r) for r in records], calibration)[0]


def group_records(
    records: Sequence[TrackletRecord],
    calibration: Calibration | None,
    method: str = DEFAULT_METHOD,
    cut: float = DEFAULT_CUT,
) -> dict[int, int]:
    """``{tracklet id: entity number}`` of one procedure's tracklets."""
    if not records:
        return {}
    ordered = sorted(records, key=lambda r: r.id)
    probs = record_probabilities(ordered, calibration)
    labels = group([span_of(r) for r in ordered], probs, method, cut)
    return {r.id: int(k) for r, k in zip(ordered, labels, strict=True)}


@dataclass(frozen=True)
class GroupingReport:
    """What :func:`group_procedure` wrote for one procedure."""

    uid: str
    encoder_version: str
    tracklets: int
    entities: int
    method: str
    cut: float
    calibrated: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _procedure_records(
    store: Store, uid: str, encoder_version: str | None
) -> tuple[int, str, list[TrackletRecord]]:
    procedure = store.get_procedure(uid, encoder_version)  # ProcedureNotFoundError
    ids = procedure_tracklet_ids(store, procedure.id)
    found = store.get_tracklets(ids)
    return procedure.id, procedure.encoder_version, [found[int(i)] for i in ids if int(i) in found]


def default_cut(calibration: Calibration | None, reid_threshold: float) -> float:
    """The probability cut when none is given: on a calibrated model
    :func:`model.scoring.grouping.calibrated_cut` (the within context's ``same`` point;
    :data:`model.scoring.grouping.DEFAULT_CUT` for a legacy calibration); the model's
    ``reid_threshold`` on ``sigmoid(cosine)`` (where 0.5 would mean any cosine above 0)."""
    return calibrated_cut(calibration) if calibration is not None else float(reid_threshold)


def group_procedure(
    store: Store,
    uid: str,
    encoder_version: str,
    calibration: Calibration | None,
    method: str = DEFAULT_METHOD,
    cut: float | None = None,
    reid_threshold: float = DEFAULT_CUT,
) -> GroupingReport:
    """(Re)compute and store the entities of one procedure's tracklets of one encoder
    version, replacing its previous rows in one transaction.

    Args:
        calibration: the model's calibration (``None``: ``sigmoid(cosine)``).
        method: see :data:`model.scoring.grouping.METHODS`.
        cut: the probability cut; default :func:`default_cut`.
        reid_threshold: the model's threshold on ``sigmoid(cosine)`` (the default cut
            of an uncalibrated model).

    Raises:
        ProcedureNotFoundError: no such procedure with this encoder version.
    """
    cut = default_cut(calibration, reid_threshold) if cut is None else float(cut)
    procedure_id, version, records = _procedure_records(store, uid, encoder_version)
    labels = group_records(records, calibration, method, cut)
    replace_entities(
        store,
        procedure_id,
        version,
        labels,
        method=method,
        cut=float(cut),
        calibrated=calibration is not None,
    )
    return GroupingReport(
        uid,
        version,
        len(labels),
        len(set(labels.values())),
        method,
        float(cut),
        calibration is not None,
    )


def group_stored(
    store: Store,
    encoder_version: str,
    calibration: Calibration | None,
    uids: Iterable[str] | None = None,
    method: str = DEFAULT_METHOD,
    cut: float | None = None,
    reid_threshold: float = DEFAULT_CUT,
) -> list[GroupingReport]:
    """:func:`group_procedure` for the given procedures (default: every procedure
    stored with ``encoder_version``), each in its own transaction."""
    wanted = [p.uid for p in store.list_procedures(encoder_version)] if uids is None else list(uids)
    return [
        group_procedure(store, uid, encoder_version, calibration, method, cut, reid_threshold)
        for uid in wanted
    ]


@dataclass
class Entity:
    """One polyp entity of a procedure, aggregated over its tracklets.

    Attributes:
        entity_id: its number within the procedure (0, 1, … by first frame).
        tracklet_ids: its tracklets, increasing.
        start_frame: first frame of its first tracklet.
        end_frame: last frame of its last tracklet.
        spans: ``[start_frame, end_frame]`` of each tracklet, in the order of ``tracklet_ids``.
        n_frames: frames over its tracklets.
        thumbnail_tracklet_id: the tracklet whose thumbnail represents it (the longest
            one with a thumbnail; ties: the lowest id), or ``None`` when none has one.
        predictions: per task, the prediction aggregated over its tracklets: the
            frame-weighted mean probability of the task's positive class, the label
            of the majority of its tracklets (ties: the label with more frames, then
            alphabetical), the number of tracklets predicted and the probe versions.
    """

    entity_id: int
    tracklet_ids: list[int]
    start_frame: int
    end_frame: int
    spans: list[list[int]]
    n_frames: int
    thumbnail_tracklet_id: int | None
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcedurePolyps:
    """The entities of one procedure (:func:`procedure_polyps`)."""

    uid: str
    encoder_version: str
    grouped: bool
    method: str | None
    cut: float | None
    calibrated: bool | None
    entities: list[Entity]
    ungrouped_tracklet_ids: list[int]


def _aggregate(
    records: Sequence[TrackletRecord], predictions: dict[int, dict[str, PredictionRow]]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    tasks = sorted({task for r in records for task in predictions.get(r.id, {})})
    for task in tasks:
        rows = [(r, predictions[r.id][task]) for r in records if task in predictions.get(r.id, {})]
        weights = np.asarray([max(r.n_frames, 1) for r, _ in rows], dtype=np.float64)
        probs = np.asarray([p.probability for _, p in rows], dtype=np.float64)
        mean = float(np.sum(weights * probs) / np.sum(weights))
        votes = Counter(p.label for _, p in rows)
        frames = Counter({p.label: 0 for _, p in rows})
        for r, p in rows:
            frames[p.label] += r.n_frames
        label = min(votes, key=lambda lab: (-votes[lab], -frames[lab], lab))
        out[task] = {
            "label": label,
            "probability": round(mean, 6),
            "n_tracklets": len(rows),
            "probe_versions": sorted({p.probe_version for _, p in rows}),
        }
    return out


def procedure_polyps(store: Store, uid: str, encoder_version: str | None = None) -> ProcedurePolyps:
    """The stored entities of a procedure (its newest encoder version unless given),
    with their tracklets, time spans, representative thumbnail and aggregated
    size/histology predictions. A procedure not grouped yet has no entities and lists
    its tracklets in ``ungrouped_tracklet_ids``.

    Raises:
        ProcedureNotFoundError: no such procedure.
    """
    procedure_id, version, records = _procedure_records(store, uid, encoder_version)
    rows = procedure_entity_rows(store, procedure_id)
    labels = {int(r.tracklet_id): int(r.entity) for r in rows}
    by_entity: dict[int, list[TrackletRecord]] = {}
    for rec in records:
        if rec.id in labels:
            by_entity.setdefault(labels[rec.id], []).append(rec)
    predictions = store.predictions_for(labels)
    entities = []
    for entity_id in sorted(by_entity):
        members = sorted(by_entity[entity_id], key=lambda r: r.id)
        with_thumb = [r for r in members if r.thumbnail_path]
        thumb = min(with_thumb, key=lambda r: (-r.n_frames, r.id)).id if with_thumb else None
        entities.append(
            Entity(
                entity_id=entity_id,
                tracklet_ids=[r.id for r in members],
                start_frame=min(r.start_frame for r in members),
                end_frame=max(r.end_frame for r in members),
                spans=[[r.start_frame, r.end_frame] for r in members],
                n_frames=sum(r.n_frames for r in members),
                thumbnail_tracklet_id=thumb,
                predictions=_aggregate(members, predictions),
            )
        )
    first = rows[0] if rows else None
    return ProcedurePolyps(
        uid=uid,
        encoder_version=version,
        grouped=bool(rows),
        method=first.method if first else None,
        cut=float(first.cut) if first else None,
        calibrated=bool(first.calibrated) if first else None,
        entities=entities,
        ungrouped_tracklet_ids=[r.id for r in records if r.id not in labels],
    )

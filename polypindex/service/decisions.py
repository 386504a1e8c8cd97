"""What ``POST /predict`` and ``POST /reid`` answer about query tracklets: the installed
probes' predictions for one (:func:`predict_tracklet`), and whether two show the same
polyp (:func:`reid_pair`). Each tracklet is embedded by :class:`service.backend.QueryEmbedder`.
"""

from __future__ import annotations

import numpy as np

from polypindex.indexer.grouping import reid_calibration
from polypindex.indexer.predictions import predict
from polypindex.indexer.tables import PredictionRow, TrackletRecord
from polypindex.model.scoring.pairs import TrackletFacts, pair_evidence
from polypindex.model.scoring.probe_quality import ProbeQuality
from polypindex.model.scoring.reid import decide
from polypindex.service.backend import EmbeddedInput, QueryEmbedder
from polypindex.service.resources import Probes
from polypindex.service.schemas import (
    Prediction,
    PredictRequest,
    PredictResponse,
    ReidRequest,
    ReidResponse,
)

__all__ = [
    "Qualities",
    "facts_of_record",
    "predict_tracklet",
    "prediction_of",
    "probe_qualities",
    "reid_pair",
]

# task -> (the installed probe's version, its quality against the setting)
Qualities = dict[str, tuple[str, ProbeQuality]]


def probe_qualities(probes: Probes, min_auroc: float) -> Qualities:
    """Each installed probe's version and :class:`ProbeQuality` against ``min_auroc``."""
    return {task: (p.version, p.quality(min_auroc)) for task, p in probes.installed.items()}


def prediction_of(row: PredictionRow, qualities: Qualities) -> Prediction:
    """A prediction as the API shows it: its ``decision`` is its label only when the
    probe that made it is installed and reliable (a stored prediction of a probe since
    replaced is judged unreliable: its quality is not known)."""
    installed = qualities.get(row.task)
    if installed is not None and installed[0] == row.probe_version:
        reliable, reason = installed[1].reliable, installed[1].reason
    else:
        reliable = False
        reason = (
            f"made by the {row.task} probe {row.probe_version}, which is not the one "
            f"installed: its quality is not known"
        )
    return Prediction(
        label=row.label,
        probability=row.probability,
        probe_version=row.probe_version,
        reliable=reliable,
        decision=row.label if reliable else None,
        quality_reason=reason,
    )


def facts_of_record(record: TrackletRecord | None) -> TrackletFacts | None:
    """What the store knows of a query tracklet given by id (procedure, span, boxes);
    ``None`` for one given as frames or an embedding (its context is ``unknown``)."""
    if record is None:
        return None
    return TrackletFacts.of_stored(
        record.procedure_uid, record.id, record.start_frame, record.end_frame, record.boxes
    )


def _facts(query: EmbeddedInput) -> TrackletFacts | None:
    return facts_of_record(query.record)


def predict_tracklet(body: PredictRequest, embed: QueryEmbedder, probes: Probes) -> PredictResponse:
    """Each requested task's prediction from its probe, the way indexing makes them.

    Raises:
        ProbeNotInstalledError: a requested task has no probe (503; before any decoding
            or embedding work).
        And what embedding the tracklet raises (:func:`service.backend.embed_input`).
    """
    chosen = [probes.require(task) for task in dict.fromkeys(body.tasks)]
    query = embed(body.tracklet, "body.tracklet")
    rows = predict(chosen, query.vector)
    qualities = probe_qualities(probes, embed.settings.min_probe_auroc)
    return PredictResponse(
        encoder_version=embed.encoder.version,
        tracklet_id=query.record.id if query.record is not None else None,
        predictions={row.task: prediction_of(row, qualities) for row in rows},
    )


def reid_pair(body: ReidRequest, embed: QueryEmbedder) -> ReidResponse:
    """The two tracklets' cosine similarity and the model's three-way decision
    (model.scoring.reid.decide): stored tracklets bring their procedure, span and boxes,
    so the pair's context is known; a tracklet given as frames or an embedding has no
    facts and the pair's context is ``unknown`` (``uncertain``, unless the embeddings
    are identical)."""
    a, b = embed(body.a, "body.a"), embed(body.b, "body.b")
    encoder = embed.encoder
    cosine = float(np.clip(np.dot(a.vector, b.vector), -1.0, 1.0))
    evidence = pair_evidence(cosine, _facts(a), _facts(b))
    decision = decide(evidence, reid_calibration(encoder))
    return ReidResponse(
        similarity=decision.similarity,
        probability=decision.probability,
        same_polyp=decision.same_polyp,
        answer=decision.answer,  # type: ignore[arg-type]
        context=decision.context,
        reason=decision.reason,
        estimable=decision.estimable,
        threshold=decision.same_threshold,
        different_threshold=decision.different_threshold,
        label=decision.label,
        calibrated=decision.calibrated,
        encoder_version=encoder.version,
    )

"""What ``POST /predict`` and ``POST /reid`` answer about query tracklets: the installed
probes' predictions for one (:func:`predict_tracklet`), and whether two show the same
polyp (:func:`reid_pair`). Each tracklet is embedded by :class:`service.backend.QueryEmbedder`.
"""

from __future__ import annotations

from dataclasses import asdict

from polypindex.indexer.predictions import predict
from polypindex.model.scoring.reid import decide
from polypindex.service.backend import QueryEmbedder
from polypindex.service.resources import Probes
from polypindex.service.schemas import (
    Prediction,
    PredictRequest,
    PredictResponse,
    ReidRequest,
    ReidResponse,
)

__all__ = ["predict_tracklet", "reid_pair"]


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
    return PredictResponse(
        encoder_version=embed.encoder.version,
        tracklet_id=query.record.id if query.record is not None else None,
        predictions={
            row.task: Prediction.model_validate(row, from_attributes=True) for row in rows
        },
    )


def reid_pair(body: ReidRequest, embed: QueryEmbedder) -> ReidResponse:
    """The two tracklets' cosine similarity and the model's same-polyp decision (its
    calibrated probability and threshold when it has a calibration)."""
    a, b = embed(body.a, "body.a"), embed(body.b, "body.b")
    encoder = embed.encoder
    calibration = getattr(encoder, "reid_calibration", None)  # absent on older encoders
    decision = decide(a.vector, b.vector, encoder.reid_threshold, calibration)
    # the response is the decision's fields (similarity, probability, same_polyp, threshold)
    return ReidResponse(**asdict(decision), encoder_version=encoder.version)

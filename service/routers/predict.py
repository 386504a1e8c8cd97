"""``POST /predict``: size and histology of one tracklet, from the installed probes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body

from polypindex.service import backend
from polypindex.service.deps import (
    EmbeddingSlotsDep,
    EncoderDep,
    OptionalStoreDep,
    ProbesDep,
    SettingsDep,
)
from polypindex.service.errors import error_responses
from polypindex.service.schemas import PREDICT_EXAMPLES, Prediction, PredictRequest, PredictResponse

router = APIRouter(tags=["predict"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Size and histology of a tracklet",
    description="The tracklet is an indexed tracklet id, frames or an embedding. Each "
    "requested task (`size`: diminutive ≤ 5 mm or not; `histology`: adenoma or not) is "
    "predicted by its probe from the tracklet's embedding, the same way indexing does; "
    "`probability` is the calibrated probability of the positive class. A task whose probe "
    "is not installed answers 503 `probe_not_installed` naming it.",
    responses=error_responses(404, 409, 422, 500, 503),
)
def predict(
    body: Annotated[PredictRequest, Body(openapi_examples=PREDICT_EXAMPLES)],
    settings: SettingsDep,
    slots: EmbeddingSlotsDep,
    encoder: EncoderDep,
    store: OptionalStoreDep,  # needed only for a tracklet given by id
    probes: ProbesDep,
) -> PredictResponse:
    tasks = list(dict.fromkeys(body.tasks))
    # Refuse before any decoding or embedding work when a probe is missing.
    chosen = [backend.require_probe(probes.installed, probes.problems, t) for t in tasks]
    query = backend.embed_input(body.tracklet, "body.tracklet", encoder, store, settings, slots)
    predictions = {}
    for probe in chosen:
        row = backend.predict(probe, query.vector)
        predictions[probe.task] = Prediction(
            label=row.label, probability=row.probability, probe_version=row.probe_version
        )
    return PredictResponse(
        encoder_version=encoder.version,
        tracklet_id=query.record.id if query.record is not None else None,
        predictions=predictions,
    )

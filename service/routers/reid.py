"""``POST /reid``: are two tracklets the same polyp?"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Body

from polypindex.service import backend
from polypindex.service.deps import EmbeddingSlotsDep, EncoderDep, OptionalStoreDep, SettingsDep
from polypindex.service.errors import error_responses
from polypindex.service.schemas import REID_EXAMPLES, ReidRequest, ReidResponse

router = APIRouter(tags=["reid"])


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@router.post(
    "/reid",
    response_model=ReidResponse,
    summary="Same polyp? (re-identification of two tracklets)",
    description="Each side is an indexed tracklet id, frames or an embedding. Returns the "
    "cosine similarity, `probability = sigmoid(similarity)` and `same_polyp = probability >= "
    "threshold`, the threshold stored with the model.",
    responses=error_responses(404, 409, 422, 500, 503),
)
def reid(
    body: Annotated[ReidRequest, Body(openapi_examples=REID_EXAMPLES)],
    settings: SettingsDep,
    slots: EmbeddingSlotsDep,
    encoder: EncoderDep,
    store: OptionalStoreDep,  # needed only for inputs given by id
) -> ReidResponse:
    a = backend.embed_input(body.a, "body.a", encoder, store, settings, slots)
    b = backend.embed_input(body.b, "body.b", encoder, store, settings, slots)
    similarity = float(min(1.0, max(-1.0, float(a.vector @ b.vector))))
    probability = sigmoid(similarity)
    threshold = float(encoder.reid_threshold)
    return ReidResponse(
        similarity=similarity,
        probability=probability,
        same_polyp=probability >= threshold,
        threshold=threshold,
        encoder_version=encoder.version,
    )

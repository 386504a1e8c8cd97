"""``POST /reid``: are two tracklets the same polyp?"""

from __future__ import annotations

from typing import Annotated

from fastapi import Body

from polypindex.service.decisions import reid_pair
from polypindex.service.deps import QueryEmbedderDep
from polypindex.service.errors import QUERY_ERRORS
from polypindex.service.routers.documented import documented_router
from polypindex.service.schemas import REID_EXAMPLES, ReidRequest, ReidResponse

router = documented_router("reid", responses=QUERY_ERRORS)


@router.post("/reid", summary="Same polyp? (re-identification of two tracklets)")
def reid(
    body: Annotated[ReidRequest, Body(openapi_examples=REID_EXAMPLES)],
    embed: QueryEmbedderDep,  # the store is needed only for inputs given by id
) -> ReidResponse:
    """Each side is an indexed tracklet id, frames or an embedding. Returns the cosine
    similarity, the same-polyp `probability` and `same_polyp = probability >= threshold`.
    A model with a fitted calibration (`calibrated: true`) gives its calibrated probability
    and decision threshold; one without gives `probability = sigmoid(similarity)` and the
    threshold stored with the model (`calibrated: false`).
    """
    return reid_pair(body, embed)

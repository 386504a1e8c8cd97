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
    similarity and the model's three-way `answer`: `same`, `different` or `uncertain`,
    decided by the calibration of the pair's `context` (`within` one procedure, `cross`
    procedures, or `unknown` for a side given as frames or an embedding). `same` and
    `different` are given only where held-out precision / NPV reached the target; otherwise
    the answer abstains and `reason` says why. `probability` is the calibrated P(same
    polyp) (1 for the same tracklet; null without a calibration or a known context);
    `same_polyp` is `answer == "same"`; `label` prints it without ambiguous rounding.
    """
    return reid_pair(body, embed)

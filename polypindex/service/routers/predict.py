"""``POST /predict``: size and histology of one tracklet, from the installed probes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Body

from polypindex.service.decisions import predict_tracklet
from polypindex.service.deps import ProbesDep, QueryEmbedderDep
from polypindex.service.errors import QUERY_ERRORS
from polypindex.service.routers.documented import documented_router
from polypindex.service.schemas import PREDICT_EXAMPLES, PredictRequest, PredictResponse

router = documented_router("predict", responses=QUERY_ERRORS)


@router.post("/predict", summary="Size and histology of a tracklet")
def predict(
    body: Annotated[PredictRequest, Body(openapi_examples=PREDICT_EXAMPLES)],
    embed: QueryEmbedderDep,  # the store is needed only for a tracklet given by id
    probes: ProbesDep,
) -> PredictResponse:
    """The tracklet is an indexed tracklet id, frames or an embedding. Each requested task
    (`size`: diminutive ≤ 5 mm or not; `histology`: adenoma or not) is predicted by its probe
    from the tracklet's embedding, the same way indexing does; `probability` is the calibrated
    probability of the positive class. A task whose probe is not installed answers 503
    `probe_not_installed` naming it.
    """
    return predict_tracklet(body, embed, probes)

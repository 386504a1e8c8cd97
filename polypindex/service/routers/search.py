"""``POST /search``: the indexed tracklets nearest to a query tracklet (or to several).

The endpoint is ``async`` and its dependencies only read ``app.state``, so a request
makes exactly one hop into the bounded worker pool (service/admission.py): everything
blocking (decoding and embedding frames, the store, FAISS) and the response's JSON run
in one :func:`run_in_threadpool` call of :func:`service.search.search_json`. The body
is serialised once, there, from the model :func:`service.search.run_search` built
(``response_model`` documents it; FastAPI does not validate and encode it again).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Body
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from polypindex.service.deps import IndexDep, ProbesDep, QueryEmbedderDep, StoreDep
from polypindex.service.errors import QUERY_ERRORS
from polypindex.service.routers.documented import documented_router
from polypindex.service.search import SearchQuery, search_json
from polypindex.service.search_schemas import SEARCH_EXAMPLES, SearchRequest, SearchResponse

router = documented_router("search", responses=QUERY_ERRORS)


@router.post(
    "/search",
    summary="Find the nearest indexed tracklets",
    operation_id="search",
    response_model=SearchResponse,
)
async def search(
    body: Annotated[SearchRequest, Body(openapi_examples=SEARCH_EXAMPLES)],
    embed: QueryEmbedderDep,
    store: StoreDep,
    index: IndexDep,
    probes: ProbesDep,
) -> Response:
    """The query is an indexed tracklet id, frames (base64 images + boxes) or an embedding;
    `queries` (instead of `query`) searches several at once, each answered in `batch`.
    Results are the top-`k` tracklets by cosine similarity, best first. A query by id never
    returns itself; `exclude_same_procedure` also leaves out the rest of its procedure;
    `procedure_uids` restricts the results to those procedures; `predicted_size` /
    `predicted_histology` to tracklets whose stored prediction has that label (503
    `probe_not_installed` when that probe is not installed). Each result carries its stored
    size and histology predictions, its polyp `entity_id` within its procedure and, for a
    calibrated model, `same_polyp_probability`.
    """
    query = SearchQuery.of(body, embed.settings.max_k)
    body_json = await run_in_threadpool(search_json, query, embed, store, index, probes)
    return Response(body_json, media_type="application/json")

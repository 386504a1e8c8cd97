"""``POST /search``: the indexed tracklets nearest to a query tracklet (or to several).

The endpoint is ``async`` and its dependencies only read ``app.state``, so a request
makes exactly one thread-pool hop: everything blocking (decoding and embedding frames,
the store, FAISS) runs in one :func:`run_in_threadpool` call. The hits' metadata and
predictions come from one query (:func:`polypindex.indexer.hits.hit_records`).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import Body
from starlette.concurrency import run_in_threadpool

from polypindex.indexer.grouping import reid_calibration
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import VectorIndex
from polypindex.service import backend
from polypindex.service.deps import IndexDep, Probes, ProbesDep, QueryEmbedderDep, StoreDep
from polypindex.service.errors import QUERY_ERRORS, field_error
from polypindex.service.routers.documented import documented_router
from polypindex.service.schemas import (
    SEARCH_EXAMPLES,
    Prediction,
    SearchBatchItem,
    SearchHit,
    SearchRequest,
    SearchResponse,
)

router = documented_router("search", responses=QUERY_ERRORS)


@router.post("/search", summary="Find the nearest indexed tracklets")
async def search(
    body: Annotated[SearchRequest, Body(openapi_examples=SEARCH_EXAMPLES)],
    embed: QueryEmbedderDep,
    store: StoreDep,
    index: IndexDep,
    probes: ProbesDep,
) -> SearchResponse:
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
    return await run_in_threadpool(_search, body, embed, store, index, probes)


def _search(
    body: SearchRequest,
    embed: backend.QueryEmbedder,
    store: Store,
    index: VectorIndex,
    probes: Probes,
) -> SearchResponse:
    max_k, encoder = embed.settings.max_k, embed.encoder
    if body.k > max_k:
        raise field_error(("body", "k"), f"k must be between 1 and {max_k}, got {body.k}")
    label_filters = [
        (task, label)
        for task, label in (("size", body.predicted_size), ("histology", body.predicted_histology))
        if label is not None
    ]
    installed, problems = probes.installed, probes.problems
    for task, _ in label_filters:
        backend.require_probe(installed, problems, task)
    backend.require_searchable(index, encoder)
    inputs = body.inputs()
    where = (
        ["body.query"]
        if body.query is not None
        else [f"body.queries.{i}" for i in range(len(inputs))]
    )
    queries = [embed(value, at) for value, at in zip(inputs, where, strict=True)]
    excludes: list[set[int]] = []
    for query in queries:
        own: set[int] = set()
        if query.record is not None:
            own.add(query.record.id)
            if body.exclude_same_procedure:
                own.update(backend.procedure_tracklet_ids(store, query.record.procedure_uid))
        excludes.append(own)
    allowed = (
        backend.tracklet_ids_of_procedures(store, body.procedure_uids)
        if body.procedure_uids is not None
        else None
    )
    for task, label in label_filters:
        predicted = backend.tracklet_ids_predicted(store, task, label, encoder.version)
        allowed = predicted if allowed is None else allowed & predicted
    found = backend.search_batch(
        index,
        np.stack([q.vector for q in queries]),
        body.k,
        excludes,
        shared_exclude={int(i) for i in body.exclude_tracklet_ids},
        allowed=allowed,
    )
    records = backend.hit_records(store, sorted({i for hits in found for i, _ in hits}))
    calibration = reid_calibration(encoder)
    per_query = [
        [
            SearchHit(
                tracklet_id=tid,
                score=score,
                procedure_uid=rec.procedure_uid,
                key=rec.key,
                start_frame=rec.start_frame,
                end_frame=rec.end_frame,
                n_frames=rec.n_frames,
                identity_label=rec.identity_label,
                predictions={
                    task: Prediction(
                        label=p.label, probability=p.probability, probe_version=p.probe_version
                    )
                    for task, p in rec.predictions.items()
                },
                entity_id=rec.entity_id,
                same_polyp_probability=None
                if calibration is None
                else float(calibration.probability(score)),
            )
            for tid, score in hits
            if (rec := records.get(tid)) is not None  # a row deleted since the index answered
        ]
        for hits in found
    ]
    if body.query is not None:
        return SearchResponse(encoder_version=encoder.version, results=per_query[0])
    return SearchResponse(
        encoder_version=encoder.version,
        results=[],
        batch=[SearchBatchItem(results=r) for r in per_query],
    )

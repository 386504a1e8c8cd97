"""``POST /search``: the indexed tracklets nearest to a query tracklet."""

from __future__ import annotations

from typing import Annotated

from fastapi import Body

from polypindex.service import backend
from polypindex.service.deps import IndexDep, ProbesDep, QueryEmbedderDep, StoreDep
from polypindex.service.errors import QUERY_ERRORS, field_error
from polypindex.service.routers.documented import documented_router
from polypindex.service.schemas import (
    SEARCH_EXAMPLES,
    Prediction,
    SearchHit,
    SearchRequest,
    SearchResponse,
)

router = documented_router("search", responses=QUERY_ERRORS)


@router.post("/search", summary="Find the nearest indexed tracklets")
def search(
    body: Annotated[SearchRequest, Body(openapi_examples=SEARCH_EXAMPLES)],
    embed: QueryEmbedderDep,
    store: StoreDep,
    index: IndexDep,
    probes: ProbesDep,
) -> SearchResponse:
    """The query is an indexed tracklet id, frames (base64 images + boxes) or an embedding.
    Results are the top-`k` tracklets by cosine similarity, best first. A query by id never
    returns itself; `exclude_same_procedure` also leaves out the rest of its procedure;
    `procedure_uids` restricts the results to those procedures; `predicted_size` /
    `predicted_histology` to tracklets whose stored prediction has that label (503
    `probe_not_installed` when that probe is not installed). Each result carries its stored
    size and histology predictions.
    """
    # Sync endpoint: FastAPI runs it in the thread pool (decoding, ONNX, FAISS are CPU-bound).
    max_k, encoder = embed.settings.max_k, embed.encoder
    if body.k > max_k:
        raise field_error(("body", "k"), f"k must be between 1 and {max_k}, got {body.k}")
    label_filters = [
        (task, label)
        for task, label in (("size", body.predicted_size), ("histology", body.predicted_histology))
        if label is not None
    ]
    for task, _ in label_filters:
        backend.require_probe(probes.installed, probes.problems, task)
    backend.require_searchable(index, encoder)
    query = embed(body.query, "body.query")
    exclude = {int(i) for i in body.exclude_tracklet_ids}
    if query.record is not None:
        exclude.add(query.record.id)
        if body.exclude_same_procedure:
            exclude.update(backend.procedure_tracklet_ids(store, query.record.procedure_uid))
    allowed = (
        backend.tracklet_ids_of_procedures(store, body.procedure_uids)
        if body.procedure_uids is not None
        else None
    )
    for task, label in label_filters:
        predicted = backend.tracklet_ids_predicted(store, task, label, encoder.version)
        allowed = predicted if allowed is None else allowed & predicted
    hits = backend.search(index, query.vector, body.k, exclude, allowed)
    records = backend.get_tracklets(store, [i for i, _ in hits])
    predictions = backend.predictions_for(store, [i for i, _ in hits])
    results = [
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
                for task, p in predictions.get(tid, {}).items()
            },
        )
        for tid, score in hits
        if (rec := records.get(tid)) is not None  # a row deleted since the index was loaded
    ]
    return SearchResponse(encoder_version=encoder.version, results=results)

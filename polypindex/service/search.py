"""What ``POST /search`` does (docs/search.md): the request as a :class:`SearchQuery`, and
:func:`run_search`, which answers it with the loaded store, index and probes.

The work goes in the order of its refusals: ``k`` over the settings' ``max_k`` (422,
when the query is made), a label filter whose probe is not installed (503), an empty
index (503), each query tracklet embedded (404 / 409 / 422 naming it), the procedure
filter (404 naming unknown UIDs); then one FAISS call for every query
(:func:`search_batch`) and the hits' stored facts and predictions in one query
(:func:`polypindex.indexer.hits.hit_records`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence, Set
from dataclasses import dataclass

import numpy as np

from polypindex.indexer.grouping import reid_calibration
from polypindex.indexer.hits import HitRecord, hit_records
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import VectorIndex
from polypindex.model.core.errors import IndexNotReadyError, ProcedureNotFoundError
from polypindex.model.scoring.calibration import Calibration
from polypindex.model.scoring.pairs import TrackletFacts, pair_evidence
from polypindex.model.scoring.reid import decide
from polypindex.service import metrics
from polypindex.service.backend import EmbeddedInput, QueryEmbedder
from polypindex.service.decisions import (
    Qualities,
    facts_of_record,
    prediction_of,
    probe_qualities,
)
from polypindex.service.errors import field_error
from polypindex.service.resources import Encoder, Probes, empty_index_problem
from polypindex.service.schemas import TrackletInput, predicted_labels
from polypindex.service.search_schemas import (
    HitDecision,
    SearchBatchItem,
    SearchHit,
    SearchRequest,
    SearchResponse,
)

__all__ = ["SearchQuery", "run_search", "search", "search_batch", "search_json"]

# The facts of a stored hit that a SearchHit carries as they are.
_STORED = ("procedure_uid", "key", "start_frame", "end_frame", "n_frames", "identity_label")


@dataclass(frozen=True)
class SearchQuery:
    """A search as it runs: the query tracklets, ``k`` and what the hits may not or must be.

    Attributes:
        inputs: the query tracklets, in order.
        where: each one's field path in the request, for messages (``body.queries.2``).
        batch: given as ``queries`` (answered in ``batch``, even for one).
        k: results wanted per query, within ``[1, max_k]``.
        exclude_same_procedure: a query by id returns nothing of its own procedure.
        exclude_tracklet_ids: ids no query returns.
        procedure_uids: when given, only tracklets of these procedures.
        labels: ``(task, label)`` pairs the hits' stored predictions must all have.
    """

    inputs: tuple[TrackletInput, ...]
    where: tuple[str, ...]
    batch: bool
    k: int
    exclude_same_procedure: bool = False
    exclude_tracklet_ids: frozenset[int] = frozenset()
    procedure_uids: tuple[str, ...] | None = None
    labels: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, body: SearchRequest, max_k: int) -> SearchQuery:
        """The query ``body`` asks for; 422 ``validation_error`` on ``body.k`` when it is
        over ``max_k`` (the one check of that bound; the schema holds ``k >= 1``)."""
        if body.k > max_k:
            raise field_error(("body", "k"), f"k must be between 1 and {max_k}, got {body.k}")
        inputs = tuple(body.inputs())
        batch = body.query is None
        return cls(
            inputs=inputs,
            where=tuple(f"body.queries.{i}" for i in range(len(inputs)))
            if batch
            else ("body.query",),
            batch=batch,
            k=body.k,
            exclude_same_procedure=body.exclude_same_procedure,
            exclude_tracklet_ids=frozenset(int(i) for i in body.exclude_tracklet_ids),
            procedure_uids=tuple(body.procedure_uids) if body.procedure_uids is not None else None,
            labels=predicted_labels(body.predicted_size, body.predicted_histology),
        )


def run_search(
    query: SearchQuery, embed: QueryEmbedder, store: Store, index: VectorIndex, probes: Probes
) -> SearchResponse:
    """The top-``k`` indexed tracklets of each query tracklet, best first, with their
    stored predictions, polyp entity and (for a calibrated model) same-polyp probability.

    Raises:
        ProbeNotInstalledError: a label filter's probe is not installed (503).
        IndexNotReadyError: the index holds no tracklets of the encoder (503).
        ProcedureNotFoundError: ``procedure_uids`` names unknown procedures (404).
        And what embedding a query tracklet raises (:func:`service.backend.embed_input`).
    """
    encoder = embed.encoder
    for task, _ in query.labels:
        probes.require(task)
    _require_searchable(index, encoder)
    embedded = [embed(value, at) for value, at in zip(query.inputs, query.where, strict=True)]
    excludes = [_own_exclusions(q, query.exclude_same_procedure, store) for q in embedded]
    allowed = _allowed(query, store, encoder.version)
    vectors = np.stack([q.vector for q in embedded])
    shared = set(query.exclude_tracklet_ids)
    found = search_batch(index, vectors, query.k, excludes, shared_exclude=shared, allowed=allowed)
    records = hit_records(store.engine, sorted({i for hits in found for i, _ in hits}))
    calibration = reid_calibration(encoder)
    qualities = probe_qualities(probes, embed.settings.min_probe_auroc)
    per_query = [
        [
            _hit(tid, score, rec, calibration, facts_of_record(q.record), qualities)
            for tid, score in hits
            if (rec := records.get(tid)) is not None  # a row deleted since the index answered
        ]
        for q, hits in zip(embedded, found, strict=True)
    ]
    if not query.batch:
        return SearchResponse(encoder_version=encoder.version, results=per_query[0])
    return SearchResponse(
        encoder_version=encoder.version,
        results=[],
        batch=[SearchBatchItem(results=r) for r in per_query],
    )


def search_json(
    query: SearchQuery, embed: QueryEmbedder, store: Store, index: VectorIndex, probes: Probes
) -> bytes:
    """:func:`run_search`'s answer as the response body: serialised once, from the model
    it built (validated as it was built: no second validation, no intermediate dict)."""
    return run_search(query, embed, store, index, probes).model_dump_json().encode()


def _require_searchable(index: VectorIndex, encoder: Encoder) -> None:
    """Raise IndexNotReadyError when the index is empty."""
    problem = empty_index_problem(index, encoder)
    if problem:
        raise IndexNotReadyError(problem)


def _own_exclusions(query: EmbeddedInput, same_procedure: bool, store: Store) -> set[int]:
    """What a query by id must not return: itself and, with ``same_procedure``, the rest of
    its procedure (nothing for a query by frames or embedding)."""
    own: set[int] = set()
    if query.record is not None:
        own.add(query.record.id)
        if same_procedure:
            own.update(store.tracklet_ids_for_procedure(query.record.procedure_uid))
    return own


def _allowed(query: SearchQuery, store: Store, encoder_version: str) -> set[int] | None:
    """The only ids the hits may have (the procedure and label filters together), or
    ``None`` when nothing is filtered."""
    allowed = (
        _tracklet_ids_of_procedures(store, query.procedure_uids)
        if query.procedure_uids is not None
        else None
    )
    for task, label in query.labels:
        predicted = store.tracklet_ids_with_prediction(task, label, encoder_version)
        allowed = predicted if allowed is None else allowed & predicted
    return allowed


def _tracklet_ids_of_procedures(store: Store, uids: Sequence[str]) -> set[int]:
    """The tracklet ids of these procedures; ProcedureNotFoundError (404) names unknown UIDs."""
    ids: set[int] = set()
    empty = []
    for uid in dict.fromkeys(uids):
        found = store.tracklet_ids_for_procedure(uid)
        if not found:
            empty.append(uid)
        ids.update(found)
    if empty:
        known = {p.uid for p in store.list_procedures()}
        unknown = [uid for uid in empty if uid not in known]
        if unknown:
            shown = ", ".join(map(repr, unknown[:10]))  # not all of up to 1000 echoed back
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ProcedureNotFoundError(f"no procedure with uid {shown}{more}")
    return ids


def _hit(
    tid: int,
    score: float,
    rec: HitRecord,
    calibration: Calibration | None,
    query: TrackletFacts | None,
    qualities: Qualities,
) -> SearchHit:
    """One hit with the decision on (query, hit): the hit's procedure and span are known
    (its boxes are not in the hit's stored facts, so a pair within one procedure is
    decided in the cosine-only context); a query given as frames or an embedding has no
    facts (context ``unknown``)."""
    facts = TrackletFacts.of_stored(rec.procedure_uid, tid, rec.start_frame, rec.end_frame, None)
    decision = decide(pair_evidence(score, query, facts), calibration)
    return SearchHit(
        tracklet_id=tid,
        score=score,
        **{name: getattr(rec, name) for name in _STORED},
        predictions={task: prediction_of(p, qualities) for task, p in rec.predictions.items()},
        entity_id=rec.entity_id,
        same_polyp_probability=decision.probability,
        decision=HitDecision(
            answer=decision.answer,  # type: ignore[arg-type]
            probability=decision.probability,
            context=decision.context,
            reason=decision.reason,
            estimable=decision.estimable,
            same_threshold=decision.same_threshold,
            different_threshold=decision.different_threshold,
            label=decision.label,
        ),
    )


def search(
    index: VectorIndex,
    query: np.ndarray,
    k: int,
    exclude: set[int],
    allowed: set[int] | None = None,
) -> list[tuple[int, float]]:
    """Top-``k`` ``(id, cosine)`` of one query, best first (see :func:`search_batch`)."""
    return search_batch(index, np.asarray(query)[None, :], k, [exclude], allowed=allowed)[0]


def search_batch(
    index: VectorIndex,
    queries: np.ndarray,
    k: int,
    excludes: Sequence[Set[int]],
    *,
    shared_exclude: Set[int] | None = None,
    allowed: set[int] | None = None,
) -> list[list[tuple[int, float]]]:
    """Top-``k`` ``(id, cosine)`` of each query, best first; the queries are searched
    together in one FAISS call.

    Args:
        index: the loaded index.
        queries: float32 ``(Q, D)``.
        k: results wanted per query.
        excludes: per query, ids it must not return (its own tracklet, its procedure).
        shared_exclude: ids no query returns (a FAISS id selector).
        allowed: when given, only these ids are returned (a FAISS id selector; as many
            as ``k`` of them when that many are indexed: no widening, no re-search).
    """
    if len(index) == 0 or len(queries) == 0:
        return [[] for _ in range(len(queries))]
    extra = max((len(e) for e in excludes), default=0)
    common = set(shared_exclude or ())
    if len(excludes) == 1:  # one query: its exclusions go into the selector too
        common |= excludes[0]
        extra = 0
    started = time.perf_counter()
    found = index.search(queries, k + extra, exclude_ids=common or None, allowed_ids=allowed)
    metrics.observe_index_search(time.perf_counter() - started)
    return [
        [(i, s) for i, s in hits if i not in own][:k]
        for hits, own in zip(found, excludes, strict=True)
    ]

"""The bodies of ``POST /search`` (pydantic v2): the request, its hits and the answer.

Its ``k`` has the schema's lower bound (1); the upper one, the settings' ``max_k``, is
checked once when the request becomes a :class:`~service.search.SearchQuery` (422
``validation_error`` like a schema check) and published by
:func:`service.limits.install_openapi`.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from polypindex.service.schemas import (
    EXAMPLE_PNG_B64,
    MAX_EXCLUDED_IDS,
    MAX_PROCEDURE_UIDS,
    HistologyLabel,
    Prediction,
    ProcedureUid,
    SizeLabel,
    TrackletId,
    TrackletInput,
    optional_list,
)

MAX_BATCH_QUERIES = 64
"""Most queries one ``POST /search`` may carry in ``queries``."""


_SET = {"not": {"type": "null"}}
ONE_OF_QUERIES: dict[str, Any] = {
    "anyOf": [
        {"required": ["query"], "properties": {"query": _SET}},
        {"required": ["queries"], "properties": {"queries": _SET}},
    ],
    "not": {"required": ["query", "queries"], "properties": {"query": _SET, "queries": _SET}},
}
"""JSON Schema: ``query`` or ``queries`` given (not null), never both."""


class SearchRequest(BaseModel):
    """``POST /search``: the nearest indexed tracklets of a query tracklet (``query``), or
    of several searched together (``queries``); exactly one of the two."""

    # exactly one of query / queries non-null, as the validator below says
    model_config = ConfigDict(extra="forbid", json_schema_extra={"allOf": [ONE_OF_QUERIES]})

    query: TrackletInput | None = Field(
        default=None, description="The query tracklet (a request has `query` or `queries`)."
    )
    queries: list[TrackletInput] | None = optional_list(
        MAX_BATCH_QUERIES,
        "Several query tracklets searched together (one FAISS call); the answer "
        "has one entry of `batch` per query, in order. The filters apply to every query.",
    )
    k: int = Field(
        default=10,
        ge=1,
        description="Results wanted (at most the service's `max_k`, 100 by default).",
    )
    exclude_same_procedure: StrictBool = Field(  # true or false, not 0 or "yes"
        default=False,
        description="For a query by `tracklet_id`: leave out every tracklet of its procedure.",
    )
    procedure_uids: list[ProcedureUid] | None = optional_list(
        MAX_PROCEDURE_UIDS,
        "Only return tracklets of these procedures (all of them when omitted).",
    )
    exclude_tracklet_ids: list[TrackletId] = Field(
        default_factory=list,
        max_length=MAX_EXCLUDED_IDS,
        description="Tracklet ids never returned.",
    )
    predicted_size: SizeLabel | None = Field(
        default=None,
        description="Only tracklets whose stored size prediction is this label (needs the "
        "size probe; tracklets indexed before it was installed have no prediction until "
        "`polypindex index predict`).",
    )
    predicted_histology: HistologyLabel | None = Field(
        default=None,
        description="Only tracklets whose stored histology prediction is this label (needs the "
        "histology probe).",
    )

    @model_validator(mode="after")
    def _one_of_query_or_queries(self) -> Self:
        if (self.query is None) == (self.queries is None):
            raise ValueError(
                "give exactly one of body.query (one tracklet) or body.queries (a list of them)"
            )
        return self

    def inputs(self) -> list[TrackletInput]:
        """The query tracklets, in order (one for `query`)."""
        return [self.query] if self.query is not None else list(self.queries or [])


class HitDecision(BaseModel):
    """The re-identification decision on (query, hit), as ``POST /reid`` gives it, so
    a client needs no ``/reid`` per hit."""

    answer: Literal["same", "different", "uncertain"] = Field(
        description="same / different / uncertain (see `reason`)."
    )
    probability: float | None = Field(
        description="The calibrated P(same polyp) in the pair's context; null when there "
        "is none (no calibration, or a query whose procedure is not known)."
    )
    context: str = Field(description="within, within_cosine, cross or unknown.")
    reason: str | None = Field(default=None, description="Why (always set for uncertain).")
    estimable: bool = Field(description="Whether the context's probability is an estimate.")
    same_threshold: float | None = Field(
        default=None, description="The context's same-polyp point; null where it has none."
    )
    different_threshold: float | None = Field(
        default=None,
        description="The context's different-polyp point; null where it has none.",
    )
    label: str = Field(description="The answer in words, numbers printed as they compare.")


class SearchHit(BaseModel):
    """One indexed tracklet found by a search."""

    tracklet_id: int
    score: float = Field(description="Cosine similarity to the query, in [-1, 1].")
    procedure_uid: str
    key: str = Field(description="The tracklet's key within its procedure.")
    start_frame: int
    end_frame: int
    n_frames: int
    identity_label: str | None = Field(
        description="Ground-truth identity when the indexed data was annotated, else null."
    )
    predictions: dict[str, Prediction] = Field(
        default_factory=dict,
        description="The stored size / histology predictions (by task); empty when no probe "
        "had predicted this tracklet.",
    )
    same_polyp_probability: float | None = Field(
        default=None,
        description="`decision.probability`: the calibrated P(same polyp as the query) in "
        "the pair's context; null when there is none.",
    )
    decision: HitDecision | None = Field(
        default=None,
        description="The re-identification decision on the query and this hit.",
    )
    entity_id: int | None = Field(
        default=None,
        description="The polyp entity of this tracklet within its procedure "
        "(`GET /procedures/{uid}/polyps`); null when the procedure has not been grouped.",
    )


class SearchResponse(BaseModel):
    """Results by decreasing score."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "encoder_version": "hmve-demo-3f2a9c1b",
                    "results": [
                        {
                            "tracklet_id": 57,
                            "score": 0.913,
                            "procedure_uid": "synth/test/seq_003",
                            "key": "seq_003/polyp_2/0",
                            "start_frame": 120,
                            "end_frame": 171,
                            "n_frames": 52,
                            "identity_label": "seq_003/polyp_2",
                            "predictions": {
                                "size": {
                                    "label": "diminutive",
                                    "probability": 0.81,
                                    "probe_version": "probe-size-1a2b3c4d5e6f",
                                }
                            },
                        }
                    ],
                }
            ]
        }
    )

    encoder_version: str
    results: list[SearchHit] = Field(
        description="The hits of `query`, best first (empty for a request with `queries`)."
    )
    batch: list[SearchBatchItem] | None = Field(
        default=None, description="For a request with `queries`: one entry per query, in order."
    )


class SearchBatchItem(BaseModel):
    """The hits of one query of a batch, best first."""

    results: list[SearchHit]


SEARCH_EXAMPLES: dict[str, dict[str, Any]] = {
    "by_id": {
        "summary": "Query by an indexed tracklet, other procedures only",
        "value": {"query": {"tracklet_id": 42}, "k": 5, "exclude_same_procedure": True},
    },
    "by_frames": {
        "summary": "Query by frames (base64 images + boxes)",
        "value": {
            "query": {"frames": [{"image_b64": EXAMPLE_PNG_B64, "bbox": [0, 0, 1, 1]}]},
            "k": 10,
        },
    },
    "by_embedding": {
        "summary": "Query by an embedding, in two procedures",
        "value": {
            "query": {"embedding": [0.12, -0.05, 0.31]},
            "k": 10,
            "procedure_uids": ["synth/test/seq_003", "synth/test/seq_004"],
            "exclude_tracklet_ids": [7],
        },
    },
    "diminutive_only": {
        "summary": "Only tracklets predicted diminutive, other procedures only",
        "value": {
            "query": {"tracklet_id": 42},
            "k": 5,
            "exclude_same_procedure": True,
            "predicted_size": "diminutive",
        },
    },
}

"""What is known about a pair of tracklets besides their cosine (docs/grouping.md#calibration).

The same-polyp probability depends on the pair's **context**: two tracklets of one
procedure are the same polyp far more often than two of different procedures, and
within a procedure the store knows more than the embeddings — how far apart in time
the tracklets are, whether they share frames, how their boxes compare. This module
turns two tracklets' stored facts (:class:`TrackletFacts`) into the evidence of the
pair (:class:`PairEvidence`) and, for fitting, every unordered pair of a set of
tracklets into a :class:`PairSet` split by procedure into a fitting half and an
operating-point half. numpy only (serving layer).

Pair features (:data:`FEATURES`, the order of :meth:`PairEvidence.features`):

- ``cosine``: the cosine similarity of the two embeddings, clipped to [-1, 1];
- ``log_gap``: ``log(1 + gap)``, ``gap`` = frames between the end of the earlier
  tracklet and the start of the later one (0 when their spans overlap);
- ``overlap``: shared frames / the shorter tracklet's frames (0 … 1);
- ``log_size_ratio``: ``|log(area_a / area_b)|`` of their mean boxes.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.data.tracklets import Tracklet

__all__ = [
    "CONTEXTS",
    "CROSS",
    "FEATURES",
    "IDENTICAL_COSINE",
    "UNKNOWN",
    "WITHIN",
    "PairEvidence",
    "PairSet",
    "TrackletFacts",
    "pair_evidence",
    "pair_set",
    "split_procedures",
]

FEATURES = ("cosine", "log_gap", "overlap", "log_size_ratio")
# contexts of a pair: the same procedure, two procedures, or not known
WITHIN = "within"
CROSS = "cross"
UNKNOWN = "unknown"
CONTEXTS = (WITHIN, CROSS)
# float32 embeddings of one vector give a self dot product of 1 - 6e-8; two embeddings
# at or above this cosine are identical (the same crops through the same model)
IDENTICAL_COSINE = 1.0 - 1e-6


@dataclass(frozen=True, eq=False)
class TrackletFacts:
    """What the store (or a dataset) knows about one tracklet, all optional.

    Attributes:
        procedure: the procedure (video) it belongs to.
        tracklet_id: its id (two facts with one id are the same tracklet).
        frame_ids: (n,) its frame ids, increasing.
        start_frame / end_frame: its span (from ``frame_ids`` when not given).
        box: its mean ``[x, y, w, h]`` box.
    """

    procedure: str | None = None
    tracklet_id: Hashable | None = None
    frame_ids: np.ndarray | None = None
    start_frame: int | None = None
    end_frame: int | None = None
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.frame_ids is not None:
            f = np.unique(np.asarray(self.frame_ids, dtype=np.int64).reshape(-1))
            object.__setattr__(self, "frame_ids", f if f.size else None)
        if self.frame_ids is not None:
            if self.start_frame is None:
                object.__setattr__(self, "start_frame", int(self.frame_ids[0]))
            if self.end_frame is None:
                object.__setattr__(self, "end_frame", int(self.frame_ids[-1]))
        if self.box is not None:
            box = tuple(float(v) for v in np.asarray(self.box, dtype=np.float64).reshape(-1))
            if len(box) != 4 or not all(math.isfinite(v) for v in box):
                raise InvalidInputError(f"a tracklet box must be 4 finite numbers, got {box}")
            object.__setattr__(self, "box", box if box[2] > 0 and box[3] > 0 else None)

    @classmethod
    def of_tracklet(cls, tracklet: Tracklet, tracklet_id: Hashable | None = None) -> TrackletFacts:
        """The facts of a dataset tracklet (its video is its procedure)."""
        boxes = np.asarray(tracklet.boxes, dtype=np.float64).reshape(-1, 4)
        return cls(
            procedure=str(tracklet.sequence_id),
            tracklet_id=tracklet.key if tracklet_id is None else tracklet_id,
            frame_ids=np.asarray(tracklet.frame_ids),
            box=tuple(boxes.mean(axis=0)) if len(boxes) else None,  # type: ignore[arg-type]
        )

    @classmethod
    def of_stored(
        cls,
        procedure: str | None,
        tracklet_id: Hashable | None,
        start_frame: int | None,
        end_frame: int | None,
        boxes: Mapping[str, Any] | None,
    ) -> TrackletFacts:
        """The facts of a stored tracklet: its boxes summary's ``frame_ids`` and
        ``mean`` box when present (older rows lack ``frame_ids``: the span is used)."""
        summary = boxes or {}
        frames = summary.get("frame_ids") or None
        mean = summary.get("mean") or None
        return cls(
            procedure=procedure,
            tracklet_id=tracklet_id,
            frame_ids=None if frames is None else np.asarray(frames, dtype=np.int64),
            start_frame=start_frame,
            end_frame=end_frame,
            box=None if mean is None else tuple(float(v) for v in mean),  # type: ignore[arg-type]
        )

    @property
    def n_frames(self) -> int | None:
        if self.frame_ids is not None:
            return int(self.frame_ids.size)
        if self.start_frame is None or self.end_frame is None:
            return None
        return int(self.end_frame) - int(self.start_frame) + 1


@dataclass(frozen=True)
class PairEvidence:
    """Everything the decision of one pair may use (docs/grouping.md#calibration).

    Attributes:
        similarity: the cosine similarity, clipped to [-1, 1].
        same_tracklet: both sides are one stored tracklet.
        same_procedure: ``True`` / ``False``, or ``None`` when a side's procedure is
            not known (frames or an embedding given directly).
        gap: frames between the two spans (0 when they overlap), or ``None``.
        overlap: shared frames / the shorter one's frames, or ``None``.
        size_ratio: ``|log(area_a / area_b)|`` of the mean boxes, or ``None``.
    """

    similarity: float
    same_tracklet: bool = False
    same_procedure: bool | None = None
    gap: float | None = None
    overlap: float | None = None
    size_ratio: float | None = None

    def __post_init__(self) -> None:
        s = float(self.similarity)
        if not math.isfinite(s):
            raise InvalidInputError(f"similarity must be finite, got {self.similarity}")
        object.__setattr__(self, "similarity", min(1.0, max(-1.0, s)))

    @property
    def context(self) -> str:
        """:data:`WITHIN`, :data:`CROSS` or :data:`UNKNOWN`."""
        if self.same_procedure is None:
            return UNKNOWN
        return WITHIN if self.same_procedure else CROSS

    @property
    def identical(self) -> bool:
        """The same tracklet, or embeddings that are identical (cosine ≥ 1 − 1e-6)."""
        return self.same_tracklet or self.similarity >= IDENTICAL_COSINE

    def feature(self, name: str) -> float | None:
        """One of :data:`FEATURES` (``None`` when not known)."""
        if name == "cosine":
            return self.similarity
        if name == "log_gap":
            return None if self.gap is None else math.log1p(max(0.0, float(self.gap)))
        if name == "overlap":
            return None if self.overlap is None else float(self.overlap)
        if name == "log_size_ratio":
            return None if self.size_ratio is None else float(self.size_ratio)
        raise InvalidInputError(f"unknown pair feature {name!r}; choose from {FEATURES}")

    def features(self, names: Sequence[str] = FEATURES) -> np.ndarray | None:
        """The named features as a (k,) float64 row, or ``None`` when one is not known."""
        values = [self.feature(n) for n in names]
        if any(v is None for v in values):
            return None
        return np.asarray(values, dtype=np.float64)


def _gap_overlap(a: TrackletFacts, b: TrackletFacts) -> tuple[float | None, float | None]:
    if None in (a.start_frame, a.end_frame, b.start_frame, b.end_frame):
        return None, None
    start = max(int(a.start_frame), int(b.start_frame))  # type: ignore[arg-type]
    end = min(int(a.end_frame), int(b.end_frame))  # type: ignore[arg-type]
    gap = float(max(0, start - end))
    if start > end:
        return gap, 0.0
    if a.frame_ids is not None and b.frame_ids is not None:
        shared = np.intersect1d(a.frame_ids, b.frame_ids, assume_unique=True).size
    else:
        shared = end - start + 1
    shorter = min(a.n_frames or 1, b.n_frames or 1)
    return gap, float(min(1.0, shared / max(shorter, 1)))


def _size_ratio(a: TrackletFacts, b: TrackletFacts) -> float | None:
    if a.box is None or b.box is None:
        return None
    return abs(math.log((a.box[2] * a.box[3]) / (b.box[2] * b.box[3])))


def pair_evidence(
    similarity: float, a: TrackletFacts | None = None, b: TrackletFacts | None = None
) -> PairEvidence:
    """The evidence of a pair from its cosine and (optionally) both sides' facts.

    ``same_procedure`` is known only when both sides name their procedure; the time
    and box features only for two tracklets of one procedure (across procedures the
    frame numbers of two videos are not comparable)."""
    if a is None or b is None:
        return PairEvidence(similarity)
    same_tracklet = a.tracklet_id is not None and a.tracklet_id == b.tracklet_id
    if a.procedure is None or b.procedure is None:
        return PairEvidence(similarity, same_tracklet=same_tracklet)
    if a.procedure != b.procedure:
        return PairEvidence(similarity, same_tracklet=False, same_procedure=False)
    gap, overlap = _gap_overlap(a, b)
    return PairEvidence(
        similarity,
        same_tracklet=same_tracklet,
        same_procedure=True,
        gap=gap,
        overlap=overlap,
        size_ratio=_size_ratio(a, b),
    )


@dataclass(frozen=True, eq=False)
class PairSet:
    """Every unordered pair of a set of tracklets, for fitting a calibration.

    Attributes:
        features: (P, 4) float64 :data:`FEATURES` (NaN where not known: the time and
            box features of pairs across procedures).
        same: (P,) bool, both tracklets show one polyp.
        within: (P,) bool, both tracklets belong to one procedure.
        half: (P,) int8, 0 = fitting half, 1 = operating-point half, -1 = a pair
            across the halves (used by neither).
        procedures: the procedures of each half, ``(fit, operating)``.
    """

    features: np.ndarray
    same: np.ndarray
    within: np.ndarray
    half: np.ndarray
    procedures: tuple[tuple[str, ...], tuple[str, ...]]

    def select(self, within: bool, half: int) -> tuple[np.ndarray, np.ndarray]:
        """``(features, same)`` of the pairs of one context and one half."""
        keep = (self.within == within) & (self.half == half)
        return self.features[keep], self.same[keep]


def split_procedures(pairs_per_procedure: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """Two halves of the procedures with about as many within-procedure pairs each:
    procedures by pair count (largest first, then name), each to the half with fewer
    pairs so far (the fitting half on ties). Deterministic."""
    halves: tuple[list[str], list[str]] = ([], [])
    load = [0, 0]
    for name in sorted(pairs_per_procedure, key=lambda p: (-pairs_per_procedure[p], p)):
        k = 0 if load[0] <= load[1] else 1
        halves[k].append(name)
        load[k] += pairs_per_procedure[name]
    return sorted(halves[0]), sorted(halves[1])


def pair_set(
    embeddings: np.ndarray, identities: Sequence[Hashable], facts: Sequence[TrackletFacts]
) -> PairSet:
    """The :class:`PairSet` of every unordered pair ``i < j`` of tracklets.

    Args:
        embeddings: (N, D) tracklet embeddings (rows L2-normalised here).
        identities: N polyp identities (compared as strings).
        facts: N tracklets' facts; each must name its procedure.

    Raises:
        InvalidInputError: mismatched lengths, or a tracklet without a procedure.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    ids = [str(i) for i in identities]
    n = len(ids)
    if e.ndim != 2 or e.shape[0] != n or len(facts) != n:
        raise InvalidInputError(
            f"need (N, D) embeddings, N identities and N facts, got {e.shape}, {n}, {len(facts)}"
        )
    if any(f.procedure is None for f in facts):
        raise InvalidInputError("every tracklet of a pair set needs its procedure")
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    procedure = [str(f.procedure) for f in facts]
    counts = {p: 0 for p in procedure}
    for p in procedure:
        counts[p] += 1
    fit, _ = split_procedures({p: c * (c - 1) // 2 for p, c in counts.items()})
    side = np.asarray([0 if p in set(fit) else 1 for p in procedure], dtype=np.int8)
    iu, ju = np.triu_indices(n, k=1)
    cos = np.clip(np.einsum("ij,ij->i", e[iu], e[ju]), -1.0, 1.0)
    features = np.full((iu.size, len(FEATURES)), np.nan)
    for k, (i, j) in enumerate(zip(iu.tolist(), ju.tolist(), strict=True)):
        ev = pair_evidence(float(cos[k]), facts[i], facts[j])
        features[k] = [np.nan if v is None else v for v in map(ev.feature, FEATURES)]
    labels = np.asarray(ids)
    return PairSet(
        features=features,
        same=labels[iu] == labels[ju],
        within=np.asarray(procedure)[iu] == np.asarray(procedure)[ju],
        half=np.where(side[iu] == side[ju], side[iu], -1).astype(np.int8),
        procedures=(tuple(fit), tuple(sorted(set(procedure) - set(fit)))),
    )

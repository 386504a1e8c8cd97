"""Polyps per procedure: cluster one procedure's tracklets into polyp entities
(docs/grouping.md).

Input: the tracklets' time spans and boxes, and the pairwise same-polyp
probabilities: on a calibrated model the within-procedure ones of the re-ID decision
(:func:`within_probabilities`, :func:`model.scoring.reid.probability_matrix`: cosine,
time gap, frame overlap, box size ratio), merged at the within context's ``same``
operating point by default (:func:`calibrated_cut`). Hard
constraint ("cannot-link"): two tracklets that share frames with different boxes
(mean IoU over the shared frames below :data:`SAME_BOX_IOU`) show two polyps at
once, so they are never in one entity, whatever the probabilities say.

Methods (all deterministic: ties broken by tracklet id):

- ``average``: constrained agglomerative clustering, average linkage: repeatedly
  merge the two entities with the highest mean pairwise probability while it is
  ``>= cut`` and no cannot-link pair lies between them;
- ``complete``: the same with complete linkage (the lowest pairwise probability);
- ``components``: constrained connected components of the graph of pairs with
  probability ``>= cut``, edges taken best first (Kruskal), an edge skipped when
  it would join two entities with a cannot-link between them (single linkage).

Baselines for the benchmark: :func:`one_per_tracklet` and :func:`time_gap_groups`
(chain tracklets whose gap in time is at most ``max_gap`` frames, no appearance).
numpy only (serving layer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.data.tracklets import box_iou_matrix
from polypindex.model.scoring.calibration import Calibration
from polypindex.model.scoring.pairs import WITHIN, TrackletFacts
from polypindex.model.scoring.reid import probability_matrix

__all__ = [
    "DEFAULT_CUT",
    "DEFAULT_METHOD",
    "METHODS",
    "SAME_BOX_IOU",
    "TrackletSpan",
    "calibrated_cut",
    "cannot_link_matrix",
    "entity_labels",
    "group",
    "one_per_tracklet",
    "time_gap_groups",
    "violations",
    "within_probabilities",
]

METHODS = ("average", "complete", "components")
DEFAULT_METHOD = "average"
# measured (docs/grouping.md#evaluation): on the demo data the cut chosen on validation
# was 0.22 ± 0.09 over 3 encoders (merge FP 0-3 % on test at 0.2)
DEFAULT_CUT = 0.2
# Two boxes on a shared frame are "the same box" at or above this IoU.
SAME_BOX_IOU = 0.5


@dataclass(frozen=True, eq=False)
class TrackletSpan:
    """One tracklet as grouping sees it.

    Attributes:
        id: the tracklet id (ties are broken by it; unique within the procedure).
        frame_ids: (n,) frame ids, increasing.
        boxes: (n, 4) xywh boxes, one per frame, or (1, 4) / (4,): one box (e.g. the
            mean) standing for every frame.
    """

    id: int
    frame_ids: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        f = np.asarray(self.frame_ids, dtype=np.int64).reshape(-1)
        b = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        if f.size == 0:
            raise InvalidInputError(f"tracklet {self.id}: no frames")
        if b.shape[0] not in (1, f.size):
            raise InvalidInputError(
                f"tracklet {self.id}: {b.shape[0]} boxes for {f.size} frames (need 1 or one per frame)"
            )
        object.__setattr__(self, "frame_ids", f)
        object.__setattr__(self, "boxes", b)

    @property
    def start(self) -> int:
        return int(self.frame_ids.min())

    @property
    def end(self) -> int:
        return int(self.frame_ids.max())

    def facts(self) -> TrackletFacts:
        """The pair facts of this tracklet (its frames and mean box; one procedure)."""
        box = self.boxes.mean(axis=0)
        return TrackletFacts(
            procedure="", tracklet_id=self.id, frame_ids=self.frame_ids, box=tuple(box)
        )  # type: ignore[arg-type]

    def boxes_at(self, frames: np.ndarray) -> np.ndarray:
        """The (len(frames), 4) boxes at these frames (which must be the tracklet's)."""
        if self.boxes.shape[0] == 1:
            return np.repeat(self.boxes, len(frames), axis=0)
        return self.boxes[np.searchsorted(self.frame_ids, frames)]


def calibrated_cut(calibration: Calibration) -> float:
    """The merge cut on a calibrated model's within-procedure probabilities: the within
    context's ``same`` operating point (merge where the decision says ``same``), 1.0
    when it has none (nothing merges but identical embeddings), and
    :data:`DEFAULT_CUT` for a legacy calibration (one pooled curve, no operating point)."""
    within = calibration.context(WITHIN)
    if calibration.legacy or within is None:
        return DEFAULT_CUT
    threshold = within.same.threshold
    return 1.0 if threshold is None or not within.estimable else float(threshold)


def within_probabilities(
    embeddings: np.ndarray, spans: Sequence[TrackletSpan], calibration: Calibration
) -> np.ndarray:
    """(N, N) within-procedure P(same polyp) of one procedure's tracklets (the
    re-ID decision's, :func:`model.scoring.reid.probability_matrix`)."""
    return probability_matrix(embeddings, [s.facts() for s in spans], calibration)[0]


def _cannot_link(a: TrackletSpan, b: TrackletSpan, same_box_iou: float) -> bool:
    if a.end < b.start or b.end < a.start:
        return False
    shared = np.intersect1d(a.frame_ids, b.frame_ids, assume_unique=False)
    if shared.size == 0:
        return False
    ba, bb = a.boxes_at(shared), b.boxes_at(shared)
    ious = np.diag(box_iou_matrix(ba, bb)) if shared.size < 64 else _paired_iou(ba, bb)
    return bool(float(np.mean(ious)) < same_box_iou)


def _paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x0 = np.maximum(a[:, 0], b[:, 0])
    y0 = np.maximum(a[:, 1], b[:, 1])
    x1 = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    y1 = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def cannot_link_matrix(
    spans: Sequence[TrackletSpan], same_box_iou: float = SAME_BOX_IOU
) -> np.ndarray:
    """(N, N) bool, symmetric: ``[i, j]`` iff tracklets i and j share at least one frame
    and their boxes on the shared frames have mean IoU below ``same_box_iou``."""
    n = len(spans)
    out = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(i + 1, n):
            if _cannot_link(spans[i], spans[j], same_box_iou):
                out[i, j] = out[j, i] = True
    return out


def _check(spans: Sequence[TrackletSpan], probabilities: np.ndarray) -> np.ndarray:
    ids = [s.id for s in spans]
    if len(set(ids)) != len(ids):
        raise InvalidInputError("tracklet ids must be unique within a procedure")
    p = np.asarray(probabilities, dtype=np.float64)
    n = len(spans)
    if p.shape != (n, n):
        raise InvalidInputError(f"probabilities must be ({n}, {n}), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise InvalidInputError("probabilities must be finite")
    return (p + p.T) / 2.0


def entity_labels(groups: Sequence[Sequence[int]], spans: Sequence[TrackletSpan]) -> np.ndarray:
    """(N,) entity number of each span from groups of positions: entities numbered
    0, 1, … by their first frame, then their smallest tracklet id."""
    order = sorted(
        groups, key=lambda g: (min(spans[i].start for i in g), min(spans[i].id for i in g))
    )
    labels = np.full(len(spans), -1, dtype=np.int64)
    for k, g in enumerate(order):
        labels[list(g)] = k
    if np.any(labels < 0):
        raise AssertionError("every tracklet must be in one group")
    return labels


def _agglomerative(
    p: np.ndarray, forbid: np.ndarray, ids: np.ndarray, cut: float, linkage: str
) -> list[list[int]]:
    """Constrained average/complete linkage on cluster-level matrices (O(N²) per merge)."""
    n = p.shape[0]
    link = p.copy()  # average: sums of pairwise probabilities; complete: minima
    np.fill_diagonal(link, 0.0)
    blocked = forbid.copy()
    size = np.ones(n)
    first = ids.astype(np.int64).copy()  # smallest tracklet id of each cluster
    active = np.ones(n, dtype=bool)
    members: list[list[int]] = [[i] for i in range(n)]
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    while True:
        score = link / np.outer(size, size) if linkage == "average" else link.copy()
        valid = upper & active[:, None] & active[None, :] & ~blocked
        score[~valid] = -np.inf
        best = float(score.max()) if n > 1 else -np.inf
        if not best >= cut:
            break
        ii, jj = np.nonzero(score == best)
        lo, hi = np.minimum(first[ii], first[jj]), np.maximum(first[ii], first[jj])
        k = int(np.lexsort((hi, lo))[0])
        a, b = int(ii[k]), int(jj[k])
        if linkage == "average":
            link[a, :] += link[b, :]
        else:
            link[a, :] = np.minimum(link[a, :], link[b, :])
        link[:, a] = link[a, :]
        link[a, a] = 0.0
        blocked[a, :] |= blocked[b, :]
        blocked[:, a] = blocked[a, :]
        size[a] += size[b]
        first[a] = min(first[a], first[b])
        members[a] += members[b]
        active[b] = False
    return [sorted(members[i]) for i in np.flatnonzero(active)]


def _components(p: np.ndarray, forbid: np.ndarray, ids: np.ndarray, cut: float) -> list[list[int]]:
    n = p.shape[0]
    parent = list(range(n))
    members = {i: {i} for i in range(n)}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    iu, ju = np.triu_indices(n, k=1)
    keep = p[iu, ju] >= cut
    iu, ju = iu[keep], ju[keep]
    lo, hi = np.minimum(ids[iu], ids[ju]), np.maximum(ids[iu], ids[ju])
    for e in np.lexsort((hi, lo, -p[iu, ju])):
        ra, rb = root(int(iu[e])), root(int(ju[e]))
        if ra == rb:
            continue
        a, b = sorted(members[ra]), sorted(members[rb])
        if forbid[np.ix_(a, b)].any():
            continue
        parent[rb] = ra
        members[ra] |= members.pop(rb)
    return [sorted(m) for m in members.values()]


def group(
    spans: Sequence[TrackletSpan],
    probabilities: np.ndarray,
    method: str = DEFAULT_METHOD,
    cut: float = DEFAULT_CUT,
    cannot_link: np.ndarray | None = None,
) -> np.ndarray:
    """Group one procedure's tracklets into polyp entities.

    Args:
        spans: the procedure's tracklets.
        probabilities: (N, N) pairwise P(same polyp) (symmetrised; the diagonal is ignored).
        method: one of :data:`METHODS`.
        cut: merge only at a linkage probability ``>= cut``.
        cannot_link: (N, N) bool pairs that are never grouped; default
            :func:`cannot_link_matrix` of ``spans``.

    Returns:
        (N,) int64 entity numbers (see :func:`entity_labels`); two cannot-link
        tracklets never share one.
    """
    if method not in METHODS:
        raise InvalidInputError(f"grouping method must be one of {METHODS}, got {method!r}")
    if not 0.0 <= float(cut) <= 1.0 + 1e-12:
        raise InvalidInputError(f"cut must be a probability in [0, 1], got {cut}")
    p = _check(spans, probabilities)
    n = len(spans)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    forbid = cannot_link_matrix(spans) if cannot_link is None else np.asarray(cannot_link, bool)
    if forbid.shape != (n, n):
        raise InvalidInputError(f"cannot_link must be ({n}, {n}), got {forbid.shape}")
    forbid = forbid | forbid.T
    ids = np.asarray([s.id for s in spans], dtype=np.int64)
    if method == "components":
        groups = _components(p, forbid, ids, float(cut))
    else:
        groups = _agglomerative(p, forbid, ids, float(cut), method)
    return entity_labels(groups, spans)


def one_per_tracklet(spans: Sequence[TrackletSpan]) -> np.ndarray:
    """Baseline: every tracklet its own entity."""
    return entity_labels([[i] for i in range(len(spans))], spans)


def time_gap_groups(
    spans: Sequence[TrackletSpan], max_gap: float, cannot_link: np.ndarray | None = None
) -> np.ndarray:
    """Baseline without appearance: in order of start frame (then id), a tracklet joins
    the entity of the latest-ending tracklet before it when the gap between them is at
    most ``max_gap`` frames and no cannot-link pair lies between it and that entity;
    otherwise it starts a new entity."""
    n = len(spans)
    forbid = cannot_link_matrix(spans) if cannot_link is None else np.asarray(cannot_link, bool)
    order = sorted(range(n), key=lambda i: (spans[i].start, spans[i].id))
    groups: list[list[int]] = []
    for i in order:
        target = None
        if groups:
            # the entity whose last tracklet ended latest (ties: the lowest id)
            last = max(
                range(len(groups)),
                key=lambda g: (
                    max(spans[j].end for j in groups[g]),
                    -min(spans[j].id for j in groups[g]),
                ),
            )
            gap = spans[i].start - max(spans[j].end for j in groups[last])
            if gap <= max_gap and not forbid[i, groups[last]].any():
                target = last
        if target is None:
            groups.append([i])
        else:
            groups[target].append(i)
    return entity_labels(groups, spans)


def violations(labels: np.ndarray, cannot_link: np.ndarray) -> int:
    """Cannot-link pairs placed in one entity (0 for every method here)."""
    lab = np.asarray(labels)
    same = lab[:, None] == lab[None, :]
    return int(np.count_nonzero(np.triu(same & np.asarray(cannot_link, bool), k=1)))

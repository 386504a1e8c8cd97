"""Read-only views of the store for the viewer (docs/viewer.md): procedure pages, a
procedure's tracklets on a timeline, one tracklet with its predictions, its stored
thumbnail, and a 2-D map of a sample of the index vectors.

Nothing here writes. Queries select only the columns they show (no embedding bytes
except for the map), so listing a procedure of thousands of tracklets stays cheap.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.indexer.store import Store
from polypindex.indexer.store_entities import entity_ids
from polypindex.indexer.store_views import (
    procedure_of_tracklet,
    procedure_page,
    procedure_uids,
    tracklet_summaries,
)
from polypindex.indexer.tables import PredictionRow, ProcedureRecord, TrackletSummary
from polypindex.model.core.errors import InvalidInputError, NotFoundError, ProcedureNotFoundError

MAP_METHODS = ("pca", "umap")


class ThumbnailNotFoundError(NotFoundError):
    """A tracklet has no readable thumbnail under the index folder."""


@dataclass(frozen=True)
class ProcedureFilter:
    """What :func:`list_procedures` keeps.

    Attributes:
        dataset_id: only procedures of this dataset.
        indexed_after / indexed_before: only procedures indexed in ``[after, before)``.
        predicted: ``(task, label)`` pairs: only procedures with at least one tracklet
            whose stored prediction of ``task`` is ``label`` (every pair must hold).
        encoder_version: only procedures embedded by this encoder version.
    """

    dataset_id: str | None = None
    indexed_after: datetime | None = None
    indexed_before: datetime | None = None
    predicted: tuple[tuple[str, str], ...] = ()
    encoder_version: str | None = None


@dataclass(frozen=True)
class ProcedurePage:
    """One page of procedures and how many match in all."""

    procedures: list[ProcedureRecord]
    total: int


def as_utc(value: datetime) -> datetime:
    """An aware UTC datetime; a naive one (as SQLite hands back) is taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _bound(value: datetime | None) -> datetime | None:
    """A filter's datetime in UTC (aware)."""
    if value is None:
        return None
    try:
        return as_utc(value)
    except OverflowError as exc:  # e.g. year 9999 at UTC-14:00
        raise InvalidInputError(f"date {value.isoformat()} is out of range in UTC") from exc


def list_procedures(store: Store, where: ProcedureFilter, limit: int, offset: int) -> ProcedurePage:
    """Procedures matching ``where``, ordered by UID then encoder version, one page."""
    rows, total = procedure_page(
        store,
        limit=limit,
        offset=offset,
        dataset_id=where.dataset_id,
        indexed_after=_bound(where.indexed_after),
        indexed_before=_bound(where.indexed_before),
        predicted=where.predicted,
        encoder_version=where.encoder_version,
    )
    return ProcedurePage(rows, total)


def procedure_tracklets(
    store: Store, uid: str, encoder_version: str | None = None
) -> tuple[ProcedureRecord, list[TrackletSummary]]:
    """A procedure (its newest generation, or that of ``encoder_version``) and its
    tracklets by start frame.

    Raises:
        ProcedureNotFoundError: no such procedure (of that encoder version).
    """
    procedure = store.get_procedure(uid, encoder_version)
    return procedure, tracklet_summaries(store, procedure.id)


def tracklet_procedure(store: Store, tracklet_id: int) -> ProcedureRecord:
    """The procedure row a tracklet belongs to (its source, dataset, encoder version)."""
    procedure = procedure_of_tracklet(store, tracklet_id)
    if procedure is None:
        raise ProcedureNotFoundError(f"tracklet {tracklet_id} has no procedure")
    return procedure


def inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` resolved, or ``None`` when it is absolute or leaves ``root``
    (``..``, a symlink out): a stored path never reaches outside its folder."""
    if not relative or "\x00" in relative:
        return None
    rel = Path(relative)
    if rel.is_absolute() or rel.drive:
        return None
    base = root.resolve()
    target = (base / rel).resolve()
    return target if target.is_relative_to(base) and target != base else None


def thumbnail_file(index_dir: Path, tracklet_id: int, thumbnail_path: str | None) -> Path:
    """The tracklet's thumbnail JPEG under ``index_dir``.

    Raises:
        ThumbnailNotFoundError: none was written, the stored path leaves the index
            folder, or the file is gone.
    """
    path = inside(Path(index_dir), thumbnail_path) if thumbnail_path else None
    if path is None or not path.is_file():
        reason = "none was written at indexing time" if not thumbnail_path else "it is missing"
        raise ThumbnailNotFoundError(f"tracklet {tracklet_id} has no thumbnail ({reason})")
    return path


# -- the 2-D map ------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexMap:
    """2-D coordinates of a sample of one encoder version's vectors."""

    encoder_version: str
    method: str
    total: int
    ids: np.ndarray  # int64 (n,)
    xy: np.ndarray  # float32 (n, 2), each axis scaled to [-1, 1]
    procedure_of: dict[int, str]
    predictions: dict[int, dict[str, PredictionRow]]
    entities: dict[int, int]  # tracklet id -> polyp entity within its procedure (when grouped)


def umap_available() -> bool:
    """Whether the optional ``umap-learn`` package is installed."""
    from importlib.util import find_spec

    return find_spec("umap") is not None


def sample_ids(ids: np.ndarray, cap: int) -> np.ndarray:
    """At most ``cap`` of ``ids``, evenly spread (deterministic), increasing."""
    if len(ids) <= cap:
        return ids
    picks = np.linspace(0, len(ids) - 1, num=cap).round().astype(np.int64)
    return ids[np.unique(picks)]


def pca_2d(vectors: np.ndarray, iterations: int = 100) -> np.ndarray:
    """The first two principal components, by subspace iteration on the centred data
    (matrix products only: a full SVD takes seconds on a CPU shared with other work, this
    tens of milliseconds), axes ordered by variance (Rayleigh-Ritz) and sign-fixed so the
    largest loading of each is positive (stable from run to run)."""
    x = np.asarray(vectors, dtype=np.float64)
    out = np.zeros((len(x), 2), dtype=np.float32)
    if len(x) < 2 or x.ndim != 2 or x.shape[1] == 0:
        return out
    x = x - x.mean(axis=0, keepdims=True)
    k = min(2, x.shape[1])
    basis = np.random.default_rng(0).standard_normal((x.shape[1], k))
    for _ in range(iterations):
        basis, _ = np.linalg.qr(x.T @ (x @ basis))
    projected = x @ basis
    _, rotation = np.linalg.eigh(projected.T @ projected)  # ascending
    basis = basis @ rotation[:, ::-1]
    signs = np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(k)])
    basis *= np.where(signs == 0, 1.0, signs)[None, :]
    out[:, :k] = x @ basis
    return out


def _umap_2d(vectors: np.ndarray) -> np.ndarray:
    import umap  # the optional extra

    n_neighbors = max(2, min(15, len(vectors) - 1))
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, metric="cosine", random_state=0)
    return np.asarray(reducer.fit_transform(vectors), dtype=np.float32)


def _scaled(xy: np.ndarray) -> np.ndarray:
    if len(xy) == 0:
        return xy.astype(np.float32)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1.0)
    return ((xy - lo) / span * 2.0 - 1.0).astype(np.float32)


_MAP_CACHE: dict[tuple[Any, ...], IndexMap] = {}
_MAP_LOCK = threading.Lock()


def index_map(store: Store, encoder_version: str, cap: int, method: str = "pca") -> IndexMap:
    """2-D coordinates of at most ``cap`` vectors of ``encoder_version`` (evenly sampled
    by id), with each point's procedure and stored predictions.

    ``method`` is ``pca`` (numpy) or ``umap`` (needs ``umap-learn``; fewer than 4 points
    fall back to PCA). Results are cached until the store's rows change.
    """
    # the store's state: rows are only ever added (new ids) or deleted
    fingerprint = (
        encoder_version,
        cap,
        method,
        store.count_tracklets(encoder_version),
        store.max_tracklet_id(),
    )
    with _MAP_LOCK:
        cached = _MAP_CACHE.get(fingerprint)
    if cached is not None:
        return cached
    all_ids = store.tracklet_ids(encoder_version)
    ids, vectors = store.embeddings_for_ids(sample_ids(all_ids, cap).tolist())
    use = method if method == "umap" and len(ids) >= 4 else "pca"
    xy = _umap_2d(vectors) if use == "umap" else pca_2d(vectors)
    records = procedure_uids(store, ids.tolist())
    result = IndexMap(
        encoder_version=encoder_version,
        method=use,
        total=len(all_ids),
        ids=ids,
        xy=_scaled(xy),
        procedure_of=records,
        predictions=store.predictions_for(ids.tolist()),
        entities=entity_ids(store, ids.tolist()),
    )
    with _MAP_LOCK:
        _MAP_CACHE.clear()  # one map kept: the newest
        _MAP_CACHE[fingerprint] = result
    return result

"""Index generations on disk, kept equal to the SQL store (docs/store.md).

Embeddings of different encoder versions never share an index: each encoder
version has its own folder, ``INDEX_ROOT/generations/<version>/``
(:func:`generation_dir`), holding one :class:`VectorIndex` snapshot.
:func:`open_or_rebuild` takes the index root and opens the generation of the
encoder it is given, then catches up from the store (:func:`sync_with_store`), so
the index always ends up holding exactly the store's ids of its encoder version;
a missing, unreadable or torn snapshot is rebuilt from the store
(:func:`build_from_store`). :func:`list_generations` says which exist,
:func:`describe_generations` whether each is in sync, and :func:`rebuild_generation`
is ``polypindex index rebuild``. An index whose backend cannot remove in place
(HNSW, IVF) is rebuilt from the store when rows were deleted.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import numpy as np

from polypindex.indexer.vectors import IndexPolicy, VectorIndex
from polypindex.indexer.vectors.index import recorded_settings
from polypindex.model.config import FragmentConfig, PreprocessConfig
from polypindex.model.errors import ConfigError, EncoderMismatchError, IndexNotReadyError

if TYPE_CHECKING:
    from polypindex.indexer.store import Store

logger = logging.getLogger(__name__)

GENERATIONS_DIR = "generations"
_SYNC_BATCH = 4096


class GenerationOptions(TypedDict, total=False):
    """How a generation's index is built, and what its sidecar records (all optional).

    Attributes:
        policy: kind thresholds, HNSW/IVF parameters and device (default
            :class:`IndexPolicy`'s, or the snapshot's where one is loaded).
        preprocess: the encoder's crop settings.
        fragment: the fragment settings used to embed tracklets.
    """

    policy: IndexPolicy | None
    preprocess: PreprocessConfig | None
    fragment: FragmentConfig | None


def _slug(text: str) -> str:
    """A folder name for an encoder version: readable, and unique by a hash suffix."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "encoder"
    if clean == text and len(text) <= 100:
        return text
    return f"{clean[:80]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def generation_dir(index_root: str | Path, encoder_version: str) -> Path:
    """The folder of the index generation of ``encoder_version`` under ``index_root``."""
    if not encoder_version:
        raise ConfigError("encoder_version must be a non-empty string")
    return Path(index_root) / GENERATIONS_DIR / _slug(encoder_version)


def list_generations(index_root: str | Path) -> list[dict[str, Any]]:
    """The snapshots under ``index_root``: each sidecar plus its ``"directory"``, by encoder version."""
    base = Path(index_root) / GENERATIONS_DIR
    out = []
    if base.is_dir():
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            infos = VectorIndex.read_infos(folder)
            if infos is not None:
                out.append({**infos, "directory": str(folder)})
    return sorted(out, key=lambda i: str(i.get("encoder_version")))


def check_encoder_has_embeddings(store: Store, encoder_version: str) -> None:
    """Raise EncoderMismatchError when the store holds embeddings, but none of ``encoder_version``.

    What a service calls before serving: its encoder must match the indexed data.
    """
    if store.count_tracklets(encoder_version) > 0:
        return
    others = store.encoder_versions()
    if others:
        raise EncoderMismatchError(
            f"the store holds embeddings of encoder version(s) {others} but none of "
            f"{encoder_version!r}: serve with one of those encoders, or index the procedures "
            f"with this one (a new index generation)"
        )


def _check_store_dim(encoder_version: str, vectors: np.ndarray, dim: int) -> None:
    if vectors.shape[1] != dim:
        raise EncoderMismatchError(
            f"the store holds embeddings of encoder {encoder_version!r} with dim "
            f"{vectors.shape[1]}, but the index has dim {dim}"
        )


def build_from_store(
    store: Store,
    encoder_version: str,
    dim: int | None = None,
    **options: Unpack[GenerationOptions],
) -> VectorIndex:
    """A new index of every stored embedding of ``encoder_version`` (kind chosen by size).

    Args:
        dim: expected dimension; default the stored one (an empty store needs it).
        options: the policy and the settings the sidecar records.

    Raises:
        EncoderMismatchError: stored embeddings of another dim than ``dim``.
        IndexNotReadyError: no ``dim`` and nothing stored to take it from.
    """
    ids_parts: list[np.ndarray] = []
    vec_parts: list[np.ndarray] = []
    for ids, vectors in store.iter_embeddings(encoder_version, batch=_SYNC_BATCH):
        dim = int(vectors.shape[1]) if dim is None else dim
        _check_store_dim(encoder_version, vectors, dim)
        ids_parts.append(ids)
        vec_parts.append(vectors)
    if dim is None:
        raise IndexNotReadyError(
            f"the store holds no embeddings of encoder {encoder_version!r}: "
            f"nothing to build an index from"
        )
    index = VectorIndex(dim, encoder_version, kind=None, **options)
    if ids_parts:  # one build, of the kind the whole collection calls for
        index.add(np.concatenate(ids_parts), np.concatenate(vec_parts))
    return index


def sync_with_store(index: VectorIndex, store: Store) -> tuple[int, int]:
    """Make ``index`` hold exactly the store's ids of its encoder version.

    Catches up with rows after :attr:`VectorIndex.max_id`, removes ids the store no
    longer has (deleted or replaced procedures), and adds any stored id the index
    lacks (rows committed out of id order). An index that cannot remove in place
    (HNSW, IVF) with rows to remove is rebuilt from the store instead.

    Returns:
        ``(added, removed)`` counts.
    """
    version, dim = index.encoder_version, index.dim
    added = removed = 0
    with index.lock:
        for ids, vectors in store.iter_embeddings(version, after_id=index.max_id):
            _check_store_dim(version, vectors, dim)
            fresh = ~np.isin(ids, index.ids())
            index.add(ids[fresh], vectors[fresh])
            added += int(fresh.sum())
        stored = store.tracklet_ids(version)
        held = index.ids()
        gone = np.setdiff1d(held, stored, assume_unique=True) if held.size else held
        if gone.size and not index.supports_remove:
            before = set(held.tolist())
            index.adopt(build_from_store(store, version, dim, policy=index.policy))
            held = index.ids()
            after = set(held.tolist())
            removed, added = len(before - after), added + len(after - before)
        elif gone.size:
            removed = index.remove(gone)
            held = index.ids()
        missing = np.setdiff1d(stored, held, assume_unique=True)
        for start in range(0, len(missing), _SYNC_BATCH):
            ids, vectors = store.embeddings_for_ids(missing[start : start + _SYNC_BATCH].tolist())
            if ids.size:
                _check_store_dim(version, vectors, dim)
                index.add(ids, vectors)
                added += len(ids)
    if added or removed:
        logger.info(
            "index %s: %d vectors added, %d removed from the store", version, added, removed
        )
    return added, removed


def open_or_rebuild(
    index_root: str | Path,
    store: Store,
    encoder_version: str,
    dim: int,
    *,
    save: bool = False,
    **options: Unpack[GenerationOptions],
) -> VectorIndex:
    """The index generation of ``encoder_version``, equal to the store's ids of that version.

    Loads the snapshot in ``generation_dir(index_root, encoder_version)`` if it
    is readable and of the same dim (else starts empty, its kind chosen by size),
    then :func:`sync_with_store` (the catch-up after a crash or another writer).

    Args:
        index_root: the index folder (may not exist yet); generations live under it.
        store: the source of truth.
        encoder_version: the encoder whose embeddings the index must hold.
        dim: their dimension.
        save: write the snapshot back when syncing changed the index.
        options: ``policy`` (default: the snapshot's, else :class:`IndexPolicy`
            defaults), ``preprocess`` and ``fragment`` (recorded in the sidecar; taken
            from the snapshot if not given).
    """
    folder = generation_dir(index_root, encoder_version)
    index: VectorIndex | None = None
    infos = VectorIndex.read_infos(folder)
    if infos is None:
        logger.info("no index snapshot in %s: building from the store", folder)
    elif infos.get("encoder_version") != encoder_version or infos.get("dim") != dim:
        logger.warning(
            "index snapshot in %s is for encoder %r (dim %s), not %r (dim %s): rebuilding from the store",
            folder,
            infos.get("encoder_version"),
            infos.get("dim"),
            encoder_version,
            dim,
        )
    else:
        try:
            index = VectorIndex.load(folder, encoder_version, policy=options.get("policy"))
        except IndexNotReadyError as exc:
            logger.warning("%s: rebuilding from the store", exc)
    if index is None:
        index = build_from_store(store, encoder_version, dim, **options)
        index.directory = folder
        if save:
            index.save(folder)
        return index
    index.preprocess = options.get("preprocess") or index.preprocess
    index.fragment = options.get("fragment") or index.fragment
    added, removed = sync_with_store(index, store)
    if save and (added or removed):
        index.save(folder)
    return index


def rebuild_generation(
    index_root: str | Path,
    store: Store,
    encoder_version: str,
    *,
    dim: int | None = None,
    **options: Unpack[GenerationOptions],
) -> VectorIndex:
    """Rebuild the generation of ``encoder_version`` from the store and save it atomically.

    What ``polypindex index rebuild`` runs; the policy and the crop/fragment settings
    are kept from the old snapshot when not given.
    """
    folder = generation_dir(index_root, encoder_version)
    policy, preprocess, fragment = recorded_settings(VectorIndex.read_infos(folder) or {})
    index = build_from_store(
        store,
        encoder_version,
        dim,
        policy=options.get("policy") or policy,
        preprocess=options.get("preprocess") or preprocess,
        fragment=options.get("fragment") or fragment,
    )
    index.save(folder)
    return index


def describe_generations(index_root: str | Path, store: Store) -> list[dict[str, Any]]:
    """Every encoder version found in the store or on disk, with its state.

    Returns:
        One dict per encoder version: ``encoder_version``, ``stored`` (tracklets in
        the store), ``snapshot`` (vectors in the saved index, ``None`` if none),
        ``kind``, ``max_row_id``, ``directory`` and ``in_sync`` (the snapshot holds
        as many vectors as the store and covers its highest id; a snapshot that is
        behind is caught up when opened).
    """
    on_disk = {str(i.get("encoder_version")): i for i in list_generations(index_root)}
    out = []
    for version in sorted(set(store.encoder_versions()) | set(on_disk)):
        infos = on_disk.get(version) or {}
        stored = store.count_tracklets(version)
        ids = store.tracklet_ids(version) if stored else np.zeros(0, dtype=np.int64)
        snapshot = int(infos["count"]) if infos else None
        out.append(
            {
                "encoder_version": version,
                "stored": stored,
                "snapshot": snapshot,
                "kind": infos.get("kind"),
                "max_row_id": infos.get("max_row_id"),
                "directory": str(generation_dir(index_root, version)),
                "in_sync": bool(
                    infos
                    and snapshot == stored
                    and int(infos.get("max_row_id") or 0) >= (int(ids[-1]) if ids.size else 0)
                ),
            }
        )
    return out

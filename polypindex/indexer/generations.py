"""Index generations on disk, kept equal to the SQL store (docs/store.md).

Embeddings of different encoder versions never share an index: each encoder
version has its own folder, ``INDEX_ROOT/generations/<version>/``
(:func:`generation_dir`), holding one :class:`VectorIndex` snapshot.
:func:`open_or_rebuild` takes the index root and opens the generation of the
encoder it is given, then catches up from the store (:func:`sync_with_store`), so
the index always ends up holding exactly the store's ids of its encoder version;
a missing, unreadable or torn snapshot is rebuilt from the store
(:func:`build_from_store`) and written back. A snapshot is only loaded when the
bytes of ``index.faiss`` match the checksum its sidecar records
(:mod:`polypindex.indexer.vectors.snapshot`). :func:`list_generations` says which exist,
:func:`describe_generations` whether each is in sync (verifying the file, not only
the sidecar), and :func:`rebuild_generation` is ``polypindex index rebuild``.
Removed rows become tombstones of the index (compacted later, never in a search).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, Unpack
from weakref import WeakKeyDictionary

import numpy as np

from polypindex.indexer.store_changes import ChangeLog
from polypindex.indexer.vectors import (
    INDEX_FILE,
    SIDECAR_FILE,
    IndexPolicy,
    VectorIndex,
    verify_snapshot,
)
from polypindex.indexer.vectors.index import recorded_settings
from polypindex.model.core.errors import ConfigError, EncoderMismatchError, IndexNotReadyError
from polypindex.model.data.config import FragmentConfig, PreprocessConfig

if TYPE_CHECKING:
    from polypindex.indexer.store import Store

logger = logging.getLogger(__name__)

GENERATIONS_DIR = "generations"
_SYNC_BATCH = 4096
_CHANGES_BATCH = 500
# the last store change each open index holds (docs/store.md#replicas)
_APPLIED: WeakKeyDictionary[VectorIndex, int] = WeakKeyDictionary()


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


class IndexSink(Protocol):
    """Where an indexing run puts the vectors of what it commits: a
    :class:`VectorIndex` it opened itself (the command line), or the serving index of
    the service it runs in (``service.upkeep.ServingSink``: no second copy is loaded)."""

    def remove(self, ids: Collection[int] | np.ndarray) -> int: ...

    def add(
        self, ids: np.ndarray, vectors: np.ndarray, encoder_version: str | None = None
    ) -> int: ...

    def save(self) -> object: ...

    def __len__(self) -> int: ...


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
    latest = ChangeLog(store).latest()  # before the rows: later changes are replayed
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
    _APPLIED[index] = latest
    return index


def applied_change(index: VectorIndex) -> int | None:
    """The number of the last store change (``indexer.store_changes``) ``index`` is known
    to hold, or ``None`` when it was not synced with the store in this process."""
    return _APPLIED.get(index)


def apply_changes(index: VectorIndex, store: Store) -> tuple[int, int] | None:
    """Apply to ``index`` the store's changes after :func:`applied_change` (of its encoder
    version, deletes of every version included), oldest first, in batches.

    Replaying a change the index already holds (an in-process write handed to it at
    once) is harmless: removals of absent ids are ignored, and only ids the store still
    holds are added, once. Returns ``(added, removed)``, or ``None`` when the index has
    no change number yet (then :func:`sync_with_store` gives it one).
    """
    seq = _APPLIED.get(index)
    if seq is None:
        return None
    log, added, removed = ChangeLog(store), 0, 0
    while changes := log.after(seq, index.encoder_version, limit=_CHANGES_BATCH):
        fresh: list[int] = []
        for change in changes:
            removed += index.remove(np.asarray(change.removed, dtype=np.int64))
            fresh += change.added
        for start in range(0, len(fresh), _SYNC_BATCH):
            ids, vectors = store.embeddings_for_ids(fresh[start : start + _SYNC_BATCH])
            if ids.size:
                _check_store_dim(index.encoder_version, vectors, index.dim)
                added += index.add(ids, vectors, skip_present=True)
        seq = _APPLIED[index] = changes[-1].seq
    return added, removed


def sync_with_store(index: VectorIndex, store: Store) -> tuple[int, int]:
    """Make ``index`` hold exactly the store's ids of its encoder version.

    Catches up with rows after :attr:`VectorIndex.max_id`, removes ids the store no
    longer has (deleted or replaced procedures: tombstones, compacted later), and adds
    any stored id the index lacks (rows committed out of id order). No lock is held
    while the store is read, so searches and other writers go on; the ids held are
    read *before* the store's, so a row a writer adds to the index meanwhile (always
    after its commit) is never taken for a deleted one.

    Returns:
        ``(added, removed)`` counts.
    """
    version, dim = index.encoder_version, index.dim
    added = removed = 0
    # read first: a change committed during this sync is applied again later (harmless)
    latest = ChangeLog(store).latest()
    for ids, vectors in store.iter_embeddings(version, after_id=index.max_id):
        _check_store_dim(version, vectors, dim)
        added += index.add(ids, vectors, skip_present=True)
    held = index.ids()
    stored = store.tracklet_ids(version)
    gone = np.setdiff1d(held, stored, assume_unique=True) if held.size else held
    if gone.size:
        removed = index.remove(gone)
    missing = np.setdiff1d(stored, held, assume_unique=True)
    for start in range(0, len(missing), _SYNC_BATCH):
        ids, vectors = store.embeddings_for_ids(missing[start : start + _SYNC_BATCH].tolist())
        if ids.size:
            _check_store_dim(version, vectors, dim)
            added += index.add(ids, vectors, skip_present=True)
    _APPLIED[index] = latest
    if added or removed:
        logger.info(
            "index %s: %d vectors added, %d removed from the store", version, added, removed
        )
    return added, removed


def catch_up(
    index: VectorIndex, store: Store, folder: Path, *, strict: bool = False
) -> tuple[int, int]:
    """:func:`sync_with_store` a loaded snapshot, then write what it caught up back to
    ``folder`` (so the next start does not redo it). A snapshot that cannot be written
    is logged and left (the next save writes it) unless ``strict``."""
    added, removed = sync_with_store(index, store)
    if added or removed:
        try:
            index.save(folder)
        except OSError as exc:
            if strict:
                raise
            logger.warning("cannot save the caught-up index in %s: %s", folder, exc)
    return added, removed


def load_generation(
    folder: Path, encoder_version: str, dim: int, policy: IndexPolicy | None = None
) -> tuple[VectorIndex | None, str | None]:
    """The snapshot in ``folder`` if it is whole and of this encoder and dim, else
    ``(None, why not)``; ``(None, None)`` when there is no snapshot at all."""
    infos = VectorIndex.read_infos(folder)
    if infos is None:
        if (folder / INDEX_FILE).exists():
            return None, f"{folder / SIDECAR_FILE} is missing or unreadable"
        return None, None
    if infos.get("encoder_version") != encoder_version or infos.get("dim") != dim:
        return None, (
            f"the snapshot in {folder} is for encoder {infos.get('encoder_version')!r} "
            f"(dim {infos.get('dim')}), not {encoder_version!r} (dim {dim})"
        )
    try:
        return VectorIndex.load(folder, encoder_version, policy=policy), None
    except IndexNotReadyError as exc:
        return None, str(exc)


def rebuild_into(
    folder: Path,
    store: Store,
    encoder_version: str,
    dim: int,
    problem: str | None,
    *,
    save: bool = False,
    **options: Unpack[GenerationOptions],
) -> VectorIndex:
    """Build the index of ``encoder_version`` from the store for ``folder`` and write it
    back there when its snapshot was missing or broken (``problem``; logged and kept in
    :attr:`VectorIndex.rebuilt_reason`), when the store holds rows, or when ``save``."""
    index = build_from_store(store, encoder_version, dim, **options)
    index.directory = folder
    if problem is None and len(index):
        problem = f"no index snapshot in {folder}"
    if problem is not None:
        logger.warning(
            "%s: rebuilt index %s from the store (%d vectors) and wrote it back",
            problem,
            encoder_version,
            len(index),
        )
        index.rebuilt_reason = problem
    if save or problem is not None:
        index.save(folder)
    return index


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

    Loads the snapshot in ``generation_dir(index_root, encoder_version)`` if its
    bytes match the checksum in its sidecar and it is of the same dim, then
    :func:`sync_with_store` (the catch-up after a crash or another writer). A
    snapshot that is missing (with the store holding rows), torn, corrupt or of
    another dim is rebuilt from the store, the reason logged and kept in
    :attr:`VectorIndex.rebuilt_reason`, and the rebuilt index written back atomically.

    Args:
        index_root: the index folder (may not exist yet); generations live under it.
        store: the source of truth.
        encoder_version: the encoder whose embeddings the index must hold.
        dim: their dimension.
        save: also write the snapshot back when syncing changed the index.
        options: ``policy`` (default: the snapshot's, else :class:`IndexPolicy`
            defaults), ``preprocess`` and ``fragment`` (recorded in the sidecar; taken
            from the snapshot if not given).
    """
    folder = generation_dir(index_root, encoder_version)
    index, problem = load_generation(folder, encoder_version, dim, options.get("policy"))
    if index is None:
        return rebuild_into(folder, store, encoder_version, dim, problem, save=save, **options)
    index.preprocess = options.get("preprocess") or index.preprocess
    index.fragment = options.get("fragment") or index.fragment
    catch_up(index, store, folder, strict=save)
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
        ``kind``, ``max_row_id``, ``directory``, ``file_problem`` (what is wrong with
        ``index.faiss``: missing, or bytes that differ from the checksum in the sidecar;
        ``None`` when it verifies) and ``in_sync`` (the file verifies, holds as many
        vectors as the store and covers its highest id; a snapshot that is behind is
        caught up when opened, a broken one rebuilt from the store).
    """
    on_disk = {str(i.get("encoder_version")): i for i in list_generations(index_root)}
    out = []
    for version in sorted(set(store.encoder_versions()) | set(on_disk)):
        infos = on_disk.get(version) or {}
        stored = store.count_tracklets(version)
        ids = store.tracklet_ids(version) if stored else np.zeros(0, dtype=np.int64)
        snapshot = int(infos["count"]) if infos else None
        folder = generation_dir(index_root, version)
        problem = verify_snapshot(folder) if infos else None
        out.append(
            {
                "encoder_version": version,
                "stored": stored,
                "snapshot": snapshot,
                "kind": infos.get("kind"),
                "max_row_id": infos.get("max_row_id"),
                "directory": str(folder),
                "file_problem": problem,
                "in_sync": bool(
                    infos
                    and problem is None
                    and snapshot == stored
                    and int(infos.get("max_row_id") or 0) >= (int(ids[-1]) if ids.size else 0)
                ),
            }
        )
    return out

"""What a vector-index backend is: the :class:`VectorBackend` protocol.

A backend stores vectors under int64 ids and answers inner-product top-``k``
queries; :class:`~polypindex.indexer.vectors.index.VectorIndex` builds everything
else on it (normalisation, validation, encoder versions, the kind switch as the
collection grows, the snapshot files). The backends get vectors already
L2-normalised and validated, ids unique and not yet held, and ``k`` at most their
size. A new backend is one module with a class satisfying this protocol plus one
line in :data:`polypindex.indexer.vectors.registry.BACKENDS`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from polypindex.indexer.vectors.policy import IndexPolicy


@runtime_checkable
class VectorBackend(Protocol):
    """Vectors under int64 ids, searched by inner product.

    What the index holds and queries; how one is made is :class:`BackendClass`.
    """

    policy: IndexPolicy
    """Read at search time too (a changed ``efSearch``/``nprobe`` applies at once)."""

    @property
    def dim(self) -> int:
        """The vector dimension ``D``."""
        ...

    @property
    def supports_remove(self) -> bool:
        """Whether :meth:`remove` works in place (else it rebuilds from the kept vectors)."""
        ...

    @property
    def needs_training(self) -> bool:
        """Whether the structure is fitted to the vectors it is built from: an empty one
        fits itself to its first :meth:`add`, and :meth:`remove` re-fits it."""
        ...

    def __len__(self) -> int: ...

    def ids(self) -> np.ndarray:
        """The ids held: int64 ``(N,)`` in insertion order."""
        ...

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """A copy of everything held: ``(ids (N,), vectors float32 (N, D))``, insertion order."""
        ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` (float32 ``(N, D)``) under new ``ids`` (int64 ``(N,)``)."""
        ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove ``ids`` (int64; absent ones ignored); returns how many were removed."""
        ...

    def search(
        self, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product: ``(scores float32 (Q, k), ids int64 (Q, k))`` by
        decreasing score, ``-1`` ids (any score) where fewer than ``k`` qualify; ids in
        ``exclude_ids`` are never returned."""
        ...

    def serialise(self) -> bytes | memoryview:
        """Everything held, as the bytes of the index file (``index.faiss``)."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts for the sidecar, health checks and the CLI: at least
        ``dim`` and ``count``; FAISS backends add ``metric``, ``nlist``, ``faiss_version``."""
        ...


class BackendClass(Protocol):
    """A backend class (what :data:`~polypindex.indexer.vectors.registry.BACKENDS` holds):
    ``Backend(dim, policy)`` is an empty backend, :meth:`build` one holding given
    vectors (what the index calls when it restructures), :meth:`load` a saved one."""

    def __call__(self, dim: int, policy: IndexPolicy) -> VectorBackend: ...

    def build(
        self, dim: int, policy: IndexPolicy, ids: np.ndarray, vectors: np.ndarray
    ) -> VectorBackend:
        """A backend holding ``vectors`` (float32 ``(N, D)``) under ``ids`` (int64 ``(N,)``)."""
        ...

    def load(self, data: bytes, policy: IndexPolicy) -> VectorBackend:
        """The backend :meth:`VectorBackend.serialise` wrote.

        Raises:
            IndexNotReadyError: ``data`` is not such a backend.
        """
        ...

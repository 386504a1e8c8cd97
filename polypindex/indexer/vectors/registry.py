"""Index kind name → backend class: the one place a kind name meets its code.

Adding a backend: a module with a class satisfying
:class:`~polypindex.indexer.vectors.base.VectorBackend`, and one line below. The
names the size policy picks automatically are in :mod:`polypindex.indexer.vectors.policy`;
any registered kind can be asked for explicitly (``VectorIndex(kind=...)``).
"""

from __future__ import annotations

from polypindex.indexer.vectors.base import BackendClass
from polypindex.indexer.vectors.exact import ExactBackend
from polypindex.indexer.vectors.hnsw import HnswBackend
from polypindex.indexer.vectors.ivf import IvfBackend
from polypindex.indexer.vectors.policy import EXACT, HNSW, IVF
from polypindex.model.core.errors import ConfigError

BACKENDS: dict[str, BackendClass] = {
    EXACT: ExactBackend,
    HNSW: HnswBackend,
    IVF: IvfBackend,
}


def backend_class(kind: str) -> BackendClass:
    """The backend of ``kind``; ConfigError for a kind that is not registered."""
    try:
        return BACKENDS[kind]
    except KeyError:
        raise ConfigError(f"unknown index kind {kind!r}; known kinds: {list(BACKENDS)}") from None

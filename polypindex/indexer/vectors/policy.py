"""How the structure of a vector index is chosen and tuned: :class:`IndexPolicy`.

The policy names the kinds it picks (:data:`EXACT`, :data:`HNSW`, :data:`IVF`); the
registry (:mod:`polypindex.indexer.vectors.registry`) maps each name to its backend.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from polypindex.model.core.errors import ConfigError

EXACT = "flat_ip"
"""Exact inner-product search (the default, and below the approximate threshold)."""
HNSW = "hnsw_ip"
"""HNSW graph, inner product (approximate; from :attr:`IndexPolicy.approximate_threshold`)."""
IVF = "ivf_ip"
"""Inverted file of flat lists (approximate; only from :attr:`IndexPolicy.ivf_threshold`)."""
DEVICES = ("auto", "cpu", "gpu")

_POSITIVE = (
    "approximate_threshold",
    "hnsw_m",
    "hnsw_ef_construction",
    "ivf_nprobe",
    "ivf_train_per_list",
)
# optional fields -> what they must be when set (for the error message)
_OPTIONAL = {
    "hnsw_ef_search": "None (by size) or a positive integer",
    "ivf_threshold": "None or a positive integer",
}


@dataclass(frozen=True)
class IndexPolicy:
    """How the index structure is chosen and tuned.

    Attributes:
        approximate_threshold: from this many vectors on, an automatically chosen
            index is HNSW (approximate); below it, exact ``flat_ip``.
        ivf_threshold: from this many vectors on, an automatically chosen index is
            IVF (approximate, fast to build) instead of HNSW; ``None`` (default):
            never (HNSW gave better recall per millisecond up to 10^6 vectors).
        hnsw_m: HNSW neighbours per node (memory ≈ ``4·D + 8·M`` bytes per vector).
        hnsw_ef_construction: HNSW build-time beam width.
        hnsw_ef_search: HNSW search-time beam width (raised to ``k`` when smaller);
            ``None`` (default): by collection size, see :meth:`ef_search_for`.
        ivf_nlist: IVF inverted lists; 0 = automatic, the power of two nearest to
            √N (at least 16, at most N) for the N vectors it is trained on.
        ivf_nprobe: IVF lists scanned per query.
        ivf_train_per_list: training sample size per list for the k-means quantizer.
        device: ``"auto"`` (GPU when faiss-gpu and a GPU are present), ``"cpu"`` or ``"gpu"``.
    """

    approximate_threshold: int = 100_000
    ivf_threshold: int | None = None
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int | None = None
    ivf_nlist: int = 0
    ivf_nprobe: int = 32
    ivf_train_per_list: int = 64
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in _POSITIVE:
            value = getattr(self, name)
            if not _is_positive_int(value):
                raise ConfigError(f"IndexPolicy.{name} must be a positive integer, got {value!r}")
        for name, allowed in _OPTIONAL.items():
            value = getattr(self, name)
            if value is not None and not _is_positive_int(value):
                raise ConfigError(f"IndexPolicy.{name} must be {allowed}, got {value!r}")
        if not isinstance(self.ivf_nlist, int) or self.ivf_nlist < 0:
            raise ConfigError(
                f"IndexPolicy.ivf_nlist must be 0 (automatic) or a positive integer, "
                f"got {self.ivf_nlist!r}"
            )
        if self.device not in DEVICES:
            raise ConfigError(f"IndexPolicy.device must be one of {DEVICES}, got {self.device!r}")

    def kind_for(self, n_vectors: int) -> str:
        """The kind an automatically managed index of ``n_vectors`` uses."""
        if self.ivf_threshold is not None and n_vectors >= self.ivf_threshold:
            return IVF
        return HNSW if n_vectors >= self.approximate_threshold else EXACT

    def ef_search_for(self, n_vectors: int) -> int:
        """HNSW ``efSearch`` for a collection of ``n_vectors`` (``hnsw_ef_search`` when set).

        By size, from ``benchmarks/index_search.py`` (recall@10 against exact search on
        clustered vectors): 256 below 250 000 vectors (recall 1.00 at 10^5), 1024 from
        there on (at 10^6: 256 → 0.91, 512 → 0.975, 1024 → 1.00). Larger collections
        were not measured.
        """
        if self.hnsw_ef_search is not None:
            return self.hnsw_ef_search
        return 256 if n_vectors < 250_000 else 1024

    def nlist_for(self, n_vectors: int) -> int:
        """IVF inverted lists for a quantizer trained on ``n_vectors`` vectors."""
        if self.ivf_nlist:
            return max(1, min(self.ivf_nlist, n_vectors))
        nearest = 2 ** round(math.log2(max(math.sqrt(max(n_vectors, 1)), 16.0)))
        return max(1, min(int(nearest), n_vectors))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IndexPolicy:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and value >= 1

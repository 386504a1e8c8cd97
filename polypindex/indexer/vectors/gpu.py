"""GPU placement: exact searches on a GPU copy when faiss-gpu and a GPU are present.

:func:`resolve_device` turns :attr:`IndexPolicy.device` into ``"cpu"`` or ``"gpu"``;
:func:`place` wraps a backend in :class:`GpuSearch` on a GPU. The CPU backend stays
the master copy that is changed and saved; the GPU copy is made on the first search
after a change.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from polypindex.indexer.vectors.base import VectorBackend
from polypindex.indexer.vectors.faiss_base import FaissBackend, faiss_module
from polypindex.indexer.vectors.policy import IndexPolicy
from polypindex.model.core.errors import ConfigError

faiss = faiss_module()


def gpu_available() -> bool:
    """Whether this FAISS build has GPU support and sees at least one GPU."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return bool(
        hasattr(faiss, "StandardGpuResources") and get_num_gpus is not None and get_num_gpus() > 0
    )


_GPU_RESOURCES: Any = None
_GPU_LOCK = threading.Lock()


def _gpu_resources() -> Any:
    """One ``StandardGpuResources`` per process (it reserves scratch GPU memory)."""
    global _GPU_RESOURCES
    with _GPU_LOCK:
        if _GPU_RESOURCES is None:
            _GPU_RESOURCES = faiss.StandardGpuResources()
        return _GPU_RESOURCES


def resolve_device(device: str) -> str:
    """``"cpu"`` or ``"gpu"`` for a policy's ``device`` (``"auto"``: GPU when available).

    Raises:
        ConfigError: ``"gpu"`` asked for where there is none.
    """
    if device == "gpu" and not gpu_available():
        raise ConfigError(
            "IndexPolicy.device='gpu' but this FAISS build has no GPU support or sees no GPU; "
            "install the 'gpu' extra (faiss-gpu) on a GPU machine, or use device='auto'"
        )
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    return device


class GpuSearch:
    """A FAISS backend whose searches without exclusions run on a GPU copy.

    Everything else goes to the wrapped CPU backend; a change drops the copy.
    """

    def __init__(self, inner: FaissBackend) -> None:
        self.inner = inner
        self._copy: Any = None

    @property
    def policy(self) -> IndexPolicy:
        return self.inner.policy

    @policy.setter
    def policy(self, policy: IndexPolicy) -> None:
        self.inner.policy = policy

    @property
    def dim(self) -> int:
        return self.inner.dim

    @property
    def supports_remove(self) -> bool:
        return self.inner.supports_remove

    @property
    def needs_training(self) -> bool:
        return self.inner.needs_training

    def __len__(self) -> int:
        return len(self.inner)

    def ids(self) -> np.ndarray:
        return self.inner.ids()

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.vectors()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.inner.add(ids, vectors)
        self._copy = None

    def remove(self, ids: np.ndarray) -> int:
        removed = self.inner.remove(ids)
        self._copy = None
        return removed

    def search(
        self, queries: np.ndarray, k: int, exclude_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """On the GPU copy; with exclusions on the CPU backend (its id selector). A search
        among allowed ids goes to the CPU backend itself (:func:`indexer.vectors.core.cpu_backend`)."""
        if exclude_ids is not None and len(exclude_ids):
            return self.inner.search(queries, k, exclude_ids)
        if self._copy is None:
            self._copy = faiss.index_cpu_to_gpu(_gpu_resources(), 0, self.inner.faiss_index)
        scores, labels = self._copy.search(queries, k)
        return scores, labels

    def serialise(self) -> memoryview:
        return self.inner.serialise()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()


def place(backend: VectorBackend, device: str) -> VectorBackend:
    """``backend`` as it searches on ``device``: wrapped in :class:`GpuSearch` on a GPU
    when it is a FAISS backend whose searches can run there, else as it is."""
    if device == "gpu" and isinstance(backend, FaissBackend) and backend.gpu_search:
        return GpuSearch(backend)
    return backend

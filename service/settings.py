"""The service's one settings object: the artefact layout plus the per-request limits.

:class:`Settings` extends :class:`polypindex.model.layout.Layout` (the one reader of
the ``POLYPINDEX_*`` environment, shared with the command line), so every path
defaults to a place under ``home`` (``<home>/models/demo/encoder.onnx``,
``<home>/index``) and setting ``POLYPINDEX_HOME`` alone is enough; each can still be
set on its own (``POLYPINDEX_MODEL_PATH``, ``POLYPINDEX_DATABASE_URL``,
``POLYPINDEX_INDEX_DIR``, ...), and so can the limits below (``POLYPINDEX_MAX_K``, ...).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from polypindex.model.layout import Layout


class Settings(Layout):
    """Where the service finds its artefacts (see :class:`Layout`), and its limits.

    Attributes:
        max_frames_per_request: most frames one tracklet query may carry.
        max_k: largest ``k`` accepted by ``POST /search``.
        max_image_bytes: largest encoded image accepted per frame, in bytes.
        max_concurrent_embeddings: requests decoding and embedding frames at the same
            time; more wait their turn (bounds memory: every frame of a request is
            decoded at once, and ONNX Runtime already uses all cores per call).
        index_refresh_seconds: how often, at most, a request checks the store for
            procedures indexed or deleted since the index was loaded (and then syncs
            the index with it); ``0`` checks on every request.
        data_roots: folders that ``POST /procedures`` inputs must lie in (default
            ``[<home>/data]``; ``POLYPINDEX_DATA_ROOTS`` as a JSON list, e.g.
            ``'["/data/coco", "/data/videos"]'``); an empty list refuses every input.
        run_jobs: run indexing jobs in this process (a background worker thread);
            ``False``: ``POST /procedures`` and ``/jobs`` answer 503.
    """

    max_frames_per_request: int = Field(default=256, ge=1)
    max_k: int = Field(default=100, ge=1)
    max_image_bytes: int = Field(default=8_000_000, ge=1)
    max_concurrent_embeddings: int = Field(default=2, ge=1)
    index_refresh_seconds: float = Field(default=10.0, ge=0)
    data_roots: list[Path] = Field(default_factory=lambda data: [Path(data["home"]) / "data"])
    run_jobs: bool = True

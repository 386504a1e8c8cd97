"""The service's one settings object (pydantic-settings, environment prefix ``POLYPINDEX_``).

Every path defaults to a place under ``home``, the same layout the command line
uses (``<home>/models/demo/encoder.onnx``, ``<home>/index``), so setting
``POLYPINDEX_HOME`` alone is enough; each can still be set on its own
(``POLYPINDEX_MODEL_PATH``, ``POLYPINDEX_DATABASE_URL``, ``POLYPINDEX_INDEX_DIR``, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = "var"


def _under_home(*parts: str) -> Any:
    """A default factory: a path under the (already validated) ``home``."""

    def factory(data: dict[str, Any]) -> Path:
        return Path(data["home"]).joinpath(*parts)

    return factory


class Settings(BaseSettings):
    """Where the service finds its artefacts, and the per-request limits.

    Attributes:
        home: the artefact folder (``POLYPINDEX_HOME``, default ``./var``), resolved.
        database_url: SQLAlchemy URL of the store (default SQLite ``<home>/index/polypindex.db``).
        index_dir: the FAISS index folder (default ``<home>/index``).
        model_path: the exported encoder ``.onnx`` (default ``<home>/models/demo/encoder.onnx``).
        probes_dir: folder of the size / histology probes (``size.npz``,
            ``histology.npz``); default ``probes/`` next to ``model_path``. A missing
            probe is not an error: its predictions are simply not served.
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

    model_config = SettingsConfigDict(env_prefix="POLYPINDEX_", frozen=True, extra="ignore")

    # Field order matters: the defaults after ``home`` are derived from it.
    home: Path = Field(default_factory=lambda: Path(DEFAULT_HOME))
    database_url: str = Field(
        default_factory=lambda data: f"sqlite:///{Path(data['home']) / 'index' / 'polypindex.db'}"
    )
    index_dir: Path = Field(default_factory=_under_home("index"))
    model_path: Path = Field(default_factory=_under_home("models", "demo", "encoder.onnx"))
    probes_dir: Path | None = None
    max_frames_per_request: int = Field(default=256, ge=1)
    max_k: int = Field(default=100, ge=1)
    max_image_bytes: int = Field(default=8_000_000, ge=1)
    max_concurrent_embeddings: int = Field(default=2, ge=1)
    index_refresh_seconds: float = Field(default=10.0, ge=0)
    data_roots: list[Path] = Field(default_factory=lambda data: [Path(data["home"]) / "data"])
    run_jobs: bool = True

    @property
    def probes_folder(self) -> Path:
        """Where the probes are read from (``probes_dir``, else next to the model)."""
        return self.probes_dir if self.probes_dir is not None else self.model_path.parent / "probes"

    @field_validator("home", mode="after")
    @classmethod
    def _resolve_home(cls, home: Path) -> Path:
        return home.expanduser().resolve()

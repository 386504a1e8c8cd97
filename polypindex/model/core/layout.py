"""Where PolypIndex keeps its artefacts: the one reader of the ``POLYPINDEX_*`` environment.

Everything generated (datasets, models, index, caches) lives under one git-ignored
folder, ``home`` (``POLYPINDEX_HOME``, default ``./var``). :class:`Layout` is the only
place that reads that variable and the other artefact locations
(``POLYPINDEX_DATABASE_URL``, ``POLYPINDEX_INDEX_DIR``, ``POLYPINDEX_MODEL_PATH``,
``POLYPINDEX_PROBES_DIR``); the command line, the demo build, the benchmarks and
training's default caches use it, and the service's settings
(:class:`polypindex.service.settings.Settings`) extend it with the request limits.

It lives in ``model/`` because that is the one layer every other layer may import.
Explicit values win over the environment, which wins over the defaults derived
from ``home``: a caller passes only what the user actually gave.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = "var"
ENV_PREFIX = "POLYPINDEX_"
# The load-time parity check's minimum cosine (model.runtime.parity; POLYPINDEX_PARITY_MIN_COSINE).
DEFAULT_PARITY_MIN_COSINE = 0.999


def under_home(*parts: str, as_list: bool = False) -> Any:
    """A default factory: a path under the (already validated) ``home`` (in a list of one
    with ``as_list``)."""

    def factory(data: dict[str, Any]) -> Path | list[Path]:
        path = Path(data["home"]).joinpath(*parts)
        return [path] if as_list else path

    return factory


class Layout(BaseSettings):
    """The artefact locations, from explicit values, else ``POLYPINDEX_*``, else ``home``.

    Attributes:
        home: the artefact folder (``POLYPINDEX_HOME``, default ``./var``), resolved.
        database_url: SQLAlchemy URL of the store (default SQLite ``<home>/index/polypindex.db``).
        index_dir: the FAISS index folder (default ``<home>/index``).
        model_path: the exported encoder ``.onnx`` (default ``<home>/models/demo/encoder.onnx``).
        probes_dir: folder of the size / histology probes (``size.npz``,
            ``histology.npz``); default ``probes/`` next to ``model_path``
            (:attr:`probes_folder`). A missing probe is not an error: its
            predictions are simply not made.
        runtime: the encoder runtime (``POLYPINDEX_RUNTIME``): ``auto`` (default:
            OpenVINO on CPUs with BF16 units when installed, else ONNX Runtime),
            ``onnxruntime`` or ``openvino`` (:func:`polypindex.model.runtime.loader.load_encoder`).
        precision: the encoder precision (``POLYPINDEX_PRECISION``): ``auto`` (default),
            ``fp32``, ``bf16`` (OpenVINO) or ``fp16`` (TensorRT). It is not part of the
            encoder version: a reduced precision serves the model's version once it has
            passed the load-time parity check, else the runtime falls back to FP32.
        parity_min_cosine: the minimum cosine between a runtime's embeddings of the
            fixed reference inputs and the model's reference embeddings
            (``POLYPINDEX_PARITY_MIN_COSINE``, default 0.999; :mod:`model.runtime.parity`).
        data_roots: folders that indexing inputs lie in (default ``[<home>/data]``;
            ``POLYPINDEX_DATA_ROOTS`` as a JSON list, e.g. ``'["/data/coco", "/data/videos"]'``).
            The service confines ``POST /procedures`` inputs to them (an empty list refuses
            every input); every indexing path stores a source relative to the root holding
            it, or to the home, so a moved home or root still finds it
            (docs/store.md#sources-and-a-movable-home).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # Field order matters: the defaults after ``home`` are derived from it.
    home: Path = Field(default_factory=lambda: Path(DEFAULT_HOME))
    database_url: str = Field(
        default_factory=lambda data: f"sqlite:///{Path(data['home']) / 'index' / 'polypindex.db'}"
    )
    index_dir: Path = Field(default_factory=under_home("index"))
    model_path: Path = Field(default_factory=under_home("models", "demo", "encoder.onnx"))
    probes_dir: Path | None = None
    runtime: Literal["auto", "onnxruntime", "openvino"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    parity_min_cosine: float = Field(default=DEFAULT_PARITY_MIN_COSINE, gt=0.0, le=1.0)
    data_roots: list[Path] = Field(default_factory=under_home("data", as_list=True))

    @field_validator("home", mode="after")
    @classmethod
    def _resolve_home(cls, home: Path) -> Path:
        return home.expanduser().resolve()

    @property
    def probes_folder(self) -> Path:
        """Where the probes are read from (``probes_dir``, else next to the model)."""
        return self.probes_dir if self.probes_dir is not None else self.model_path.parent / "probes"

    @property
    def data_dir(self) -> Path:
        """Datasets: ``<home>/data``."""
        return self.home / "data"

    @property
    def demo_data(self) -> Path:
        """The demo's synthetic dataset: ``<home>/data/synth``."""
        return self.data_dir / "synth"

    @property
    def demo_model_dir(self) -> Path:
        """Where the demo encoder is trained and exported: ``<home>/models/demo``."""
        return self.home / "models" / "demo"

    @property
    def crop_cache(self) -> Path:
        """Cached uint8 crops (training, probes, benchmarks): ``<home>/cache/crops``."""
        return self.home / "cache" / "crops"

    @property
    def engine_cache(self) -> Path:
        """TensorRT engines built by ONNX Runtime (on the volume): ``<home>/cache/tensorrt``."""
        return self.home / "cache" / "tensorrt"

    @property
    def probe_cache(self) -> Path:
        """Cached probe embeddings: ``<home>/cache/probe_embeddings``."""
        return self.home / "cache" / "probe_embeddings"

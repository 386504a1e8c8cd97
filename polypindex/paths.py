"""Where generated artefacts live: one git-ignored folder, ``var/`` in the checkout
by default, overridable with the ``POLYPINDEX_HOME`` environment variable."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """The artefact folders under one home directory."""

    home: Path

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def demo_data(self) -> Path:
        return self.data / "synth"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def demo_model_dir(self) -> Path:
        return self.models / "demo"

    @property
    def index_dir(self) -> Path:
        return self.home / "index"

    @property
    def database_url(self) -> str:
        """``$POLYPINDEX_DATABASE_URL`` when set, else SQLite under the index folder."""
        return (
            os.environ.get("POLYPINDEX_DATABASE_URL")
            or f"sqlite:///{self.index_dir / 'polypindex.db'}"
        )

    @property
    def crop_cache(self) -> Path:
        return self.home / "cache" / "crops"


def default_home() -> Path:
    return Path(os.environ.get("POLYPINDEX_HOME", "var")).resolve()


def layout(home: Path | None = None) -> Layout:
    return Layout(Path(home).resolve() if home else default_home())

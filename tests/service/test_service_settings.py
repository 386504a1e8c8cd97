"""Service settings: defaults derived from ``home``, the ``POLYPINDEX_`` environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from polypindex.model.core.layout import Layout
from polypindex.service.settings import Settings


def test_defaults_are_derived_from_home(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert s.home == tmp_path.resolve()
    assert s.index_dir == tmp_path / "index"
    assert s.database_url == f"sqlite:///{tmp_path / 'index' / 'polypindex.db'}"
    assert s.model_path == tmp_path / "models" / "demo" / "encoder.onnx"
    assert (s.max_frames_per_request, s.max_k, s.max_image_bytes) == (256, 100, 8_000_000)


def test_explicit_values_win(tmp_path: Path) -> None:
    s = Settings(
        home=tmp_path,
        model_path=tmp_path / "m.onnx",
        database_url="sqlite:///:memory:",
        index_dir=tmp_path / "idx",
    )
    assert (s.model_path, s.database_url, s.index_dir) == (
        tmp_path / "m.onnx",
        "sqlite:///:memory:",
        tmp_path / "idx",
    )


def test_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLYPINDEX_HOME", str(tmp_path))
    monkeypatch.setenv("POLYPINDEX_MAX_K", "7")
    s = Settings()
    assert s.home == tmp_path.resolve() and s.index_dir == tmp_path.resolve() / "index"
    assert s.max_k == 7


def test_default_home_is_var_resolved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("POLYPINDEX_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Settings().home == (tmp_path / "var").resolve()


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        Settings(max_k=0)


def test_settings_extend_the_one_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service and the command line read POLYPINDEX_* through the same Layout."""
    monkeypatch.setenv("POLYPINDEX_HOME", str(tmp_path))
    monkeypatch.setenv("POLYPINDEX_PROBES_DIR", str(tmp_path / "p"))
    monkeypatch.delenv("POLYPINDEX_MODEL_PATH", raising=False)
    layout, settings = Layout(), Settings()
    assert isinstance(settings, Layout)
    shared = ("home", "database_url", "index_dir", "model_path", "probes_dir")
    assert {f: getattr(settings, f) for f in shared} == {f: getattr(layout, f) for f in shared}
    assert layout.probes_folder == tmp_path / "p"
    assert Layout(probes_dir=None).probes_folder == layout.model_path.parent / "probes"
    home = tmp_path.resolve()
    assert (layout.demo_data, layout.demo_model_dir) == (
        home / "data" / "synth",
        home / "models" / "demo",
    )
    assert (layout.crop_cache, layout.probe_cache) == (
        home / "cache" / "crops",
        home / "cache" / "probe_embeddings",
    )

"""``polypindex db`` / ``index`` / ``delete`` (polypindex/cli/store.py) with a fake encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.indexing import (
    FakeEncoder,
    linear_probe,
    write_csv,
    write_frames,
    write_video,
)
from typer.testing import CliRunner

import polypindex.cli.store as cli_store
from polypindex.cli import app
from polypindex.indexer.generations import generation_dir
from polypindex.indexer.migrate import head_revision
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import VectorIndex
from polypindex.model.scoring.probe import probe_path

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("POLYPINDEX_DATABASE_URL", raising=False)
    monkeypatch.setattr(cli_store, "_load_encoder", lambda layout: FakeEncoder())
    return tmp_path / "home"


@pytest.mark.parametrize(
    "command",
    [["db"], ["db", "upgrade"], ["db", "current"], ["index"], ["index", "coco"]]
    + [["index", c] for c in ("video", "frames", "rebuild", "generations", "predict", "retire")]
    + [["delete"]],
    ids=" ".join,
)
def test_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output, result.output


def test_db_upgrade_then_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x' / 'db.sqlite'}"
    result = runner.invoke(app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    head = head_revision()
    assert f"(empty) -> {head}" in result.output
    result = runner.invoke(app, ["db", "current", "--database-url", url])
    assert json.loads(result.stdout) == {"current": head, "head": head, "up_to_date": True}


def test_index_video_frames_rebuild_generations_delete(home: Path, tmp_path: Path) -> None:
    video = write_video(tmp_path / "proc-a.mp4", 8)
    frames = write_frames(tmp_path / "proc-b", 8)
    csv = write_csv(tmp_path / "d.csv", 8)
    base = ["--home", str(home)]
    result = runner.invoke(
        app,
        [
            "index",
            "video",
            str(video),
            "--detections",
            str(csv),
            "--min-tracklet-length",
            "3",
            *base,
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["tracklets"] == 2
    result = runner.invoke(
        app,
        [
            "index",
            "frames",
            str(frames),
            "--detections",
            str(csv),
            "--uid",
            "B",
            "--min-tracklet-length",
            "3",
            *base,
        ],
    )
    assert result.exit_code == 0, result.output
    gens = json.loads(runner.invoke(app, ["index", "generations", *base]).stdout)
    assert [(g["encoder_version"], g["stored"], g["snapshot"], g["in_sync"]) for g in gens] == [
        ("fake-v1", 4, 4, True)
    ]
    result = runner.invoke(app, ["index", "rebuild", "--approximate-threshold", "2", *base])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["kind"] == "hnsw_ip"
    result = runner.invoke(app, ["index", "rebuild", "--ivf-threshold", "3", *base])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["kind"] == "ivf_ip"
    result = runner.invoke(app, ["delete", "proc-a", *base])
    assert result.exit_code == 0 and "2 tracklets removed" in result.output
    index = VectorIndex.load(generation_dir(home / "index", "fake-v1"))
    store = Store(f"sqlite:///{home / 'index' / 'polypindex.db'}")
    assert sorted(index.ids().tolist()) == store.tracklet_ids("fake-v1").tolist()
    assert len(index) == 2
    store.close()


def test_clear_errors_exit_1(home: Path, tmp_path: Path) -> None:
    base = ["--home", str(home)]
    result = runner.invoke(app, ["delete", "nope", *base])
    assert result.exit_code == 1 and "no procedure with uid 'nope'" in result.output
    (tmp_path / "bad.csv").write_text("frame,x,y\n1,2,3\n")
    write_frames(tmp_path / "f", 2)
    result = runner.invoke(
        app,
        ["index", "frames", str(tmp_path / "f"), "--detections", str(tmp_path / "bad.csv"), *base],
    )
    assert result.exit_code == 1 and "bad.csv" in result.output and "lacks column" in result.output
    # `polypindex index DATA` still means `index coco DATA`
    result = runner.invoke(app, ["index", str(tmp_path / "nodata"), *base])
    assert result.exit_code == 1 and "annotation file not found" in result.output


def test_index_with_probes_then_predict_again(home: Path, tmp_path: Path) -> None:
    frames = write_frames(tmp_path / "proc-b", 8)
    csv = write_csv(tmp_path / "d.csv", 8)
    probes = tmp_path / "probes"
    rng = np.random.default_rng(0)
    linear_probe("size", "fake-v1", rng.standard_normal(FakeEncoder.dim)).save(
        probe_path(probes, "size")
    )
    base = ["--home", str(home), "--probes", str(probes)]
    args = ["index", "frames", str(frames), "--detections", str(csv), "--min-tracklet-length", "3"]
    result = runner.invoke(app, [*args, *base])
    assert result.exit_code == 0, result.output
    store = Store(f"sqlite:///{home / 'index' / 'polypindex.db'}")
    assert store.count_predictions("fake-v1") == {"size": 2}
    # a histology probe installed later: `index predict` fills in every stored tracklet
    histology = linear_probe("histology", "fake-v1", rng.standard_normal(FakeEncoder.dim))
    histology.save(probe_path(probes, "histology"))
    result = runner.invoke(app, ["index", "predict", *base])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"size": 2, "histology": 2}
    assert store.count_predictions("fake-v1") == {"size": 2, "histology": 2}
    versions = {
        p["histology"].probe_version
        for p in store.predictions_for(store.tracklet_ids("fake-v1")).values()
    }
    assert versions == {histology.version}
    store.close()
    # a probe of another encoder is refused, naming it; no probe at all is a clear error
    linear_probe("size", "other-enc", rng.standard_normal(FakeEncoder.dim)).save(
        probe_path(probes, "size")
    )
    result = runner.invoke(app, ["index", "predict", *base])
    assert result.exit_code == 1 and "other-enc" in result.output
    empty = ["--home", str(home), "--probes", str(tmp_path / "none")]
    result = runner.invoke(app, ["index", "predict", *empty])
    assert result.exit_code == 1 and "no probe installed" in result.output


def test_retire_a_generation_keeps_the_others(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = write_frames(tmp_path / "proc-b", 8)
    csv = write_csv(tmp_path / "d.csv", 8)
    args = ["index", "frames", str(frames), "--detections", str(csv), "--min-tracklet-length", "3"]
    base = ["--home", str(home)]
    assert runner.invoke(app, [*args, *base]).exit_code == 0
    monkeypatch.setattr(cli_store, "_load_encoder", lambda layout: FakeEncoder("fake-v2"))
    assert runner.invoke(app, [*args, *base]).exit_code == 0
    index_root = home / "index"
    assert generation_dir(index_root, "fake-v1").is_dir()
    result = runner.invoke(app, ["index", "retire", "fake-v1", *base], input="n\n")
    assert result.exit_code != 0  # not confirmed: nothing happens
    assert generation_dir(index_root, "fake-v1").is_dir()
    result = runner.invoke(app, ["index", "retire", "fake-v1", "--yes", *base])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"encoder_version": "fake-v1", "tracklets_removed": 2}
    assert not generation_dir(index_root, "fake-v1").exists()
    store = Store(f"sqlite:///{index_root / 'polypindex.db'}")
    assert store.encoder_versions() == ["fake-v2"] and store.count_tracklets("fake-v2") == 2
    assert any((index_root / "thumbnails").rglob("*.jpg"))  # fake-v2 still holds the procedure
    store.close()
    result = runner.invoke(app, ["index", "retire", "fake-v1", "--yes", *base])
    assert result.exit_code == 1 and "no index generation of encoder 'fake-v1'" in result.output
    assert "fake-v2" in result.output

"""``polypindex db`` / ``index`` / ``delete`` (polypindex/cli_store.py) with a fake encoder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import polypindex.cli_store as cli_store
from indexer.store import Store
from indexer.testing import FakeEncoder, write_csv, write_frames, write_video
from indexer.vector_index import VectorIndex, generation_dir
from polypindex.cli import app

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("POLYPINDEX_DATABASE_URL", raising=False)
    monkeypatch.setattr(cli_store, "_load_encoder", lambda model, home: FakeEncoder())
    return tmp_path / "home"


@pytest.mark.parametrize(
    "command",
    [["db"], ["db", "upgrade"], ["db", "current"], ["index"], ["index", "coco"]]
    + [["index", c] for c in ("video", "frames", "rebuild", "generations")]
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
    assert "(empty) -> 0004" in result.output
    result = runner.invoke(app, ["db", "current", "--database-url", url])
    assert json.loads(result.stdout) == {"current": "0004", "head": "0004", "up_to_date": True}


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


def test_clear_errors_exit_2(home: Path, tmp_path: Path) -> None:
    base = ["--home", str(home)]
    result = runner.invoke(app, ["delete", "nope", *base])
    assert result.exit_code == 2 and "no procedure with uid 'nope'" in result.output
    (tmp_path / "bad.csv").write_text("frame,x,y\n1,2,3\n")
    write_frames(tmp_path / "f", 2)
    result = runner.invoke(
        app,
        ["index", "frames", str(tmp_path / "f"), "--detections", str(tmp_path / "bad.csv"), *base],
    )
    assert result.exit_code == 2 and "bad.csv" in result.output and "lacks column" in result.output
    # `polypindex index DATA` still means `index coco DATA`
    result = runner.invoke(app, ["index", str(tmp_path / "nodata"), *base])
    assert result.exit_code == 2 and "annotation file not found" in result.output

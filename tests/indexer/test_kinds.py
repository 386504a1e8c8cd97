"""Input kinds (polypindex/indexer/kinds/): each declares its job model, path fields,
sources and CLI command; a kind added to the registry is taken by the job runner and
the CLI with nothing else to write. Also the background worker both threads run in."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import pytest
from helpers.indexing import FakeEncoder, write_csv, write_frames
from pydantic import Field
from typer.testing import CliRunner

import polypindex.cli.store as cli_store
from polypindex.cli import app
from polypindex.indexer.jobs import JobRunner
from polypindex.indexer.kinds import base
from polypindex.indexer.kinds.registry import KINDS
from polypindex.indexer.sources import ProcedureSource, Roots, frames_source
from polypindex.indexer.store import Store
from polypindex.indexer.worker import BackgroundWorker
from polypindex.model.core.errors import InvalidInputError
from polypindex.model.data.config import TrackletConfig


def test_every_kind_names_its_model_and_its_path_fields() -> None:
    assert list(KINDS) == ["coco", "video", "frames", "dicom"]
    for name, kind in KINDS.items():
        assert get_args(kind.params.model_fields["kind"].annotation) == (name,)
        assert kind.path_fields and set(kind.path_fields) <= set(kind.required)
    assert {n: f.folder for n, f in KINDS["frames"].path_fields.items()} == {
        "folder": True,
        "detections": False,
    }


class ToyJob(base.JobParams):
    """A frames folder under another name (what a new kind's module holds)."""

    example: ClassVar[dict[str, Any]] = {"summary": "A toy", "value": {"kind": "toy"}}

    kind: Literal["toy"]
    frames: base.InputFolder = Field(description="The frames.")
    boxes: base.InputFile = Field(description="The detections CSV.")


def _toy_sources(job: ToyJob, config: TrackletConfig, roots: Roots | None) -> list[ProcedureSource]:
    return [frames_source(job.frames, job.boxes, "toy-1", roots=roots, config=config)]


@dataclasses.dataclass(frozen=True)
class ToyInput:
    """Index a toy."""

    frames: Annotated[Path, base.CliArgument("The toy's frames folder.")]
    boxes: Annotated[Path, base.CliOption("Its detections.")]
    min_tracklet_length: Annotated[int, base.CliOption("Shorter tracklets are dropped.")] = 3


TOY = base.InputKind(params=ToyJob, sources=_toy_sources, cli=base.CliCommand(inputs=ToyInput))


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The toy kind registered (one registry line), and its inputs under a data root."""
    monkeypatch.setitem(KINDS, "toy", TOY)
    data = tmp_path / "data"
    write_frames(data / "proc", 8)
    write_csv(data / "d.csv", 8)
    return data


@pytest.fixture
def runner(db_url: str, tmp_path: Path, toy: Path) -> Iterator[JobRunner]:
    store = Store(db_url)
    yield JobRunner(store, tmp_path / "index", FakeEncoder(), [toy], poll_s=0.05)
    store.close()


def test_a_registered_kind_is_checked_and_run_by_the_job_runner(
    runner: JobRunner, toy: Path
) -> None:
    with pytest.raises(InvalidInputError, match=r"needs field\(s\) \['boxes'\]"):
        runner.submit("toy", {"frames": str(toy / "proc")})
    with pytest.raises(InvalidInputError, match=r"boxes: .* is not a file"):
        runner.submit("toy", {"frames": str(toy / "proc"), "boxes": str(toy / "proc")})
    with pytest.raises(InvalidInputError, match="min_tracklet_length: Input should be"):
        runner.submit("toy", {"frames": str(toy), "boxes": str(toy), "min_tracklet_length": 0})
    job = runner.submit(
        "toy", {"frames": str(toy / "proc"), "boxes": str(toy / "d.csv"), "min_tracklet_length": 3}
    )
    done = runner.run_one()
    assert done is not None and done.id == job.id and done.status == "succeeded", done
    assert done.progress["report"]["tracklets"] == 2
    assert runner.store.tracklet_ids_for_procedure("toy-1")


def test_a_registered_kind_gets_its_cli_command(
    toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POLYPINDEX_DATABASE_URL", raising=False)
    monkeypatch.setattr(cli_store, "_load_encoder", lambda layout: FakeEncoder())
    cli = CliRunner()
    shown = cli.invoke(app, ["index", "toy", "--help"], env={"COLUMNS": "120"})
    assert shown.exit_code == 0 and "Index a toy." in shown.output
    assert "The toy's frames folder." in shown.output and "--boxes" in shown.output
    assert "--detections" not in shown.output  # a kind without the detections options
    home = ["--home", str(tmp_path / "home")]
    args = ["index", "toy", str(toy / "proc"), "--boxes", str(toy / "d.csv")]
    result = cli.invoke(app, [*args, *home])
    assert result.exit_code == 0, result.output
    assert '"tracklets": 2' in result.output and "toy-1" in result.output


def test_the_worker_outlives_a_failing_step_wakes_early_and_stops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[float] = []
    called = threading.Event()

    def step() -> bool:
        calls.append(time.monotonic())
        called.set()
        if len(calls) == 1:
            raise RuntimeError("the store is away")
        return False

    worker = BackgroundWorker(
        "test-worker", step, lambda: 60.0, error="step failed", logger=logging.getLogger("t")
    )
    with caplog.at_level(logging.ERROR, logger="t"):
        worker.start()
        assert called.wait(5)
        called.clear()
        worker.wake()  # the 60 s wait after the failure is cut short
        assert called.wait(5)
    assert len(calls) == 2 and "step failed" in caplog.text
    assert any(t.name == "test-worker" for t in threading.enumerate())
    worker.stop(timeout=5)
    assert not worker.running
    assert not any(t.name == "test-worker" for t in threading.enumerate())

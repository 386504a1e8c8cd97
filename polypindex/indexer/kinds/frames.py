"""The ``frames`` input kind: a folder of frame images (the frame number is the last
number of each file name) and its detections CSV, one procedure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from polypindex.indexer.kinds.base import (
    JOB_PATH_NOTE,
    CliArgument,
    CliCommand,
    CliOption,
    DetectionJobParams,
    InputFile,
    InputFolder,
    InputKind,
    JobUid,
)
from polypindex.indexer.sources import ProcedureSource, Roots, SourceOptions, frames_source
from polypindex.model.data.config import TrackletConfig


class FramesJob(DetectionJobParams):
    """A folder of frame images (the frame number is the last number of each file name)
    and its detections CSV."""

    example: ClassVar[dict[str, Any]] = {
        "summary": "A frames folder and its detections",
        "value": {
            "kind": "frames",
            "folder": "/data/f/p2",
            "detections": "/data/f/p2.csv",
            "min_tracklet_length": 10,
        },
    }

    kind: Literal["frames"]
    folder: InputFolder = Field(description="The frames folder." + JOB_PATH_NOTE)
    detections: InputFile = Field(description="The detections CSV." + JOB_PATH_NOTE)
    uid: JobUid | None = Field(default=None, description="Default: the folder's name.")


def _sources(job: FramesJob, config: TrackletConfig, roots: Roots | None) -> list[ProcedureSource]:
    options: SourceOptions = {"config": config, "min_score": job.min_score, "linker": job.linker}
    return [frames_source(job.folder, job.detections, job.uid, roots=roots, **options)]


@dataclass(frozen=True)
class FramesInput:
    """Index one procedure from a folder of frames and its detections."""

    folder: Annotated[Path, CliArgument("Folder of frame images (number in each name).")]
    uid: Annotated[str | None, CliOption("Procedure UID (default: the folder name).")] = None


FRAMES = InputKind(
    params=FramesJob,
    sources=_sources,
    cli=CliCommand(inputs=FramesInput, detections=True),
)

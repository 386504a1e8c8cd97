"""The ``video`` input kind: a video file and its detections CSV, one procedure (streamed,
never fully loaded)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from polypindex.indexer.kinds.base import (
    JOB_PATH_NOTE,
    MAX_FRAME_NUMBER,
    CliArgument,
    CliCommand,
    CliOption,
    DetectionJobParams,
    InputFile,
    InputKind,
    JobUid,
)
from polypindex.indexer.sources import ProcedureSource, Roots, SourceOptions, video_source
from polypindex.model.data.config import TrackletConfig


class VideoJob(DetectionJobParams):
    """A video file and its detections (MOTChallenge or the project's CSV: docs/inputs.md)."""

    example: ClassVar[dict[str, Any]] = {
        "summary": "A video and its detections",
        "value": {"kind": "video", "video": "/data/v/p1.mp4", "detections": "/data/v/p1.csv"},
    }

    kind: Literal["video"]
    video: InputFile = Field(description="The video file." + JOB_PATH_NOTE)
    detections: InputFile = Field(description="The detections CSV." + JOB_PATH_NOTE)
    uid: JobUid | None = Field(default=None, description="Default: the video's stem.")
    first_frame: int = Field(
        default=0, ge=0, le=MAX_FRAME_NUMBER, description="The number of the video's first frame."
    )


def _sources(job: VideoJob, config: TrackletConfig, roots: Roots | None) -> list[ProcedureSource]:
    options: SourceOptions = {"config": config, "min_score": job.min_score, "linker": job.linker}
    return [
        video_source(
            job.video, job.detections, job.uid, first_frame=job.first_frame, roots=roots, **options
        )
    ]


@dataclass(frozen=True)
class VideoInput:
    """Index one procedure from a video file and its detections (streamed, never fully loaded)."""

    video: Annotated[Path, CliArgument("Video file (mp4, mkv, avi ...).")]
    uid: Annotated[str | None, CliOption("Procedure UID (default: the file stem).")] = None
    first_frame: Annotated[
        int,
        CliOption(
            "Number of the video's first frame in the detections, once read (0-based: MOTChallenge's frame 1 is read as 0)."
        ),
    ] = 0


VIDEO = InputKind(
    params=VideoJob,
    sources=_sources,
    cli=CliCommand(inputs=VideoInput, detections=True),
)

"""The ``dicom`` input kind: a DICOM endoscopy video (H.264) or multi-frame JPEG image and
its detections, one procedure per file (the readers: :mod:`polypindex.indexer.dicom`;
docs/inputs.md#dicom)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from polypindex.indexer.dicom import dicom_source, dicom_sources
from polypindex.indexer.kinds.base import (
    JOB_PATH_NOTE,
    Batch,
    CliArgument,
    CliCommand,
    CliOption,
    DetectionJobParams,
    DetectionOptions,
    InputFile,
    InputKind,
    JobUid,
)
from polypindex.indexer.sources import ProcedureSource, Roots, SourceOptions
from polypindex.model.data.config import TrackletConfig


class DicomJob(DetectionJobParams):
    """A DICOM file (Video Endoscopic Image Storage with H.264, or a multi-frame JPEG
    image) and its detections. Only a hash of the Study Instance UID is kept."""

    example: ClassVar[dict[str, Any]] = {
        "summary": "A DICOM endoscopy video and its detections",
        "value": {"kind": "dicom", "file": "/data/pacs/s1.dcm", "detections": "/data/pacs/s1.txt"},
    }

    kind: Literal["dicom"]
    file: InputFile = Field(description="The DICOM file." + JOB_PATH_NOTE)
    detections: InputFile = Field(description="The detections file." + JOB_PATH_NOTE)
    uid: JobUid | None = Field(
        default=None, description="Default: dicom- and a hash of the Study Instance UID."
    )


def _sources(job: DicomJob, config: TrackletConfig, roots: Roots | None) -> list[ProcedureSource]:
    options: SourceOptions = {"config": config, "min_score": job.min_score, "linker": job.linker}
    return [dicom_source(job.file, job.detections, job.uid, roots=roots, **options)]


@dataclass(frozen=True)
class DicomInput:
    """Index DICOM endoscopy: one file (--detections its CSV) or a folder of files (--detections
    a folder holding <file stem>.csv for each); no patient identifier is kept."""

    path: Annotated[Path, CliArgument("A DICOM file, or a folder of them.")]
    uid: Annotated[
        str | None, CliOption("Procedure UID (one file only; default: hashed study UID).")
    ] = None


def _batches(given: DicomInput, found: DetectionOptions | None) -> list[Batch]:
    assert found is not None  # the command takes the detections options
    options: SourceOptions = {
        "config": found.config,
        "min_score": found.min_score,
        "linker": found.linker,
    }
    sources = dicom_sources(given.path, found.detections, given.uid, **options)
    return [Batch(lambda: sources, description=f"indexing {Path(given.path).name}")]


DICOM = InputKind(
    params=DicomJob,
    sources=_sources,
    cli=CliCommand(inputs=DicomInput, detections=True, batches=_batches),
)

"""The ``coco`` input kind: a COCO dataset folder, one procedure per sequence of a split
(docs/method.md#data-format)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, StringConstraints

from polypindex.indexer.faults import display_path
from polypindex.indexer.kinds.base import (
    JOB_PATH_NOTE,
    Batch,
    CliArgument,
    CliCommand,
    CliOption,
    DetectionOptions,
    InputFolder,
    InputKind,
    JobParams,
)
from polypindex.indexer.sources import ProcedureSource, Roots, check_in_roots, coco_sources
from polypindex.model.core.errors import InvalidInputError
from polypindex.model.data.config import TrackletConfig


class CocoJob(JobParams):
    """A COCO dataset folder: ``ROOT/annotations/instances_<split>.json`` and ``ROOT/images``.
    Every image the annotations name must lie inside the data roots too."""

    example: ClassVar[dict[str, Any]] = {
        "summary": "A COCO dataset folder",
        "value": {"kind": "coco", "root": "/data/coco/new", "split": "test"},
    }

    kind: Literal["coco"]
    root: InputFolder = Field(description="The dataset folder." + JOB_PATH_NOTE)
    split: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = Field(
        default="test", description="The split (letters, digits, `_`, `-`)."
    )


def _sources(job: CocoJob, config: TrackletConfig, roots: Roots | None) -> list[ProcedureSource]:
    return coco_sources(job.root, job.split, config, roots=roots)


def _check(job: CocoJob, roots: Roots) -> None:
    """The annotation file is known at submission: it must be there, inside the roots."""
    from polypindex.model.data.coco import annotation_path  # pycocotools is slow to import

    annotations = check_in_roots(
        annotation_path(job.root, job.split), roots, f"the annotation file of split {job.split!r}"
    )
    if not annotations.is_file():
        raise InvalidInputError(
            f"root: {display_path(annotations, roots)} does not exist "
            f"(expected ROOT/annotations/instances_{job.split}.json)"
        )


@dataclass(frozen=True)
class CocoInput:
    """Index the procedures of a COCO dataset: tracklets -> embeddings -> SQL rows + FAISS."""

    data: Annotated[Path, CliArgument("COCO dataset folder (images/ + annotations/).")]
    split: Annotated[
        list[str] | None, CliOption("Split(s) to index (repeatable; default: test).")
    ] = None


def _batches(given: CocoInput, found: DetectionOptions | None) -> list[Batch]:
    """One report per split, each split read once the encoder is loaded."""
    return [
        Batch(functools.partial(coco_sources, given.data, s), description=f"indexing {s}")
        for s in given.split or ["test"]
    ]


COCO = InputKind(
    params=CocoJob,
    sources=_sources,
    check=_check,
    cli=CliCommand(inputs=CocoInput, batches=_batches),
)

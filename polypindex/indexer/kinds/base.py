"""What an input kind declares: its job model, path fields, sources and CLI command.

A kind's module (:mod:`.coco`, :mod:`.video`, :mod:`.frames`) defines:

- its **job model**: a :class:`JobParams` subclass with ``kind: Literal["<name>"]`` (the
  kind's name), the kind's fields and its OpenAPI ``example``. Extra fields are
  forbidden, every path and UID refuses control characters and has a length cap, every
  number has a range, so a malformed job is refused when it is submitted (a 422 over
  HTTP), never a job that fails in the worker. Path fields are typed :data:`InputFile`
  or :data:`InputFolder`: those are the fields confined to the data roots and checked
  to exist (:mod:`polypindex.indexer.jobs`);
- its **source builder**: the job, how tracklets are cut, and the data roots → its
  procedures; with the roots, every file the sources will read (an image a COCO
  annotation names, a frame file) must lie inside them, checked before anything is read;
- optionally a **submission check** of what the files hold (the COCO annotation file);
- its ``polypindex index <name>`` **command** (:class:`CliCommand`): a dataclass of its
  arguments and options, described with :class:`CliArgument` and :class:`CliOption`
  (the CLI turns them into Typer's), whose docstring is the command's help; by default
  the values named like job fields make the job the source builder takes.

The kind is an :class:`InputKind`, listed in :mod:`.registry`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from polypindex.indexer.input_checks import MAX_UID_LENGTH
from polypindex.indexer.sources import ProcedureSource, Roots
from polypindex.model.core.errors import InvalidInputError
from polypindex.model.data.config import TrackletConfig
from polypindex.model.data.tracklets import DEFAULT_LINKER, DETECTION_SEPARATION_THRESH

# No control characters (NUL included): refused before they reach SQL or a path.
NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*$"
MAX_PATH_LENGTH = 4096
MAX_FRAME_NUMBER = 2**63 - 1
MAX_TRACKLET_LENGTH = 1_000_000
JOB_PATH_NOTE = (
    " Absolute, inside the service's data roots (symlinks are followed and must stay inside)."
)


@dataclass(frozen=True)
class PathField:
    """Marks a job field as an input path: inside the data roots, and existing as a
    folder (``folder=True``) or a file."""

    folder: bool


_PATH = StringConstraints(min_length=1, max_length=MAX_PATH_LENGTH, pattern=NO_CONTROL_CHARS)
InputFile = Annotated[str, _PATH, PathField(folder=False)]
"""A job field naming an input file (confined to the data roots, must exist)."""
InputFolder = Annotated[str, _PATH, PathField(folder=True)]
"""A job field naming an input folder (confined to the data roots, must exist)."""
JobUid = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_UID_LENGTH, pattern=NO_CONTROL_CHARS)
]
MinTrackletLength = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_TRACKLET_LENGTH,
        description="Tracklets shorter than this many frames are not indexed (default 30).",
    ),
]
Linker = Annotated[
    Literal["bytetrack", "greedy"],
    Field(description="How boxes without track ids are linked (docs/inputs.md#linkers)."),
]
MinScore = Annotated[
    float,
    Field(ge=-1e9, le=1e9, description="Boxes scoring below it are ignored (default 0)."),
]


class JobParams(BaseModel):
    """The fields every indexing job has; a kind's job model adds ``kind`` and its own."""

    model_config = ConfigDict(extra="forbid")

    example: ClassVar[dict[str, Any]] = {}
    """The job in the OpenAPI examples: ``summary`` and ``value``."""

    force: bool = Field(default=False, description="Re-index procedures already stored.")
    min_tracklet_length: MinTrackletLength = 30

    @property
    def tracklet_config(self) -> TrackletConfig:
        """How the job's detections or instances are cut into tracklets."""
        return TrackletConfig(min_tracklet_length=self.min_tracklet_length)


class DetectionJobParams(JobParams):
    """The fields of a job whose input comes with a detections file: the score floor, the
    linker of boxes without track ids, and the detection inputs' gap rule
    (:data:`~polypindex.model.data.tracklets.DETECTION_SEPARATION_THRESH` frames: a
    detector misses frames, docs/inputs.md#linkers)."""

    min_score: MinScore = 0.0
    linker: Linker = "bytetrack"

    @property
    def tracklet_config(self) -> TrackletConfig:
        return TrackletConfig(
            min_tracklet_length=self.min_tracklet_length,
            separation_thresh=DETECTION_SEPARATION_THRESH,
        )


P = TypeVar("P", bound=JobParams)


# -- the CLI command ----------------------------------------------------------------------


@dataclass(frozen=True)
class CliArgument:
    """A positional argument of a kind's ``polypindex index`` command."""

    help: str


@dataclass(frozen=True)
class CliOption:
    """An option (``--name``) of a kind's ``polypindex index`` command."""

    help: str


@dataclass(frozen=True)
class DetectionOptions:
    """The options of a command whose input comes with a detections CSV: the CSV and how
    its boxes are linked into tracklets (docs/method.md#tracklets)."""

    detections: Annotated[
        Path,
        CliOption(
            "Detections: MOTChallenge (frame,id,x,y,w,h,conf[,x,y,z], 1-based frames) or "
            "frame,x,y,w,h,score[,track_id] behind its header (docs/inputs.md#detections)."
        ),
    ]
    min_score: Annotated[float, CliOption("Ignore boxes scoring below this.")] = 0.0
    linker: Annotated[
        str,
        CliOption(
            "Linker of boxes without track ids: bytetrack or greedy (docs/inputs.md#linkers)."
        ),
    ] = DEFAULT_LINKER
    min_tracklet_length: Annotated[
        int, CliOption("Tracklets with fewer frames are dropped (docs/method.md#tracklets).")
    ] = 30
    separation_thresh: Annotated[
        int, CliOption("A larger frame gap starts a new tracklet (detectors miss frames).")
    ] = DETECTION_SEPARATION_THRESH
    iou_thresh: Annotated[
        float, CliOption("A lower IoU with the previous box starts a new one.")
    ] = 0.1

    @property
    def config(self) -> TrackletConfig:
        linking = ("separation_thresh", "iou_thresh", "min_tracklet_length")
        return TrackletConfig(**{name: getattr(self, name) for name in linking})


@dataclass(frozen=True)
class Batch:
    """What one report of ``polypindex index`` covers.

    Attributes:
        sources: builds its procedures, once the encoder is loaded.
        description: the progress bar's label.
    """

    sources: Callable[[], Sequence[ProcedureSource]]
    description: str = "indexing"


@dataclass(frozen=True)
class CliCommand:
    """A kind's ``polypindex index <name>`` command.

    Attributes:
        inputs: a dataclass of the command's own arguments and options, each field
            ``Annotated[type, CliArgument(help)]`` or ``Annotated[type, CliOption(help)]``;
            its docstring is the command's help.
        detections: whether the command also takes the :class:`DetectionOptions`.
        batches: the inputs (and the detections options) → what to index, one report
            per :class:`Batch`. Default: one batch, the job made of the values whose
            names are job fields, its sources built at once (a bad input is named
            before the encoder loads), its tracklets cut as the detections options say.
    """

    inputs: type
    detections: bool = False
    batches: Callable[[Any, DetectionOptions | None], list[Batch]] | None = None


# -- the kind -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InputKind(Generic[P]):
    """One input kind (see the module docstring).

    Attributes:
        params: the job model; its ``kind: Literal["<name>"]`` names the kind (the job's
            ``kind`` and the CLI command), its class variable ``example`` is the job in
            the OpenAPI examples (``summary`` and ``value``).
        sources: ``sources(job, config, roots)``: the job's procedures, their tracklets
            cut as ``config`` says; with ``roots`` (not ``None``), every file they will
            read must lie inside them.
        cli: the ``polypindex index <name>`` command.
        check: ``check(job, roots)`` at submission, after the path fields were
            checked (and resolved in ``job``): what else can be refused before the job
            is queued; raises InvalidInputError or PathNotAllowedError.
    """

    params: type[P]
    sources: Callable[[P, TrackletConfig, Roots | None], list[ProcedureSource]]
    cli: CliCommand
    check: Callable[[P, Roots], None] | None = None

    @property
    def name(self) -> str:
        (name,) = get_args(self.params.model_fields["kind"].annotation)
        return str(name)

    @property
    def example(self) -> dict[str, Any]:
        return self.params.example

    @property
    def path_fields(self) -> dict[str, PathField]:
        """The job model's path fields, in declaration order."""
        out = {}
        for name, info in self.params.model_fields.items():
            marks = [m for m in info.metadata if isinstance(m, PathField)]
            if marks:
                out[name] = marks[0]
        return out

    @property
    def required(self) -> list[str]:
        """The job's required fields but ``kind``."""
        fields = self.params.model_fields
        return [n for n, f in fields.items() if n != "kind" and f.is_required()]

    @property
    def fields(self) -> list[str]:
        """The job's fields but ``kind``: the required ones first."""
        optional = [n for n, f in self.params.model_fields.items() if not f.is_required()]
        return self.required + optional

    def parse(self, params: Mapping[str, Any]) -> P:
        """The job of these fields (``kind`` implied; ``None`` values left out).

        Raises:
            InvalidInputError: naming the missing, unknown or invalid fields (never
                their values).
        """
        given = {k: v for k, v in params.items() if v is not None}
        try:
            return self.params.model_validate({"kind": self.name, **given})
        except ValidationError as exc:
            raise InvalidInputError(self._refusal(exc)) from None

    def _refusal(self, exc: ValidationError) -> str:
        errors = exc.errors()
        missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing"]
        if missing:
            return f"a {self.name!r} job needs field(s) {missing}"
        unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
        if unknown:
            return f"unknown field(s) {unknown} for a {self.name!r} job; allowed: {self.fields}"
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)

    def job_sources(self, job: P, roots: Roots | None) -> list[ProcedureSource]:
        """A job's procedures (its tracklets cut at its ``min_tracklet_length``)."""
        return self.sources(job, job.tracklet_config, roots)

    def cli_batches(self, given: Any, found: DetectionOptions | None) -> list[Batch]:
        """What ``polypindex index <name>`` indexes for these values (see :class:`CliCommand`)."""
        if self.cli.batches is not None:
            return self.cli.batches(given, found)
        values = {**_values(given), **(_values(found) if found is not None else {})}
        fields = self.params.model_fields
        job = self.params.model_construct(  # the CLI's values, not the service's limits
            kind=self.name, **{k: v for k, v in values.items() if k in fields}
        )
        sources = self.sources(
            job, found.config if found is not None else job.tracklet_config, None
        )
        return [Batch(lambda: sources)]


def _values(group: Any) -> dict[str, Any]:
    """A dataclass's fields, paths as strings (as a job holds them)."""
    out = {f.name: getattr(group, f.name) for f in dataclasses.fields(group)}
    return {k: str(v) if isinstance(v, Path) else v for k, v in out.items()}

"""What an indexing run reports: :class:`IndexReport` at the end, :class:`Progress` on the way,
and :class:`RunTally`, the counts both engines (:mod:`indexer.pipeline`,
:mod:`indexer.ray_engine`) keep while they run."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class IndexReport:
    """What :func:`index_dataset` did.

    Attributes:
        procedures_indexed: procedures embedded and written.
        procedures_skipped: procedures already stored with this encoder version.
        tracklets: tracklets written.
        frames: frames fed to the encoder (after subsampling).
        images_decoded: image files decoded (each at most once per procedure).
        seconds: wall-clock time.
        index_size: vectors in the index at the end.
        encoder_version: the encoder used.
        indexed_uids: UIDs of the procedures written.
    """

    procedures_indexed: int
    procedures_skipped: int
    tracklets: int
    frames: int
    images_decoded: int
    seconds: float
    index_size: int
    encoder_version: str
    indexed_uids: tuple[str, ...] = field(default_factory=tuple)

    @property
    def tracklets_per_s(self) -> float:
        return self.tracklets / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["indexed_uids"] = list(self.indexed_uids)
        out["tracklets_per_s"] = round(self.tracklets_per_s, 3)
        out["frames_per_s"] = round(self.frames_per_s, 3)
        return out


@dataclass(frozen=True)
class Progress:
    """Where a batch stands (given to ``on_progress`` after each procedure).

    Given to ``on_progress`` after each procedure and, within a procedure, after each
    embedded chunk of tracklets (at most every ``progress_every_s`` seconds), so a
    single long video shows its progress too.

    Attributes:
        procedures_done: procedures indexed or skipped so far.
        procedures_total: procedures in the batch (``None`` if unknown).
        current_uid: the procedure being indexed or just finished.
        tracklets: tracklets embedded so far (the current procedure's included; they
            are written when it ends).
        frames: frames embedded so far.
        elapsed_s: seconds since the batch started.
        tracklets_per_s: throughput so far.
        eta_s: estimated seconds left (``None`` until something was embedded and the
            totals are known).
        tracklets_total: tracklets to embed in the batch (``None`` if unknown).
        frames_total: frames to embed in the batch (``None`` if unknown).
        frames_per_s: throughput so far.
    """

    procedures_done: int
    procedures_total: int | None
    current_uid: str | None
    tracklets: int
    frames: int
    elapsed_s: float
    tracklets_per_s: float
    eta_s: float | None
    tracklets_total: int | None = None
    frames_total: int | None = None
    frames_per_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RunTally:
    """What an indexing run has done so far; :meth:`report` makes its :class:`IndexReport`.

    The clock starts when the tally is made.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.indexed_uids: list[str] = []
        self.procedures_skipped = 0
        self.skipped_frames = 0
        self.tracklets = 0
        self.frames = 0
        self.images_decoded = 0

    @property
    def procedures_done(self) -> int:
        """Procedures indexed or skipped so far."""
        return len(self.indexed_uids) + self.procedures_skipped

    def add(self, uid: str, tracklets: int, frames: int, images_decoded: int) -> None:
        """One procedure written: ``tracklets`` rows from ``frames`` embedded frames."""
        self.indexed_uids.append(uid)
        self.tracklets += tracklets
        self.frames += frames
        self.images_decoded += images_decoded

    def skipped(self, procedures: int = 1, frames: int = 0) -> None:
        """``procedures`` left alone (already stored), ``frames`` frames they would have fed."""
        self.procedures_skipped += procedures
        self.skipped_frames += frames

    def report(self, index_size: int, encoder_version: str) -> IndexReport:
        """The run's report, timed up to now."""
        return IndexReport(
            procedures_indexed=len(self.indexed_uids),
            procedures_skipped=self.procedures_skipped,
            tracklets=self.tracklets,
            frames=self.frames,
            images_decoded=self.images_decoded,
            seconds=time.perf_counter() - self.started,
            index_size=index_size,
            encoder_version=encoder_version,
            indexed_uids=tuple(self.indexed_uids),
        )

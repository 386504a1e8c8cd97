"""What an indexing run reports: :class:`IndexReport` at the end, :class:`Progress` on the way
(re-exported by :mod:`indexer.pipeline`)."""

from __future__ import annotations

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

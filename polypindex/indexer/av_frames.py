"""Decoding the wanted frames of a PyAV container front to back (a video file's,
:mod:`indexer.sources`, and a DICOM file's encapsulated H.264 stream,
:mod:`indexer.dicom`), one decoded frame held at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from polypindex.model.core.errors import InvalidInputError


class VideoReadError(InvalidInputError):
    """A video file cannot be opened or decoded, or ends before the frames it needs."""


def decode_wanted(
    container: Any,
    todo: Sequence[int],
    first_frame: int,
    decode_error: Callable[[int, Exception], str],
    too_short: Callable[[int, int], str],
) -> Iterator[tuple[int, np.ndarray]]:
    """The frames ``todo`` (sorted, not empty) of a PyAV container's first video stream,
    decoded front to back, one held at a time; the container is closed at the end.

    Raises:
        VideoReadError: ``decode_error(last position, error)`` when decoding fails,
            ``too_short(last position, next wanted)`` when the stream ends first.
    """
    import av

    position = first_frame - 1
    at = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                position += 1
                if position < todo[at]:
                    continue
                yield position, frame.to_ndarray(format="rgb24")
                at += 1
                if at == len(todo):
                    return
        except av.error.FFmpegError as exc:  # type: ignore[attr-defined]
            raise VideoReadError(decode_error(position, exc)) from exc
    finally:
        container.close()
    raise VideoReadError(too_short(position, todo[at]))

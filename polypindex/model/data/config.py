"""Typed, validated configuration of the data path (docs/method.md#tracklets).

These settings travel inside every artefact (checkpoint, ONNX metadata, index
sidecar); consumers read them from there, never from their own defaults.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Self, TypeVar

from polypindex.model.core.errors import ConfigError

T = TypeVar("T")

WHOLE_TRACKLET = -1
"""``FragmentConfig.fragment_length`` meaning "the whole subsampled tracklet is one fragment"."""


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(known)}"
        )
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


class JsonConfig:
    """The dict / JSON form shared by the configuration dataclasses (they travel in
    checkpoints, ONNX metadata and index sidecars as plain JSON)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a dict; unknown keys raise ConfigError naming them (lists → tuples)."""
        return _from_dict(cls, data)


@dataclass(frozen=True)
class PreprocessConfig(JsonConfig):
    """How a frame and its box become the encoder's input (docs/method.md#the-crop).

    Attributes:
        im_size: side of the square crop fed to the encoder, in pixels.
        bbox_scale_factor: the box's width and height are multiplied by this
            about its centre before cropping (5 → the crop shows context).
        mean: per-channel mean subtracted after scaling to [0, 1] (RGB order).
        std: per-channel std divided by after subtracting the mean.
    """

    im_size: int = 232
    bbox_scale_factor: float = 5.0
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.225, 0.225, 0.225)

    def __post_init__(self) -> None:
        if not isinstance(self.im_size, int) or self.im_size < 8:
            raise ConfigError(f"im_size must be an integer >= 8, got {self.im_size!r}")
        if not self.bbox_scale_factor > 0:
            raise ConfigError(f"bbox_scale_factor must be > 0, got {self.bbox_scale_factor!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError("mean and std must have exactly 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be > 0, got {self.std!r}")


@dataclass(frozen=True)
class TrackletConfig(JsonConfig):
    """How per-identity instances (or raw detections) are cut into tracklets.

    Attributes:
        separation_thresh: a frame gap larger than this starts a new tracklet.
        iou_thresh: an IoU with the previous box below this starts a new tracklet.
        min_tracklet_length: tracklets with fewer frames are dropped.
    """

    separation_thresh: int = 1
    iou_thresh: float = 0.1
    min_tracklet_length: int = 30

    def __post_init__(self) -> None:
        if self.separation_thresh < 1:
            raise ConfigError(f"separation_thresh must be >= 1, got {self.separation_thresh}")
        if not 0.0 <= self.iou_thresh <= 1.0:
            raise ConfigError(f"iou_thresh must be in [0, 1], got {self.iou_thresh}")
        if self.min_tracklet_length < 1:
            raise ConfigError(f"min_tracklet_length must be >= 1, got {self.min_tracklet_length}")


@dataclass(frozen=True)
class FragmentConfig(JsonConfig):
    """How a tracklet is subsampled and cut into fragments.

    Attributes:
        stride: keep every ``stride``-th frame of the tracklet.
        fragment_length: frames per fragment after subsampling; ``-1`` makes the
            whole subsampled tracklet one fragment (evaluation and indexing).
        drop_last: drop the incomplete last fragment (else pad it by repeating
            its last frame).
        max_frames: when ``fragment_length == -1``, a longer subsampled tracklet
            is uniformly thinned to at most this many frames (bounds the cost of
            very long tracklets at indexing time); ``0`` disables the cap.
    """

    stride: int = 4
    fragment_length: int = 8
    drop_last: bool = True
    max_frames: int = 64

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ConfigError(f"stride must be >= 1, got {self.stride}")
        if self.fragment_length == 0 or self.fragment_length < WHOLE_TRACKLET:
            raise ConfigError(
                f"fragment_length must be a positive number of frames or -1 (whole tracklet), "
                f"got {self.fragment_length}"
            )
        if self.max_frames < 0:
            raise ConfigError(f"max_frames must be >= 0 (0 = no cap), got {self.max_frames}")


def whole_tracklet(fragment: FragmentConfig) -> FragmentConfig:
    """The whole-tracklet rule of indexing, evaluation and the service
    (docs/method.md#fragments): the
    training fragment settings (stride, max_frames) with the whole subsampled tracklet
    as the one fragment (``fragment_length = -1``)."""
    return replace(fragment, fragment_length=WHOLE_TRACKLET)


def whole_tracklet_error(fragment: FragmentConfig) -> ConfigError:
    """The error for a fragment rule that does not give one whole-tracklet fragment."""
    return ConfigError(
        f"indexing embeds each tracklet whole: the encoder's fragment config must have "
        f"fragment_length=-1, got {fragment}"
    )


def check_whole_tracklet(fragment: FragmentConfig) -> None:
    """Raise ConfigError unless ``fragment`` is the whole-tracklet rule (what indexing needs).

    Raises:
        ConfigError: ``fragment.fragment_length`` is not -1.
    """
    if fragment.fragment_length != WHOLE_TRACKLET:
        raise whole_tracklet_error(fragment)


def parse_value(raw: str) -> Any:
    """A command-line value: JSON when it parses (numbers, booleans, lists...), else the string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["epochs=3", "encoder.backbone=resnet50"]`` → ``{"epochs": 3, ...}`` (values as JSON
    when they parse); the one parser of every ``--set key=value`` option.

    Raises:
        ConfigError: a pair without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} must look like key=value (e.g. epochs=3)")
        out[key.strip()] = parse_value(raw)
    return out

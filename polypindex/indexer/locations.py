"""How a procedure's source is stored: relative to its data root or to the home, so that a
home copied or restored elsewhere, or data roots moved, still finds its inputs
(docs/store.md#sources-and-a-movable-home).

A stored path is one of:

- ``root:REL``: ``REL`` (a POSIX path without ``..``) under a data root; read back under
  the first configured root (``POLYPINDEX_DATA_ROOTS``, in order) where it exists, else
  under the first one;
- ``home:REL``: ``REL`` under the home (``POLYPINDEX_HOME``), for an input in the home
  but outside every data root;
- anything else: an absolute path (an input outside every root and the home), or a
  value written before this form existed, read unchanged.

:func:`to_stored` writes a path in that form (the first root holding it wins, then the
home) and :func:`resolve` reads it back. Resolving does not confine: the caller still
checks the result against the data roots (:func:`indexer.sources.check_in_roots`), so a
stored value never reaches a file the roots do not allow.

A procedure's source wraps such paths: ``ANNOTATIONS.json`` (a COCO split),
``frames:FOLDER detections:CSV``, ``video:VIDEO detections:CSV`` or
``dicom:FILE detections:CSV``
(:func:`store_source`, :func:`parse_source`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from polypindex.indexer.sources import PathNotAllowedError

HOME_PREFIX = "home:"
ROOT_PREFIX = "root:"
_WITH_DETECTIONS = re.compile(
    r"^(?P<kind>frames|video|dicom):(?P<input>.+) detections:(?P<detections>.+)$"
)


@dataclass(frozen=True)
class Anchors:
    """What stored paths are relative to.

    Attributes:
        home: the home (``POLYPINDEX_HOME``), or ``None`` when not known.
        roots: the data roots, in their configured order.
    """

    home: Path | None = None
    roots: tuple[Path, ...] = ()


@dataclass(frozen=True)
class SourceParts:
    """The stored paths of a procedure's source.

    Attributes:
        kind: ``coco`` (``input`` is the annotation file), ``frames``, ``video`` or ``dicom``.
        input: the annotation file, frames folder or video, as stored.
        detections: the detections CSV as stored (``None`` for COCO).
    """

    kind: str
    input: str
    detections: str | None = None


def is_relative_form(stored: str) -> bool:
    """Whether ``stored`` is in the ``root:`` / ``home:`` form."""
    return stored.startswith((ROOT_PREFIX, HOME_PREFIX))


def to_stored(path: str | Path, home: Path | None, roots: Sequence[str | Path]) -> str:
    """``path`` as stored: ``root:REL`` under the first root holding it, else ``home:REL``
    under the home, else its absolute path (symlinks followed in every case, as the
    confinement check does)."""
    resolved = Path(path).expanduser().resolve()
    for prefix, bases in ((ROOT_PREFIX, roots), (HOME_PREFIX, [home] if home else [])):
        for base in bases:
            anchor = Path(base).expanduser().resolve()
            if resolved.is_relative_to(anchor):
                return prefix + resolved.relative_to(anchor).as_posix()
    return str(resolved)


def _relative(stored: str, prefix: str) -> PurePosixPath:
    rel = PurePosixPath(stored.removeprefix(prefix))
    if "\x00" in stored or rel.is_absolute() or ".." in rel.parts:
        raise PathNotAllowedError(
            f"a stored {prefix!r} path must stay inside its folder (no '..', not absolute)"
        )
    return rel


def resolve(stored: str, home: Path | None, roots: Sequence[str | Path]) -> Path:
    """The path a stored value names here (not confined: check it against the roots).

    Raises:
        PathNotAllowedError: a ``root:`` value with no data root configured, a ``home:``
            value with no home, or a relative part that is absolute or holds ``..``.
    """
    if stored.startswith(ROOT_PREFIX):
        rel = _relative(stored, ROOT_PREFIX)
        candidates = [Path(r).expanduser() / rel for r in roots]
        if not candidates:
            raise PathNotAllowedError(
                "the source lies in a data root, but no data roots are configured"
            )
        return next((c for c in candidates if c.exists()), candidates[0])
    if stored.startswith(HOME_PREFIX):
        rel = _relative(stored, HOME_PREFIX)
        if home is None:
            raise PathNotAllowedError("the source lies in the home, but no home is known")
        return Path(home).expanduser() / rel
    return Path(stored)


def parse_source(source: str) -> SourceParts | None:
    """The parts of a procedure's source (stored or not); ``None`` for another form."""
    match = _WITH_DETECTIONS.match(source)
    if match:
        return SourceParts(match["kind"], match["input"], match["detections"])
    if source.endswith(".json"):
        return SourceParts("coco", source)
    return None


def store_source(source: str, anchors: Anchors) -> str:
    """A procedure's source with each of its paths in the stored form (:func:`to_stored`);
    a source of another form, or paths already stored relative, are kept as they are."""

    def stored(path: str) -> str:
        return path if is_relative_form(path) else to_stored(path, anchors.home, anchors.roots)

    parts = parse_source(source)
    if parts is None:
        return source
    if parts.detections is None:
        return stored(parts.input)
    return f"{parts.kind}:{stored(parts.input)} detections:{stored(parts.detections)}"


def anchors_for(layout: Any) -> Anchors:
    """The anchors of a :class:`model.core.layout.Layout` (or the service's settings): its home
    and data roots."""
    return Anchors(Path(layout.home), tuple(Path(r) for r in layout.data_roots))

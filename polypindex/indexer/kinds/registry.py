"""Input kind name → kind: the one place a kind name meets its code.

Adding a kind: a module beside :mod:`.coco` defining its job model, source builder and
CLI command as an :class:`~polypindex.indexer.kinds.base.InputKind`, and one line below.
The job runner, the service's ``POST /procedures`` body (a union of the job models, in
this order) and the ``polypindex index`` commands follow.
"""

from __future__ import annotations

from typing import Any

from polypindex.indexer.kinds.base import InputKind
from polypindex.indexer.kinds.coco import COCO
from polypindex.indexer.kinds.dicom import DICOM
from polypindex.indexer.kinds.frames import FRAMES
from polypindex.indexer.kinds.video import VIDEO
from polypindex.model.core.errors import InvalidInputError

KINDS: dict[str, InputKind[Any]] = {kind.name: kind for kind in (COCO, VIDEO, FRAMES, DICOM)}


def input_kind(name: str) -> InputKind[Any]:
    """The kind called ``name``; InvalidInputError for one that is not registered."""
    try:
        return KINDS[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown job kind {name!r}; expected one of {list(KINDS)}"
        ) from None


def path_fields() -> frozenset[str]:
    """The names of every kind's path fields (what a job's answer shows relative to the
    data roots)."""
    return frozenset(name for kind in KINDS.values() for name in kind.path_fields)

"""Paths and ids from requests: resolved or checked without surprises, never a 500.

:func:`resolve_input` turns a request's path into an absolute, resolved one or raises
:class:`~model.core.errors.InvalidInputError` naming the field, for every way resolving
can fail: a ``~user`` that names nobody, a component over the file system's 255 bytes
or a path over 4095, a symlink loop. A path is never a 500.

:func:`opened_path` says where an open descriptor really points (``/proc/self/fd``), so
a file checked against the data roots can be checked again *after* it is opened: a
symlink swapped between the check and the open is not followed unnoticed
(:func:`indexer.sources.open_inside`).

:func:`check_uid`: a procedure UID the store can hold (:data:`MAX_UID_LENGTH`, the
length of ``procedures.uid`` in :mod:`indexer.tables`; one limit for indexing, the job
body and every route's ``{uid}``).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from polypindex.model.core.errors import InvalidInputError

NAME_MAX = 255  # bytes in one path component (Linux, macOS)
PATH_MAX = 4096  # bytes in a path, its terminating NUL included
MAX_UID_LENGTH = 255  # the store's procedures.uid column (tests/indexer/test_paths.py)


def resolve_input(path: str | Path, what: str) -> Path:
    """``path`` with ``~`` expanded and symlinks and ``..`` resolved.

    Raises:
        InvalidInputError: naming ``what`` (never the path): an unknown ``~user``, a
            component longer than :data:`NAME_MAX` bytes or a path of :data:`PATH_MAX`
            bytes or more, a symlink loop, or another reason the path cannot be resolved.
    """
    text = str(path)
    raw = os.fsencode(text)
    if len(raw) >= PATH_MAX:
        raise InvalidInputError(f"{what}: the path is longer than {PATH_MAX - 1} bytes")
    if any(len(part) > NAME_MAX for part in raw.split(b"/")):
        raise InvalidInputError(f"{what}: a path component is longer than {NAME_MAX} bytes")
    try:
        expanded = Path(text).expanduser()
    except RuntimeError as exc:  # "~nosuchuser": Path.expanduser cannot find the home
        raise InvalidInputError(
            f"{what}: '~' must name an existing user's home folder (or use an absolute path)"
        ) from exc
    try:
        return expanded.resolve()
    except RuntimeError as exc:  # Python < 3.13: a symlink loop
        raise InvalidInputError(f"{what}: the path runs into a symlink loop") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidInputError(f"{what}: the path runs into a symlink loop") from exc
        if exc.errno == errno.ENAMETOOLONG:
            raise InvalidInputError(f"{what}: the resolved path is too long") from exc
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        raise InvalidInputError(f"{what}: the path cannot be resolved ({reason})") from exc


def opened_path(fd: int) -> Path | None:
    """The real path of the file open as ``fd`` (``None`` where the system cannot say)."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return Path(target) if target.startswith("/") else None


def check_uid(uid: str, what: str = "uid") -> str:
    """``uid`` if the store can hold it: 1 to :data:`MAX_UID_LENGTH` characters, no
    control character; InvalidInputError naming ``what`` otherwise."""
    if not uid or len(uid) > MAX_UID_LENGTH:
        raise InvalidInputError(
            f"{what}: must be 1 to {MAX_UID_LENGTH} characters long, not {len(uid)} "
            "(a COCO UID is dataset_id:sequence_id)"
        )
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uid):
        raise InvalidInputError(f"{what}: must not contain control characters")
    return uid

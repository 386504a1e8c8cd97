"""Faults of the storage under the indexer, and messages safe to show a client.

:func:`storage_fault` names what went wrong when a write fails for a reason outside
the request (a full disk, a read-only or immutable store, a database that does not
answer), so the service answers 507 / 503 saying so and a job fails saying so,
instead of a bare "1249842 requested and 0 written".

:func:`public_message` rewrites a message for a response body or a job's stored
error: paths under the data roots become ``<data_root>/...`` (``<data_root:2>/...``
for the second root, and so on), any other absolute path keeps only its file name,
and a database error's SQL text and bound parameters are cut off.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
# What a writer reports when the disk filled under it without an errno (FAISS, numpy).
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written|short write|No space left", re.I)
_SQL_TAIL = re.compile(r"\s*\[SQL:.*", re.S)
_BACKGROUND = re.compile(r"\s*\(Background on this error at:[^)]*\)", re.S)
# Paths the API itself has (messages may name them: "see GET /healthz").
_API_PREFIXES = ("/jobs", "/procedures", "/search", "/reid", "/predict", "/healthz", "/metrics")
_ABSOLUTE = re.compile(r"(?<![\w.:/<>-])/[^\s'\",;()\[\]{}<>]+")


@dataclass(frozen=True)
class StorageFault:
    """``kind`` is ``disk_full``, ``read_only`` or ``store_unavailable``; ``message`` says
    what happened and what to do, with no path, SQL or parameter in it."""

    kind: str
    message: str


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(out) < 10:
        seen.add(id(current))
        out.append(current)
        if isinstance(current, DBAPIError) and current.orig is not None:
            out.append(current.orig)
        current = current.__cause__ or current.__context__
    return out


def storage_fault(exc: BaseException) -> StorageFault | None:
    """The storage fault behind ``exc`` (or one of its causes), or ``None``."""
    for e in _chain(exc):
        text = str(e).lower()
        if (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS) or (
            "database or disk is full" in text or "disk full" in text
        ):
            return StorageFault(
                "disk_full",
                "no space left on the device holding the database or the index (ENOSPC); "
                "free space, then retry",
            )
        if (isinstance(e, OSError) and e.errno in READ_ONLY_ERRNOS) or "readonly database" in text:
            return StorageFault(
                "read_only",
                "the store is read-only (a read-only or immutable file or file system); "
                "nothing was written",
            )
        if isinstance(e, RuntimeError | OSError) and _SHORT_WRITE.search(str(e)):
            return StorageFault(
                "disk_full",
                "a write was cut short (no space left on the device?); free space, then retry",
            )
    for e in _chain(exc):
        if isinstance(e, SQLAlchemyError):
            what = type(e.orig).__name__ if isinstance(e, DBAPIError) else type(e).__name__
            if "disk i/o error" in str(e).lower():
                return StorageFault(
                    "read_only", "the database file cannot be written (disk I/O error)"
                )
            return StorageFault(
                "store_unavailable",
                f"the database failed ({what}); the details are in the server log",
            )
    return None


def root_labels(roots: Sequence[str | Path]) -> list[tuple[str, str]]:
    """``(prefix, label)`` pairs for the data roots, as given and resolved, longest first."""
    pairs: list[tuple[str, str]] = []
    for i, root in enumerate(roots):
        label = "<data_root>" if i == 0 else f"<data_root:{i + 1}>"
        for form in {str(Path(root).expanduser()), str(Path(root).expanduser().resolve())}:
            pairs.append((form.rstrip("/") or "/", label))
    return sorted(pairs, key=lambda p: -len(p[0]))


def display_path(path: str | Path, roots: Sequence[str | Path]) -> str:
    """``path`` relative to the data root holding it (``<data_root>/a/b``), else its name."""
    text = str(path)
    for prefix, label in root_labels(roots):
        if text == prefix:
            return label
        if text.startswith(prefix + "/"):
            return label + text[len(prefix) :]
    return public_message(text, ())


def public_message(message: str, roots: Sequence[str | Path] = ()) -> str:
    """``message`` without SQL, bound parameters or absolute paths outside the data roots."""
    text = _BACKGROUND.sub("", _SQL_TAIL.sub("", message))
    for prefix, label in root_labels(roots):
        if prefix != "/":
            text = re.sub(re.escape(prefix) + r"(?=/|\b|$)", label, text)

    def hide(match: re.Match[str]) -> str:
        path = match.group(0)
        if path.startswith(_API_PREFIXES) or path.count("/") < 2:
            return path
        return ".../" + path.rstrip("/").rsplit("/", 1)[-1]

    return _ABSOLUTE.sub(hide, text)

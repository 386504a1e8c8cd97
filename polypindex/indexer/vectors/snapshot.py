"""The snapshot files of a :class:`~polypindex.indexer.vectors.index.VectorIndex`, checked.

A snapshot is ``index.faiss`` (the backend's bytes) and its JSON sidecar
``index_infos.json``. The sidecar records the SHA-256 and the length of the index
bytes (``checksum``, ``index_bytes``); a snapshot is only used when the file on
disk has exactly those bytes, so flipped bytes anywhere in it (header or float
payload), a truncated file, a file from another save or a sidecar without a
checksum (written before checksums) are refused with the reason
(:class:`SnapshotError`), and :func:`polypindex.indexer.generations.open_or_rebuild`
rebuilds the index from the store and writes it back. Both files are written
through :func:`polypindex.model.core.files.atomic_write` (index first, sidecar last).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from polypindex.model.core.errors import IndexNotReadyError
from polypindex.model.core.files import atomic_write

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
SIDECAR_FILE = "index_infos.json"
SIDECAR_FORMAT_VERSION = 2
"""2: the sidecar records ``checksum`` and ``index_bytes`` (1 had neither)."""
CHECKSUM_ALGORITHM = "sha256"
_CHUNK = 1 << 22


class SnapshotError(IndexNotReadyError):
    """A snapshot that cannot be used as it is: missing, unreadable, torn or corrupt."""


def checksum(data: bytes | memoryview) -> str:
    """``"sha256:<hex>"`` of ``data``."""
    return f"{CHECKSUM_ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def file_checksum(path: Path) -> tuple[str, int]:
    """``("sha256:<hex>", size)`` of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return f"{CHECKSUM_ALGORITHM}:{digest.hexdigest()}", size


def read_infos(directory: str | Path) -> dict[str, Any] | None:
    """The sidecar of a snapshot, or ``None`` if there is none or it is unreadable."""
    path = Path(directory) / SIDECAR_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        logger.warning("unreadable index sidecar %s", path)
        return None
    return data if isinstance(data, dict) else None


def write_snapshot(directory: str | Path, data: bytes | memoryview, infos: dict[str, Any]) -> Path:
    """Write ``index.faiss`` then the sidecar (with the checksum of ``data``) atomically.

    Returns:
        The path of ``index.faiss``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    recorded = {**infos, "checksum": checksum(data), "index_bytes": len(data)}
    index_path = atomic_write(out / INDEX_FILE, lambda fh: fh.write(data))
    atomic_write(out / SIDECAR_FILE, json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    return index_path


def _expected(folder: Path, infos: dict[str, Any] | None) -> tuple[dict[str, Any], str, int]:
    if infos is None:
        raise SnapshotError(f"no readable {SIDECAR_FILE} in {folder}")
    if not (folder / INDEX_FILE).is_file():
        raise SnapshotError(f"{folder / INDEX_FILE} is missing (its sidecar is there)")
    want, size = infos.get("checksum"), infos.get("index_bytes")
    if not isinstance(want, str) or not isinstance(size, int):
        raise SnapshotError(
            f"{folder / SIDECAR_FILE} records no checksum of {INDEX_FILE} (written before "
            f"format {SIDECAR_FORMAT_VERSION}): the file cannot be verified"
        )
    return infos, want, size


def _mismatch(folder: Path, want: str, size: int, got: str, got_size: int) -> SnapshotError:
    if got_size != size:
        what = f"is {got_size} bytes, its sidecar says {size}"
    else:
        what = f"has checksum {got[:23]}…, its sidecar says {want[:23]}…"
    return SnapshotError(f"{folder / INDEX_FILE} {what}: the file is corrupt or torn")


def read_verified(directory: str | Path) -> tuple[dict[str, Any], bytes]:
    """The sidecar and the index bytes of a snapshot whose bytes match their checksum.

    Raises:
        SnapshotError: no sidecar, no index file, no recorded checksum, or bytes that
            differ from the recorded ones (the message says which).
    """
    folder = Path(directory)
    infos, want, size = _expected(folder, read_infos(folder))
    try:
        data = (folder / INDEX_FILE).read_bytes()
    except OSError as exc:
        raise SnapshotError(f"cannot read {folder / INDEX_FILE}: {exc}") from exc
    got = checksum(data)
    if got != want or len(data) != size:
        raise _mismatch(folder, want, size, got, len(data))
    return infos, data


def verify_snapshot(directory: str | Path) -> str | None:
    """What is wrong with a snapshot's files (``None``: the bytes match the sidecar)."""
    folder = Path(directory)
    try:
        _, want, size = _expected(folder, read_infos(folder))
        got, got_size = file_checksum(folder / INDEX_FILE)
    except SnapshotError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read {folder / INDEX_FILE}: {exc}"
    if got != want or got_size != size:
        return str(_mismatch(folder, want, size, got, got_size))
    return None

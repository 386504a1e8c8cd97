"""The one "write to a temporary file, then rename" of the project.

Every artefact a crash must not tear (checkpoints, ONNX files, probes, FAISS index
files, sidecars, crop caches, thumbnails) is written through :func:`atomic_path` or
:func:`atomic_write`, with the same guarantees everywhere:

- the temporary file lies beside the target (same file system, so the rename is atomic)
  and is named ``.<name>.<random>.tmp``: a reader never sees a half-written target;
- its contents are fsynced before the rename and the folder after it (unless
  ``durable=False``, for caches that can be recomputed), so after a power loss the
  target is either the old file or the complete new one;
- on any failure, Ctrl-C included, the temporary file is removed and the target is
  left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_path", "atomic_write", "fsync_dir"]


def fsync_dir(directory: str | Path) -> None:
    """Flush a folder's entries (a rename inside it) to disk; a no-op where folders
    cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path, *, durable: bool = True, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error,
    the file written there replaces ``path`` atomically.

    For writers that want a file name (``faiss.write_index``, ``onnx.save_model``,
    ``np.savez``, a Lightning checkpoint). ``suffix`` is for writers that insist on an
    extension (``np.savez`` appends ``.npz`` to names without it). The block must
    create the file; parent folders are created first.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if durable:
        fsync_dir(target.parent)


def atomic_write(
    path: str | Path,
    data: bytes | str | Callable[[IO[bytes]], object],
    *,
    durable: bool = True,
) -> Path:
    """Write ``data`` to ``path`` atomically: bytes, text (UTF-8), or a function that
    writes into the open binary file (``lambda fh: np.save(fh, array)``)."""
    target = Path(path)
    with atomic_path(target, durable=durable) as tmp, open(tmp, "wb") as fh:
        if isinstance(data, str):
            fh.write(data.encode("utf-8"))
        elif isinstance(data, bytes | bytearray | memoryview):
            fh.write(data)
        else:
            data(fh)
    return target

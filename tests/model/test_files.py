"""model.core.files: the one atomic write (temp file beside the target, rename, cleanup)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from polypindex.model.core.files import atomic_path, atomic_write


def test_atomic_write_bytes_text_and_callable(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.bin"
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(target, "héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    atomic_write(tmp_path / "x.npy", lambda fh: np.save(fh, np.arange(3)))
    assert np.load(tmp_path / "x.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]


def test_failure_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")

    def boom(fh: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_path_for_writers_that_want_a_name(tmp_path: Path) -> None:
    target = tmp_path / "w.npz"
    with atomic_path(target, suffix=".npz") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".w.npz.")
        np.savez(tmp, a=np.ones(2))
    assert np.load(target)["a"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert np.load(target)["a"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]

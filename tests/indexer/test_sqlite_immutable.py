"""No SIGBUS with the SQLite files made unwritable under a running store (issue 24).

``chattr +i`` on the database, ``-wal`` and ``-shm`` while a store holds connections:
before, the next write killed the process (SIGBUS, SQLite writes its memory-mapped
``-shm``); now it fails with a read-only storage fault, and the store works again once
the files are writable, without a restart. Run in a child process (a crash would kill
pytest); skipped where ``chattr +i`` is refused (not root, or a file system without it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from polypindex.indexer.faults import storage_fault
from polypindex.indexer.sqlite import unwritable_files

CHILD = textwrap.dedent(
    """
    import subprocess, sys
    from polypindex.indexer.store import Store
    from polypindex.indexer.keys import create_key, count_active_keys
    db = sys.argv[1]
    store = Store("sqlite:///" + db)
    create_key(store, "before", "read", actor="test")  # a write: the -shm is mapped
    files = [db, db + "-wal", db + "-shm"]
    subprocess.run(["chattr", "+i", *files], check=True)
    try:
        for attempt in range(3):
            try:
                create_key(store, f"during-{attempt}", "read", actor="test")
                print("WROTE")
            except PermissionError as exc:
                print("REFUSED", exc.errno, exc.strerror)
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)
    create_key(store, "after", "read", actor="test")  # no restart
    print("KEYS", count_active_keys(store))
    store.close()
    """
)


def _chattr_works(folder: Path) -> bool:
    probe = folder / "probe"
    probe.write_text("x")
    if shutil.which("chattr") is None:
        return False
    if subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode:
        return False
    subprocess.run(["chattr", "-i", str(probe)], check=True)
    return True


def test_immutable_files_are_a_read_only_fault_not_a_crash(tmp_path: Path) -> None:
    if not _chattr_works(tmp_path):
        pytest.skip("chattr +i is not available here")
    db = tmp_path / "store.sqlite"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(db)], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, (child.returncode, child.stdout, child.stderr[-2000:])
    lines = child.stdout.split("\n")
    refused = [line for line in lines if line.startswith("REFUSED")]
    assert len(refused) == 3 and "WROTE" not in lines, child.stdout
    assert "store.sqlite" in refused[0] and str(tmp_path) not in refused[0]
    assert "KEYS 2" in lines  # before and after: the refused writes wrote nothing


def test_the_refusal_is_a_read_only_storage_fault(tmp_path: Path) -> None:
    fault = storage_fault(PermissionError(1, "the database cannot be written"))
    assert fault is not None and fault.kind == "read_only"
    (tmp_path / "db").write_text("x")
    assert unwritable_files(tmp_path / "db") == []

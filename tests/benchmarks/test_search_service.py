"""The search service benchmark's world and its in-process measurements, small."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from polypindex.benchmarks.search_service import _ids, _recall, _victim, bare_request_ms
from polypindex.benchmarks.search_world import DIM_ENV, build_world, make_app


def test_a_small_world_is_built_once_served_and_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "world"
    first = build_world(home, 90, 16)
    assert first["index_kind"] == "flat_ip" and not first["index_reused"]
    assert build_world(home, 90, 16)["index_reused"]  # the second run reuses both
    ids = _ids(home)
    assert len(ids) == 90 and _victim(home) == "bench/000000"
    assert len(bare_request_ms(home, ids[:30], 5)) == 10  # after 20 warm-up queries
    assert _recall(home, ids[:10], 5) == 1.0  # exact index: recall 1
    monkeypatch.setenv("POLYPINDEX_HOME", str(home))
    monkeypatch.setenv(DIM_ENV, "16")
    monkeypatch.setenv("POLYPINDEX_RUN_JOBS", "false")
    monkeypatch.delenv("POLYPINDEX_DATABASE_URL", raising=False)
    with TestClient(make_app()) as client:
        r = client.post("/search", json={"query": {"tracklet_id": ids[0]}, "k": 3})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert len(hits) == 3 and all(h["predictions"]["size"]["label"] for h in hits)

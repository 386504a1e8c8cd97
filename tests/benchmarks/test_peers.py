"""The peer benchmark's pure parts: the interleaved schedule, the summary and its table
(no server, no Chroma)."""

from __future__ import annotations

import pytest

from polypindex.benchmarks.peers.run import SINGLE, summarise, table
from polypindex.benchmarks.peers.workload import check_hits, percentiles, ratio, schedule


def test_schedule_runs_every_system_once_per_level_and_alternates_the_order() -> None:
    runs = schedule(["a", "b"], [0, 1, 5], repeats=2)
    assert len(runs) == 2 * 3 * 2
    for rep in (0, 1):
        for level in (0, 1, 5):
            assert sorted(s for r, lv, s in runs if (r, lv) == (rep, level)) == ["a", "b"]
    firsts = [s for i, (_, _, s) in enumerate(runs) if i % 2 == 0]
    assert firsts == ["a", "b", "a", "b", "a", "b"]  # rotated by level, then by repetition


def test_ratio_and_percentiles() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None
    p = percentiles([float(i) for i in range(1, 101)])
    assert p["p50"] == pytest.approx(50.5)
    assert p["p99"] == pytest.approx(99.01)
    assert percentiles([]) == {}


def test_check_hits_refuses_a_short_answer() -> None:
    check_hits([1] * 10, 10, "x")
    with pytest.raises(RuntimeError, match="9 hits, not 10"):
        check_hits([1] * 9, 10, "x")


def _row(rep: int, level: int, system: str, value: float) -> dict[str, object]:
    metric = {"p50": value, "p99": 2 * value} if level == SINGLE else {"throughput_qps": value}
    return {"repeat": rep, "level": level, "system": system, "query": "by_embedding", **metric}


def test_summary_pairs_the_systems_per_repetition_and_the_table_shows_them() -> None:
    rows = [
        _row(1, SINGLE, "chroma", 4.0),
        _row(0, SINGLE, "polypindex", 5.0),
        _row(0, SINGLE, "chroma", 2.5),
        _row(1, SINGLE, "polypindex", 4.0),
        _row(0, 50, "polypindex", 300.0),
        _row(0, 50, "chroma", 200.0),
    ]
    summary = summarise(rows)
    single = next(e for e in summary if e["level"] == SINGLE)
    assert single["p50"] == {"polypindex": [5.0, 4.0], "chroma": [2.5, 4.0]}
    assert single["p50_ratio"] == [2.0, 1.0]
    assert single["p50_ratio_median"] == 1.5
    fifty = next(e for e in summary if e["level"] == 50)
    assert fifty["throughput_qps_ratio"] == [1.5]
    text = table({"sizes": [{"n": 20_000, "summary": summary}]})
    assert "| 20,000 | by embedding | 1 client, p50 ms | 5 / 4 | 2.5 / 4 | 2 / 1 | 1.5 |" in text
    assert "| 20,000 | by embedding | 50 clients, queries/s | 300 | 200 | 1.5 | 1.5 |" in text

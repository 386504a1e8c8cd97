"""The scale benchmark's pure parts: the data, recall, the merge of runs and the sizing
table (small sizes, no timing)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from polypindex.benchmarks.scale import (
    dataset,
    exact_top,
    label_of,
    merge,
    recall_at_k,
    sizing_table,
)


def test_dataset_is_deterministic_unit_vectors() -> None:
    db, q = dataset(500, 32, 20, seed=3)
    again_db, again_q = dataset(500, 32, 20, seed=3)
    other, _ = dataset(500, 32, 20, seed=4)
    assert db.shape == (500, 32) and q.shape == (20, 32) and db.dtype == np.float32
    np.testing.assert_array_equal(db, again_db)
    np.testing.assert_array_equal(q, again_q)
    assert not np.array_equal(db, other)
    np.testing.assert_allclose(np.linalg.norm(db, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


def test_exact_top_matches_brute_force_and_recall_counts_overlap() -> None:
    db, q = dataset(400, 16, 10, seed=0)
    top = exact_top(db, q, 5)
    brute = np.argsort(-(q @ db.T), axis=1)[:, :5]
    assert [set(r) for r in top.tolist()] == [set(r) for r in brute.tolist()]
    assert recall_at_k([list(r) for r in top.tolist()], top) == 1.0
    half = [[*r[:2], -1, -2, -3] for r in top.tolist()]  # 2 of 5 right per query
    assert recall_at_k(half, top) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="answers for"):
        recall_at_k(half[:3], top)


def _args(**kw: object) -> argparse.Namespace:
    base = {"kind": "hnsw", "n": 1000, "m": 16, "ef_construction": 40, "nlist": 0, "pq_m": 8}
    return argparse.Namespace(**{**base, "threads": 2, **kw})


def _run(kind: str, n: int, bpv: float, recalls: list[float], **kw: object) -> dict[str, object]:
    settings = [
        {"setting": 10 * (i + 1), "recall@10": r, "p50": 1.0 + i, "p99": 3.0 + i}
        for i, r in enumerate(recalls)
    ]
    run = {"kind": kind, "n": n, "bytes_per_vector": bpv, "build_s": 5.0, "build_cpu_s": 7.0}
    return {
        "label": f"{kind}{n}",
        "m": 32,
        "ef_construction": 40,
        "nlist": 1024,
        "pq_m": 64,
        "threads": 2,
        **run,
        "by_setting": settings,
        **kw,
    }


def test_label_names_the_build_parameters() -> None:
    assert label_of(_args()) == "hnsw_n1000_M16_efc40_t2"
    assert label_of(_args(kind="ivf", nlist=4096)) == "ivf_n1000_nlist4096_t2"
    assert label_of(_args(kind="ivfpq")) == "ivfpq_n1000_nlistauto_pq8_t2"


def test_merge_replaces_the_run_of_the_same_label(tmp_path: Path) -> None:
    path = tmp_path / "scale.json"
    path.write_text(
        json.dumps({"runs": [_run("ivf", 10, 1.0, [0.5]), _run("hnsw", 10, 1.0, [0.5])]})
    )
    doc = merge(path, _run("ivf", 10, 2.0, [0.9]))
    assert [r["label"] for r in doc["runs"]] == ["hnsw10", "ivf10"]
    assert next(r for r in doc["runs"] if r["kind"] == "ivf")["bytes_per_vector"] == 2.0


def test_sizing_table_picks_the_cheapest_setting_reaching_the_target_and_marks_extrapolation() -> (
    None
):
    runs = [
        _run("ivf", 10**6, 1073.741824, [0.95, 0.995, 0.999]),  # 1 GiB per 10^6 vectors
        _run("hnsw", 10**6, 2147.483648, [0.9, 0.97]),  # never reaches 0.99: its best
    ]
    text = sizing_table(runs, target=0.99)
    ivf = next(line for line in text.splitlines() if line.startswith("| ivf"))
    assert "| 20 | 0.995 | 2.0 / 4.0 |" in ivf
    assert "| 5.0 / 7.0 (1e+06, 2 thr) |" in ivf
    assert "1.00 GiB |" in ivf and "10.00 GiB *extrapolated*" in ivf
    assert "0.10 GiB |" in ivf  # 10^5 is below the measured size: not extrapolated
    hnsw = next(line for line in text.splitlines() if line.startswith("| hnsw"))
    assert "| 20 | 0.970 |" in hnsw and "20.00 GiB *extrapolated*" in hnsw

"""Vector search: exact (flat IP) vs approximate (HNSW, IVF) — latency, recall@10, build, memory.

Synthetic L2-normalised vectors shaped like tracklet embeddings (D=256, clusters
of about 20 near-duplicates, as several tracklets of one polyp), indexed with
the product's :class:`indexer.vectors.VectorIndex`. For each size: build
time, bytes per vector of the saved index (and per million vectors), single-query
latency p50/p99 with k=10 (one FAISS thread), and recall@10 against exact search of
HNSW for a few ``efSearch`` values and of IVF for a few ``nprobe`` values. HNSW is
skipped above ``--hnsw-max`` vectors (its build takes about 40 min for 10^6 vectors
on 2 cores; that is why the product switches to IVF there). Each size also records
the kind the product's default :class:`IndexPolicy` picks for it. Results go to
JSON with the hardware and library versions.

    python benchmarks/index_search.py --sizes 10000 100000 1000000 --out var/bench/index_search.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from polypindex.benchmarks.env import environment
from polypindex.indexer.vectors import EXACT, HNSW, IVF, IndexPolicy, VectorIndex


def synthetic(n: int, dim: int, rng: np.random.Generator, group: int = 20) -> np.ndarray:
    """``n`` unit vectors in clusters of about ``group`` (noise 0.5 around random centres)."""
    centres = rng.standard_normal((max(1, n // group), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim)).astype(
        np.float32
    ) / np.sqrt(dim / 16)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _latencies(
    index: VectorIndex, queries: np.ndarray, k: int
) -> tuple[list[list[int]], np.ndarray]:
    """One query at a time on one thread (what a request sees), after 10 warm-up queries."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    for q in queries[:10]:
        index.search(q, k)
    found, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        (hits,) = index.search(q, k)
        times.append(time.perf_counter() - t0)
        found.append([i for i, _ in hits])
    faiss.omp_set_num_threads(threads)
    return found, np.asarray(times) * 1e3


def _recall(got: list[list[int]], want: list[list[int]]) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


def _size_bytes(index: VectorIndex, folder: Path) -> int:
    path = index.save(folder)
    return path.stat().st_size


def run_size(
    n: int,
    dim: int,
    n_queries: int,
    k: int,
    ef_values: list[int],
    m: int,
    seed: int,
    tmp: Path,
    nprobe_values: list[int] | None = None,
    hnsw_max: int = 100_000,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    db = synthetic(n, dim, rng)
    ids = np.arange(1, n + 1, dtype=np.int64)
    # queries: perturbed database vectors (a new tracklet of an indexed polyp)
    queries = db[rng.integers(0, n, n_queries)] + 0.3 * rng.standard_normal(
        (n_queries, dim)
    ).astype(np.float32) / np.sqrt(dim / 16)
    out: dict[str, Any] = {
        "n": n,
        "dim": dim,
        "k": k,
        "queries": n_queries,
        "product_kind": IndexPolicy().kind_for(n),
    }

    t0 = time.perf_counter()
    exact = VectorIndex(dim, "bench", kind=EXACT)
    exact.add(ids, db)
    build_exact = time.perf_counter() - t0
    truth, lat = _latencies(exact, queries, k)
    size = _size_bytes(exact, tmp / f"flat{n}")
    out["exact"] = {
        "build_s": round(build_exact, 3),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "bytes_per_vector": round(size / n, 1),
        "mb_per_million": round(size / n * 1e6 / 2**20, 1),
    }
    del exact

    out["ivf"] = _run_ivf(db, ids, queries, truth, k, nprobe_values or [8, 16, 32, 64], tmp)
    if n > hnsw_max:
        out["hnsw"] = {"skipped": f"n > --hnsw-max {hnsw_max}"}
        return out
    policy = IndexPolicy(hnsw_m=m, hnsw_ef_construction=200, hnsw_ef_search=max(ef_values))
    t0 = time.perf_counter()
    approx = VectorIndex(dim, "bench", kind=HNSW, policy=policy)
    approx.add(ids, db)
    build_hnsw = time.perf_counter() - t0
    size = _size_bytes(approx, tmp / f"hnsw{n}")
    out["hnsw"] = {
        "m": m,
        "ef_construction": 200,
        "build_s": round(build_hnsw, 3),
        "bytes_per_vector": round(size / n, 1),
        "mb_per_million": round(size / n * 1e6 / 2**20, 1),
        "by_ef_search": [],
    }
    for ef in ef_values:
        approx.policy = IndexPolicy(hnsw_m=m, hnsw_ef_construction=200, hnsw_ef_search=ef)
        got, lat = _latencies(approx, queries, k)
        out["hnsw"]["by_ef_search"].append(
            {
                "ef_search": ef,
                "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3),
                f"recall@{k}": round(_recall(got, truth), 4),
            }
        )
    return out


def _run_ivf(
    db: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    truth: list[list[int]],
    k: int,
    nprobe_values: list[int],
    tmp: Path,
) -> dict[str, Any]:
    """The product's IVF (automatic list count) built on all vectors, for each ``nprobe``."""
    n = len(db)
    t0 = time.perf_counter()
    index = VectorIndex(db.shape[1], "bench", kind=IVF, policy=IndexPolicy())
    index.add(ids, db)
    build = time.perf_counter() - t0
    size = _size_bytes(index, tmp / f"ivf{n}")
    out: dict[str, Any] = {
        "nlist": index.nlist(),
        "build_s": round(build, 3),
        "bytes_per_vector": round(size / n, 1),
        "mb_per_million": round(size / n * 1e6 / 2**20, 1),
        "by_nprobe": [],
    }
    for nprobe in nprobe_values:
        index.policy = IndexPolicy(ivf_nprobe=nprobe)
        got, lat = _latencies(index, queries, k)
        out["by_nprobe"].append(
            {
                "nprobe": nprobe,
                "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3),
                f"recall@{k}": round(_recall(got, truth), 4),
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ef", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--m", type=int, default=32)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="skip HNSW above this size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("var/bench/index_search.json"))
    args = parser.parse_args(argv)
    import tempfile

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            res = run_size(
                n,
                args.dim,
                args.queries,
                args.k,
                args.ef,
                args.m,
                args.seed,
                Path(tmp),
                nprobe_values=args.nprobe,
                hnsw_max=args.hnsw_max,
            )
            print(json.dumps(res), flush=True)
            results.append(res)
    report = {"benchmark": "index_search", "environment": environment(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written {args.out}")
    return report


if __name__ == "__main__":
    main()

"""10^6 vectors in the product's index kinds: build time, recall@10, latency, memory.

One configuration per run (each stays within minutes on 2 shared cores), merged into
one JSON file under its label, so a run can be repeated or added without redoing the
others:

- vectors: ``n`` clustered unit vectors of dimension 256 (the service benchmarks'
  :func:`~polypindex.benchmarks.search_world.clustered`), queries: 1,000 database
  vectors perturbed as a new tracklet of an indexed polyp (:func:`queries_near`);
- truth: exact top-10 of every query (FAISS flat inner product, cached under
  ``--cache``);
- per configuration: build time with ``--threads`` FAISS threads (OpenMP: HNSW's
  insertion and IVF's k-means and assignment are parallel), wall-clock and CPU
  seconds (the CPU figure is what the build costs on a machine shared with other
  work, where the wall-clock depends on the load; run it under ``nice``: as root the
  niceness goes back to 0 for the timed searches), bytes per vector of the
  serialised index and the process's RSS growth, then for each search setting
  (``efSearch`` / ``nprobe``) recall@10 against the truth and the single-query p50/p99
  of the bare :meth:`VectorIndex.search` on one thread;
- kinds: ``exact`` (``flat_ip``), ``hnsw`` (``hnsw_ip``), ``ivf`` (``ivf_ip``) through
  :class:`~polypindex.indexer.vectors.index.VectorIndex`, and ``ivfpq`` (FAISS
  ``IndexIVFPQ``, not a product kind: what compression would give) on bare FAISS.

``table`` prints the sizing table of docs/search.md from the measured runs: measured
up to the largest ``n`` run, extrapolated beyond from the measured bytes per vector.

    python -m polypindex.benchmarks.scale run --kind hnsw --m 32 --ef-construction 40 --search 256 512 1024
    python -m polypindex.benchmarks.scale run --kind ivf --nlist 4096 --search 32 64 128
    python -m polypindex.benchmarks.scale table
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from polypindex.benchmarks.env import environment, write_result
from polypindex.benchmarks.search_world import clustered
from polypindex.indexer.vectors.index import VectorIndex
from polypindex.indexer.vectors.policy import EXACT, HNSW, IVF, IndexPolicy

RESULT = Path("polypindex/benchmarks/results/scale.json")
SIZES = (10**5, 10**6, 10**7)
KINDS = ("exact", "hnsw", "ivf", "ivfpq")


def queries_near(db: np.ndarray, n_queries: int, rng: np.random.Generator) -> np.ndarray:
    """``n_queries`` unit vectors near database vectors (noise 0.3 per √(D/16))."""
    dim = db.shape[1]
    picks = rng.integers(0, len(db), n_queries)
    noise = rng.standard_normal((n_queries, dim)).astype(np.float32) * (0.3 / np.sqrt(dim / 16))
    q = db[picks] + noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def dataset(n: int, dim: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The database and the queries of one size: deterministic for ``(n, dim, seed)``."""
    rng = np.random.default_rng(seed)
    db = clustered(n, dim, rng)
    return db, queries_near(db, n_queries, np.random.default_rng(seed + 1))


def exact_top(db: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row positions of the exact top-``k`` of each query (inner product), ``(Q, k)``."""
    flat = faiss.IndexFlatIP(db.shape[1])
    flat.add(db)
    _, labels = flat.search(queries, k)
    return labels.astype(np.int64)


def recall_at_k(got: list[list[int]], truth: np.ndarray) -> float:
    """Mean share of each query's true top-k found among its returned ids."""
    if len(got) != len(truth):
        raise ValueError(f"{len(got)} answers for {len(truth)} queries")
    k = truth.shape[1]
    return float(
        np.mean([len(set(g) & set(t.tolist())) / k for g, t in zip(got, truth, strict=True)])
    )


def percentiles(ms: np.ndarray) -> dict[str, float]:
    return {q: round(float(np.percentile(ms, int(q[1:]))), 3) for q in ("p50", "p99")}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds this process has used (all threads): a build's cost on a shared machine."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _timed_search(search: Any, queries: np.ndarray, k: int) -> tuple[list[list[int]], np.ndarray]:
    """One query at a time on one FAISS thread, after 10 warm-up queries; ids and ms."""
    faiss.omp_set_num_threads(1)
    for q in queries[:10]:
        search(q, k)
    found, times = [], []
    for q in queries:
        t0 = time.perf_counter()
        ids = search(q, k)
        times.append(time.perf_counter() - t0)
        found.append(ids)
    return found, np.asarray(times) * 1e3


def _policy(args: argparse.Namespace, setting: int | None = None) -> IndexPolicy:
    extra: dict[str, Any] = {}
    if args.kind == "hnsw" and setting is not None:
        extra["hnsw_ef_search"] = setting
    if args.kind == "ivf" and setting is not None:
        extra["ivf_nprobe"] = setting
    return IndexPolicy(
        hnsw_m=args.m,
        hnsw_ef_construction=args.ef_construction,
        ivf_nlist=args.nlist,
        device="cpu",
        **extra,
    )


def _build_product(args: argparse.Namespace, db: np.ndarray) -> tuple[Any, Any, int, int]:
    """A :class:`VectorIndex` of the asked kind over ``db`` (ids = row positions):
    the index, its search function, its serialised bytes and its ``nlist``."""
    kind = {"exact": EXACT, "hnsw": HNSW, "ivf": IVF}[args.kind]
    index = VectorIndex(db.shape[1], "bench-scale", kind=kind, policy=_policy(args))
    index.add(np.arange(len(db), dtype=np.int64), db)
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        size = index.save(Path(tmp)).stat().st_size  # the saved index file

    def search(q: np.ndarray, k: int) -> list[int]:
        return [i for i, _ in index.search(q, k)[0]]

    return index, search, size, int(index.nlist() or 0)


def _build_ivfpq(args: argparse.Namespace, db: np.ndarray) -> tuple[Any, Any, int, int]:
    """Bare FAISS ``IndexIVFPQ`` (``--pq-m`` bytes per vector, 8-bit codes)."""
    dim = db.shape[1]
    nlist = args.nlist or IndexPolicy().nlist_for(len(db))
    ivf = faiss.IndexIVFPQ(
        faiss.IndexFlatIP(dim), dim, nlist, args.pq_m, 8, faiss.METRIC_INNER_PRODUCT
    )
    sample = db[
        np.random.default_rng(0).choice(len(db), min(len(db), nlist * 64 + 10_000), replace=False)
    ]
    ivf.train(sample)
    ivf.add(db)
    size = int(faiss.serialize_index(ivf).size)

    def search(q: np.ndarray, k: int) -> list[int]:
        _, labels = ivf.search(q.reshape(1, -1), k)
        return [int(i) for i in labels[0] if i >= 0]

    return ivf, search, size, nlist


def _set_search(args: argparse.Namespace, index: Any, setting: int) -> None:
    if args.kind == "ivfpq":
        index.nprobe = setting
    else:
        index.policy = _policy(args, setting)


def label_of(args: argparse.Namespace) -> str:
    """The run's key in the result file: kind, size and build parameters."""
    parts = [args.kind, f"n{args.n}"]
    if args.kind == "hnsw":
        parts += [f"M{args.m}", f"efc{args.ef_construction}"]
    if args.kind in ("ivf", "ivfpq"):
        parts.append(f"nlist{args.nlist or 'auto'}")
    if args.kind == "ivfpq":
        parts.append(f"pq{args.pq_m}")
    return "_".join([*parts, f"t{args.threads}"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    db, queries = dataset(args.n, args.dim, args.queries, args.seed)
    truth_file = args.cache / f"truth_n{args.n}_d{args.dim}_q{args.queries}_s{args.seed}.npy"
    if truth_file.exists():
        truth = np.load(truth_file)
    else:
        faiss.omp_set_num_threads(args.threads)
        truth = exact_top(db, queries, args.k)
        truth_file.parent.mkdir(parents=True, exist_ok=True)
        np.save(truth_file, truth)
    prepare_s = time.perf_counter() - t0
    faiss.omp_set_num_threads(args.threads)
    rss0, load0 = _rss_mb(), _load()
    t0, cpu0 = time.perf_counter(), _cpu_s()
    build = _build_ivfpq if args.kind == "ivfpq" else _build_product
    args.cache.mkdir(parents=True, exist_ok=True)
    index, search, size, nlist = build(args, db)
    build_s, build_cpu_s = time.perf_counter() - t0, _cpu_s() - cpu0
    out: dict[str, Any] = {
        "label": label_of(args),
        "kind": args.kind,
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "queries": args.queries,
        "threads": args.threads,
        "m": args.m if args.kind == "hnsw" else None,
        "ef_construction": args.ef_construction if args.kind == "hnsw" else None,
        "nlist": nlist or None,
        "pq_m": args.pq_m if args.kind == "ivfpq" else None,
        "prepare_s": round(prepare_s, 1),
        "build_s": round(build_s, 1),
        "build_cpu_s": round(build_cpu_s, 1),
        "load_before_build": load0,
        "load_after_build": _load(),
        "bytes_per_vector": round(size / args.n, 1),
        "rss_growth_mb": round(_rss_mb() - rss0, 1),
        "by_setting": [],
    }
    out["build_niceness"] = os.getpriority(os.PRIO_PROCESS, 0)
    if out["build_niceness"] > 0 and os.geteuid() == 0:
        os.setpriority(os.PRIO_PROCESS, 0, 0)  # niced for the build, not for the timing
    out["search_niceness"] = os.getpriority(os.PRIO_PROCESS, 0)
    settings = args.search or [0]
    latency_queries = queries[: args.latency_queries] if args.kind == "exact" else queries
    for setting in settings:
        if setting:
            _set_search(args, index, setting)
        got, ms = _timed_search(search, latency_queries, args.k)
        if args.kind == "exact":
            got = got + [list(map(int, t)) for t in truth[len(got) :]]  # exact by definition
        out["by_setting"].append(
            {
                "setting": setting or None,
                f"recall@{args.k}": round(recall_at_k(got, truth), 4),
                **percentiles(ms),
                "latency_queries": len(ms),
                "load": _load(),
            }
        )
        print(out["label"], out["by_setting"][-1], flush=True)
    return out


def merge(path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """The result file with ``entry`` in place of the run of the same label."""
    import json

    doc: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    runs = [r for r in doc.get("runs", []) if r.get("label") != entry["label"]]
    runs.append(entry)
    runs.sort(key=lambda r: (r["n"], r["kind"], r["label"]))
    return {"benchmark": "scale", "runs": runs, "environment": environment()}


def best_runs(runs: list[dict[str, Any]], target: float) -> list[dict[str, Any]]:
    """Per kind, the measured run at the largest ``n`` with its cheapest setting that
    reaches ``target`` recall (else its best recall), for the sizing table."""
    chosen: dict[str, dict[str, Any]] = {}
    for r in runs:
        rows = r["by_setting"]
        key = next(k for k in rows[0] if k.startswith("recall@"))
        ok = [s for s in rows if s[key] >= target]
        pick = min(ok, key=lambda s: s["p50"]) if ok else max(rows, key=lambda s: s[key])
        cand = {**r, "pick": pick, "recall": pick[key]}
        old = chosen.get(r["kind"])
        better = old is None or (r["n"], cand["recall"] >= target, -cand["pick"]["p50"]) > (
            old["n"],
            old["recall"] >= target,
            -old["pick"]["p50"],
        )
        if better:
            chosen[r["kind"]] = cand
    return [chosen[k] for k in KINDS if k in chosen]


def sizing_table(runs: list[dict[str, Any]], target: float = 0.99) -> str:
    """Markdown: per kind, memory at 10^5 … 10^7 (measured bytes per vector × N; sizes
    above the measured ``n`` marked *extrapolated*), build time (wall-clock and CPU
    seconds), recall and latency."""
    head = "| kind (parameters) | search setting | recall@10 | p50 / p99 ms | build s, wall / CPU (n) |"
    head += "".join(f" memory at {n:.0e} |" for n in SIZES)
    lines = [head, "|" + " --- |" * (5 + len(SIZES))]
    for r in best_runs(runs, target):
        params = {
            "exact": "flat",
            "hnsw": f"M {r['m']}, efC {r['ef_construction']}",
            "ivf": f"nlist {r['nlist']}",
            "ivfpq": f"nlist {r['nlist']}, {r['pq_m']} B codes",
        }[r["kind"]]
        mem = []
        for n in SIZES:
            gib = r["bytes_per_vector"] * n / 2**30
            mem.append(f"{gib:.2f} GiB" + (" *extrapolated*" if n > r["n"] else ""))
        p = r["pick"]
        lines.append(
            f"| {r['kind']} ({params}) | {p['setting'] or '-'} | {r['recall']:.3f} | "
            f"{p['p50']} / {p['p99']} | {r['build_s']} / {r.get('build_cpu_s', '-')} "
            f"({r['n']:.0e}, {r['threads']} thr) | " + " | ".join(mem) + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("what", choices=["run", "table"])
    parser.add_argument("--kind", choices=KINDS, default="exact")
    parser.add_argument("--n", type=int, default=10**6)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--latency-queries", type=int, default=200, help="exact: timed queries")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--m", type=int, default=32, help="HNSW M")
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (0: the product's)")
    parser.add_argument("--pq-m", type=int, default=64, help="IVF-PQ bytes per vector")
    parser.add_argument("--search", type=int, nargs="*", default=[], help="efSearch / nprobe")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="build threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=Path("var/bench/scale"))
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--target", type=float, default=0.99, help="table: recall to reach")
    args = parser.parse_args(argv)
    if args.what == "table":
        import json

        table = sizing_table(json.loads(args.out.read_text())["runs"], args.target)
        print(table)
        return table
    entry = run(args)
    write_result(args.out, merge(args.out, entry), echo=False)
    return entry


if __name__ == "__main__":
    main()

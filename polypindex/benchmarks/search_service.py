"""The search service under load, over real HTTP on loopback (docs/search.md).

Three measurements, each against a server started here (``uvicorn --factory
polypindex.benchmarks.search_world:make_app``, ``--workers`` processes) over a home
built by :func:`benchmarks.search_world.build_world` (reused between runs):

- ``single``: one client, ``/search`` by tracklet id, p50/p99, and in the same run the
  bare work of that request in this process (the query row, ``VectorIndex.search``,
  the hits' one metadata query): the service's own cost is the difference;
- ``concurrency``: 1, 2, 5, 10, 50 concurrent clients (asyncio, one process) running a
  mix of ``/search`` by id, ``/reid`` by ids, ``/search`` by frames and ``/healthz``:
  throughput, errors and p99 per operation at each level;
- ``large``: a large HNSW index (saved once, reused): single-client ``/search`` by id
  p50/p99, recall@10 of the served index against exact search, and the search p99
  before and after a ``DELETE /procedures/{uid}`` issued in the middle of a search load.

The client runs on the same machine as the server and shares its cores.

    python benchmarks/search_service.py single --home var/bench/world_250 --n 250
    python benchmarks/search_service.py concurrency --home var/bench/world_250 --n 250 --seconds 15
    python benchmarks/search_service.py large --home var/bench/world_1e5 --n 100000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np

from polypindex.benchmarks.env import environment, write_result
from polypindex.benchmarks.search_world import DIM_ENV, VERSION, build_world
from polypindex.benchmarks.serving import free_port, wait_until_healthy
from polypindex.indexer.generations import generation_dir
from polypindex.indexer.hits import hit_records
from polypindex.indexer.store import Store
from polypindex.indexer.vectors import IndexPolicy, VectorIndex
from polypindex.model.core.layout import Layout


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


@contextmanager
def serving(home: Path, dim: int, workers: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A benchmark server over ``home`` on a free port; yields its base URL and process."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "polypindex.benchmarks.search_world:make_app",
    ]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    cmd += ["--no-access-log", "--log-level", "warning"]
    env = {
        **os.environ,
        "POLYPINDEX_HOME": str(home),
        DIM_ENV: str(dim),
        "POLYPINDEX_RUN_JOBS": "false",
    }
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            wait_until_healthy(
                client,
                server,
                600,
                lambda health: (
                    health.get("index_state") == "ready" and bool(health.get("index_size"))
                ),
            )
        yield base, server
    finally:
        server.terminate()
        server.wait(timeout=60)


def _memory(server: subprocess.Popen[bytes]) -> dict[str, Any]:
    workers = _children(server.pid)
    return {
        "master_rss_mb": round(_rss_mb(server.pid), 1),
        "worker_rss_mb": [round(_rss_mb(p), 1) for p in workers],
    }


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {q: round(float(np.percentile(a, int(q[1:]))), 3) for q in ("p50", "p90", "p99")}


def _ids(home: Path) -> list[int]:
    store = Store(Layout(home=home).database_url)
    try:
        return store.tracklet_ids(VERSION).tolist()
    finally:
        store.close()


# -- single --------------------------------------------------------------------------------


def bare_request_ms(
    home: Path, queries: list[int], k: int, *, two_reads: bool = False
) -> list[float]:
    """The work of one ``/search`` by id without HTTP, in this process, per query (ms);
    ``two_reads``: the hits' rows and predictions read as before this issue (two
    session queries, ``Store.get_tracklets`` + ``Store.predictions_for``)."""
    lay = Layout(home=home)
    store = Store(lay.database_url)
    index = VectorIndex.load(generation_dir(lay.index_dir, VERSION))
    out = []
    try:
        for n, tid in enumerate(queries):
            t0 = time.perf_counter()
            record = store.get_tracklet(tid)
            hits = index.search(record.embedding, k, exclude_ids={tid})[0]
            if two_reads:
                store.get_tracklets([i for i, _ in hits])
                store.predictions_for([i for i, _ in hits])
            else:
                hit_records(store.engine, [i for i, _ in hits])
            if n >= 20:
                out.append((time.perf_counter() - t0) * 1000)
    finally:
        store.close()
    return out


def http_ms(base: str, queries: list[int], k: int) -> list[float]:
    out = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for n, tid in enumerate(queries):
            t0 = time.perf_counter()
            r = client.post("/search", json={"query": {"tracklet_id": tid}, "k": k})
            dt = (time.perf_counter() - t0) * 1000
            if r.status_code != 200:
                raise SystemExit(f"search failed: {r.status_code} {r.text}")
            if n >= 20:
                out.append(dt)
    return out


def run_single(args: argparse.Namespace) -> dict[str, Any]:
    world = build_world(args.home, args.n, args.dim)
    ids = _ids(args.home)
    queries = [int(i) for i in np.random.default_rng(args.seed).choice(ids, args.requests + 20)]
    with serving(args.home, args.dim, args.workers) as (base, server):
        bare = bare_request_ms(args.home, queries, args.k)
        http = http_ms(base, queries, args.k)
        bare_again = bare_request_ms(args.home, queries, args.k)  # both sides of the HTTP run
        two_reads = bare_request_ms(args.home, queries, args.k, two_reads=True)
        memory = _memory(server)
    b, h = _pct(bare + bare_again), _pct(http)
    return {
        "benchmark": "search_service_single_client",
        "world": world,
        "k": args.k,
        "requests": len(http),
        "workers": args.workers,
        "http_search_by_id_ms": h,
        "bare_search_plus_metadata_ms": b,
        "bare_with_two_metadata_reads_ms": _pct(two_reads),
        "service_overhead_p50_ms": round(h["p50"] - b["p50"], 3),
        "http_over_bare_p50": round(h["p50"] / b["p50"], 2),
        "memory": memory,
    }


# -- concurrency ---------------------------------------------------------------------------


def _png_b64(rng: random.Random) -> str:
    img = np.full((32, 32, 3), [rng.randrange(256) for _ in range(3)], dtype=np.uint8)
    ok, data = cv2.imencode(".png", img)
    assert ok
    return base64.b64encode(data.tobytes()).decode()


MIX = (("search_id", 0.5), ("reid", 0.2), ("search_frames", 0.1), ("health", 0.2))


async def _client(
    base: str,
    ids: list[int],
    until: float,
    seed: int,
    log: list[tuple[str, float, bool]],
    errors: list[str],
) -> None:
    rng = random.Random(seed)
    frames = [{"image_b64": _png_b64(rng), "bbox": [4, 4, 28, 28]} for _ in range(4)]
    names = [name for name, _ in MIX]
    weights = [weight for _, weight in MIX]
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        while time.monotonic() < until:
            op = rng.choices(names, weights)[0]
            t0 = time.perf_counter()
            try:
                if op == "search_id":
                    r = await client.post(
                        "/search", json={"query": {"tracklet_id": rng.choice(ids)}, "k": 10}
                    )
                elif op == "reid":
                    a, b = rng.choice(ids), rng.choice(ids)
                    r = await client.post(
                        "/reid", json={"a": {"tracklet_id": a}, "b": {"tracklet_id": b}}
                    )
                elif op == "search_frames":
                    r = await client.post("/search", json={"query": {"frames": frames}, "k": 10})
                else:
                    r = await client.get("/healthz")
                ok = r.status_code == 200
                if not ok:
                    errors.append(f"{op}: {r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                ok = False
                errors.append(f"{op}: {type(exc).__name__}")
            log.append((op, (time.perf_counter() - t0) * 1000, ok))


async def _level(base: str, ids: list[int], clients: int, seconds: float) -> dict[str, Any]:
    log: list[tuple[str, float, bool]] = []
    errors: list[str] = []
    until = time.monotonic() + seconds
    t0 = time.monotonic()
    await asyncio.gather(
        *(_client(base, ids, until, 1000 * clients + i, log, errors) for i in range(clients))
    )
    wall = time.monotonic() - t0
    by_op: dict[str, list[float]] = defaultdict(list)
    for op, ms, ok in log:
        if ok:
            by_op[op].append(ms)
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": len(log),
        "errors": sum(1 for _, _, ok in log if not ok),
        "error_kinds": dict(Counter(errors).most_common(5)),
        "throughput_rps": round(sum(1 for _, _, ok in log if ok) / wall, 1),
        "latency_ms": {op: {**_pct(v), "n": len(v)} for op, v in sorted(by_op.items())},
    }


def run_concurrency(args: argparse.Namespace) -> dict[str, Any]:
    world = build_world(args.home, args.n, args.dim)
    ids = _ids(args.home)
    levels = []
    with serving(args.home, args.dim, args.workers) as (base, server):
        for clients in args.levels:
            seconds = args.seconds_50 if clients >= 50 else args.seconds
            levels.append(asyncio.run(_level(base, ids, clients, seconds)))
            print(
                levels[-1]["clients"],
                levels[-1]["throughput_rps"],
                levels[-1]["errors"],
                flush=True,
            )
        memory = _memory(server)
    best_lower = max(lv["throughput_rps"] for lv in levels[:-1]) if len(levels) > 1 else None
    top = levels[-1]
    return {
        "benchmark": "search_service_concurrency",
        "world": world,
        "workers": args.workers,
        "mix": dict(MIX),
        "levels": levels,
        "top_level_over_best_lower": round(top["throughput_rps"] / best_lower, 3)
        if best_lower
        else None,
        "memory": memory,
        "note": "client (asyncio, one process) and server share the machine's cores",
    }


# -- large ---------------------------------------------------------------------------------


def _recall(home: Path, queries: list[int], k: int) -> float:
    lay = Layout(home=home)
    store = Store(lay.database_url)
    index = VectorIndex.load(generation_dir(lay.index_dir, VERSION))
    try:
        ids, vectors = store.embeddings_for_ids(store.tracklet_ids(VERSION).tolist())
    finally:
        store.close()
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    pos = {int(i): n for n, i in enumerate(ids)}
    hits = 0
    for tid in queries:
        q = vectors[pos[tid]]
        scores = vectors @ q
        scores[pos[tid]] = -np.inf
        want = set(ids[np.argpartition(-scores, k)[:k]].tolist())
        got = {i for i, _ in index.search(q, k, exclude_ids={tid})[0]}
        hits += len(want & got)
    return hits / (k * len(queries))


def _victim(home: Path) -> str:
    """A procedure to delete (each run deletes another one)."""
    store = Store(Layout(home=home).database_url)
    try:
        return store.list_procedures(VERSION)[0].uid
    finally:
        store.close()


def _load(base: str, ids: list[int], seconds: float, seed: int) -> list[tuple[float, float]]:
    """Sequential ``/search`` by id for ``seconds``: ``(start time, ms)`` per request."""
    rng = random.Random(seed)
    out = []
    until = time.monotonic() + seconds
    with httpx.Client(base_url=base, timeout=60) as client:
        while time.monotonic() < until:
            t = time.monotonic()
            r = client.post("/search", json={"query": {"tracklet_id": rng.choice(ids)}, "k": 10})
            if r.status_code == 200:  # a deleted id answers 404: not a search
                out.append((t, (time.monotonic() - t) * 1000))
    return out


def run_large(args: argparse.Namespace) -> dict[str, Any]:
    policy = IndexPolicy(approximate_threshold=min(args.n // 2, 100_000))  # HNSW, well inside
    world = build_world(args.home, args.n, args.dim, policy=policy)
    ids = _ids(args.home)
    rng = np.random.default_rng(args.seed)
    recall = _recall(args.home, [int(i) for i in rng.choice(ids, args.recall_queries)], 10)
    queries = [int(i) for i in rng.choice(ids, args.requests + 20)]
    with serving(args.home, args.dim, args.workers) as (base, server):
        single = _pct(http_ms(base, queries, 10))
        result: dict[str, Any] = {}
        loader = threading.Thread(
            target=lambda: result.update(load=_load(base, ids, 2 * args.delete_after, args.seed))
        )
        loader.start()
        time.sleep(args.delete_after)
        with httpx.Client(base_url=base, timeout=600) as client:
            uid = _victim(args.home)
            t_delete = time.monotonic()
            deleted: Any
            if args.control:  # the same split of the load, no DELETE: how noisy p99 is
                delete_ms, deleted = 0.0, 0
            else:
                r = client.delete(f"/procedures/{uid}")
                delete_ms = (time.monotonic() - t_delete) * 1000
                deleted = r.json().get("tracklets_removed") if r.status_code == 200 else r.text
        loader.join()
        memory = _memory(server)
    load = result["load"]
    before = [ms for t, ms in load if t < t_delete]
    after = [ms for t, ms in load if t >= t_delete]
    pb, pa = _pct(before), _pct(after)
    return {
        "benchmark": "search_service_large_hnsw",
        "world": world,
        "recall_at_10": round(recall, 4),
        "recall_queries": args.recall_queries,
        "single_client_search_by_id_ms": single,
        "delete": {
            "uid": uid,
            "removed": deleted,
            "ms": round(delete_ms, 2),
            "control": args.control,
        },
        "search_p99_before_delete_ms": pb.get("p99"),
        "search_p99_after_delete_ms": pa.get("p99"),
        "after_over_before_p99": round(pa["p99"] / pb["p99"], 3) if pa and pb else None,
        "load_requests": {"before": len(before), "after": len(after)},
        "memory": memory,
        "note": "client and server share the machine's cores",
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("what", choices=["single", "concurrency", "large"])
    parser.add_argument("--home", type=Path, required=True, help="the world's folder (reused)")
    parser.add_argument("--n", type=int, default=250, help="tracklets in the world")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 5, 10, 50])
    parser.add_argument("--seconds", type=float, default=15.0, help="per concurrency level")
    parser.add_argument("--seconds-50", type=float, default=60.0, help="for 50 clients and more")
    parser.add_argument("--recall-queries", type=int, default=200)
    parser.add_argument(
        "--delete-after", type=float, default=15.0, help="s of load before the DELETE"
    )
    parser.add_argument(
        "--control", action="store_true", help="large: split the load without a DELETE"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    run = {"single": run_single, "concurrency": run_concurrency, "large": run_large}[args.what]
    result = {**run(args), "environment": environment()}
    out = args.out or Path(f"var/bench/search_service_{args.what}.json")
    write_result(out, result)
    return result


if __name__ == "__main__":
    main()

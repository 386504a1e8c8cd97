"""`/search` latency by tracklet id over real HTTP on loopback.

Starts `polypindex serve` on a free 127.0.0.1 port over an existing index (by
default the demo's under var/), sends a bounded number of requests, and writes
p50/p90/p99 with the hardware and versions. Right after them (the server stopped, the
same queries, the same cores) it times the bare work of each request in process: the
service's own search function (:func:`polypindex.service.search.run_search`: the query
row, FAISS and the hits' metadata) over the same files; ``http_overhead_ms`` (HTTP p50
minus bare p50) is what the HTTP path adds.

    python benchmarks/search_latency.py --requests 500 --out var/bench/search_latency.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from polypindex.benchmarks.env import environment, write_result
from polypindex.benchmarks.serving import free_port, wait_until_healthy
from polypindex.indexer.store import Store
from polypindex.model.core.layout import Layout
from polypindex.service.backend import QueryEmbedder
from polypindex.service.resources import Probes, Resources, open_serving_index
from polypindex.service.search import SearchQuery, run_search
from polypindex.service.search_schemas import SearchRequest
from polypindex.service.settings import Settings


def _resources(settings: Settings) -> Resources:
    """The encoder, store and index as the service loads them (no upkeep thread)."""
    from polypindex.model.runtime.loader import layout_encoder

    encoder = layout_encoder(settings)
    store = Store(settings.database_url)
    index = open_serving_index(settings, store, encoder.version, encoder.dim).index
    return Resources(encoder=encoder, store=store, index=index)


def _bare_search(settings: Settings, res: Resources, tid: int, k: int) -> float:
    """Seconds for one query by id through the service's search function, in process."""
    assert res.encoder is not None and res.store is not None and res.index is not None
    t0 = time.perf_counter()
    body = SearchRequest.model_validate({"query": {"tracklet_id": tid}, "k": k})
    embed = QueryEmbedder(res.encoder, res.store, settings, threading.BoundedSemaphore(1))
    run_search(
        SearchQuery.of(body, settings.max_k), embed, res.store, res.index, Probes(res.probes, {})
    )
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--home",
        type=Path,
        default=None,
        help="artefact folder (default: $POLYPINDEX_HOME or var/)",
    )
    parser.add_argument(
        "--requests", type=int, default=500, help="timed requests (after 20 warm-up)"
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("var/bench/search_latency.json"))
    parser.add_argument(
        "--no-bare", action="store_true", help="skip the in-process bare-work timing"
    )
    args = parser.parse_args(argv)

    lay = Layout(home=args.home) if args.home else Layout()  # else $POLYPINDEX_HOME or var/
    store = Store(lay.database_url)
    ids = [i for p in store.list_procedures() for i in store.tracklet_ids_for_procedure(p.uid)]
    if not ids:
        raise SystemExit(
            f"no indexed tracklets under {lay.home}; run `polypindex demo --no-serve` first"
        )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "polypindex.cli",
            "serve",
            "--port",
            str(port),
            "--home",
            str(lay.home),
        ],
        stdout=subprocess.DEVNULL,
        # not a pipe: nobody reads it while timing, and a full pipe (one JSON request
        # record per request) would block the server mid-run
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    settings = Settings(home=lay.home)
    res: Resources | None = None
    bare: list[float] = []
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            wait_until_healthy(client, server, 60)
            rng = np.random.default_rng(args.seed)
            queries = rng.choice(ids, size=args.requests + 20)
            latencies = []
            for n, tid in enumerate(queries):
                t0 = time.perf_counter()
                r = client.post("/search", json={"query": {"tracklet_id": int(tid)}, "k": args.k})
                dt = time.perf_counter() - t0
                if r.status_code != 200:
                    raise SystemExit(f"search failed: {r.status_code} {r.text}")
                if n >= 20:
                    latencies.append(dt * 1000)
    finally:
        server.terminate()
        server.wait(timeout=30)
    if not args.no_bare:  # the server is gone: the same queries on the same cores
        res = _resources(settings)
        try:
            for n, tid in enumerate(queries):
                seconds = _bare_search(settings, res, int(tid), args.k)
                if n >= 20:
                    bare.append(seconds * 1000)
        finally:
            res.close()
    lat = np.asarray(latencies)
    result: dict[str, object] = {
        "benchmark": "search_latency_by_tracklet_id",
        "index_size": len(ids),
        "k": args.k,
        "requests": len(lat),
        "latency_ms": {q: float(np.percentile(lat, int(q[1:]))) for q in ("p50", "p90", "p99")},
        "mean_ms": float(lat.mean()),
        "os_load_1min": os.getloadavg()[0],
        "environment": environment(),
    }
    if bare:
        work = np.asarray(bare)
        result["bare_ms"] = {q: float(np.percentile(work, int(q[1:]))) for q in ("p50", "p90")}
        result["http_overhead_ms"] = float(np.percentile(lat, 50) - np.percentile(work, 50))
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()

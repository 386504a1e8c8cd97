"""The peer benchmark's command line: PolypIndex and Chroma, interleaved, in one run.

For each size: the PolypIndex world is built (or reused) and served, Chroma is started
from its own virtualenv and given the same vectors, then :func:`.workload.schedule`
runs, twice, every level (single client, then 1 / 5 / 50 concurrent clients) for each
system in alternating order, both query kinds each time. The result (every
measurement, the machine load beside it, the ratios PolypIndex ÷ Chroma, hardware and
versions) goes to JSON; :func:`table` is the table of docs/results.md.

    make bench-peers
    python -m polypindex.benchmarks.peers --chroma var/bench/peers-venv/bin/chroma \\
        --sizes 250 20000 --out polypindex/benchmarks/results/peers.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

from polypindex.benchmarks.env import environment, write_result
from polypindex.benchmarks.peers.systems import (
    chroma_collection,
    chroma_operations,
    chroma_server,
    chroma_version,
    polyp_operations,
    world_vectors,
)
from polypindex.benchmarks.peers.workload import (
    Operation,
    concurrent,
    ratio,
    schedule,
    single_client,
)
from polypindex.benchmarks.scale import queries_near
from polypindex.benchmarks.search_service import serving
from polypindex.benchmarks.search_world import VERSION, build_world

SYSTEMS = ("polypindex", "chroma")
RESULT = Path("polypindex/benchmarks/results/peers.json")
SINGLE = 0
"""The level of the single-client latency run in :func:`schedule`."""


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _measure(op: Operation, level: int, args: argparse.Namespace) -> dict[str, Any]:
    if level == SINGLE:
        return asyncio.run(single_client(op, args.requests))
    return asyncio.run(concurrent(op, level, args.seconds))


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Both systems at ``n`` vectors: the world, the fill and every measurement."""
    home = args.workdir / f"world_{n}"
    world = build_world(home, n, args.dim)
    ids, vectors, metadata = world_vectors(home, VERSION)
    rng = np.random.default_rng(args.seed)
    queries = queries_near(vectors, 1000, rng)
    by_id = [int(i) for i in rng.choice(ids, 1000)]
    rows: list[dict[str, Any]] = []
    with (
        serving(home, args.dim, args.workers) as (polyp_base, polyp_server),
        chroma_server(args.chroma, args.workdir / f"chroma_{n}") as (chroma_base, chroma),
    ):
        fill = chroma_collection(chroma_base, f"bench_{n}", ids, vectors, metadata)
        ops = polyp_operations(polyp_base, by_id, queries)
        ops += chroma_operations(chroma_base, fill["collection_id"], by_id, queries)
        for op in ops:  # warm-up, and every query kind answers before timing starts
            asyncio.run(single_client(op, 50))
        for rep, level, system in schedule(SYSTEMS, [SINGLE, *args.levels], args.repeats):
            for op in (o for o in ops if o.system == system):
                row = {"repeat": rep, "level": level, "system": system, "query": op.name}
                row.update(_measure(op, level, args), load=[round(x, 2) for x in os.getloadavg()])
                rows.append(row)
                print(n, row, flush=True)
        memory = {
            "polypindex_rss_mb": _rss_mb(polyp_server.pid),
            "chroma_rss_mb": _rss_mb(chroma.pid),
        }
        version = chroma_version(chroma_base)
    return {
        "n": n,
        "world": world,
        "chroma_fill": fill,
        "chroma_version": version,
        "memory": memory,
        "rows": rows,
        "summary": summarise(rows),
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per query kind and level: each system's figure per repetition (p50 and p99 for
    the single client, throughput for the concurrent levels), PolypIndex ÷ Chroma per
    repetition (the two systems ran back to back) and the median of those ratios."""
    out = []
    keys = sorted({(r["query"], r["level"]) for r in rows}, key=lambda qk: (qk[0], qk[1]))
    for query, level in keys:
        pick = [r for r in rows if r["query"] == query and r["level"] == level]
        entry: dict[str, Any] = {"query": query, "level": level}
        metrics = ("p50", "p99") if level == SINGLE else ("throughput_qps", "p99")
        for metric in metrics:
            per = {
                s: [
                    r.get(metric)
                    for r in sorted(pick, key=lambda r: r["repeat"])
                    if r["system"] == s
                ]
                for s in SYSTEMS
            }
            entry[metric] = per
            ratios = [ratio(a, b) for a, b in zip(per["polypindex"], per["chroma"], strict=False)]
            entry[f"{metric}_ratio"] = ratios
            known = [r for r in ratios if r is not None]
            entry[f"{metric}_ratio_median"] = round(median(known), 3) if known else None
        entry["errors"] = {
            s: sum(r.get("errors", 0) for r in pick if r["system"] == s) for s in SYSTEMS
        }
        out.append(entry)
    return out


def _both(values: list[Any]) -> str:
    return " / ".join("-" if v is None else f"{v:g}" for v in values)


def table(result: dict[str, Any]) -> str:
    """Markdown: per size and query kind, single-client p50 (ms) and throughput (queries/s)
    at each level, every repetition, the ratios PolypIndex ÷ Chroma and their median."""
    lines = [
        "| vectors | query | measure | PolypIndex | Chroma | PolypIndex ÷ Chroma | median ÷ |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size in result["sizes"]:
        for e in size["summary"]:
            if e["level"] == SINGLE:
                what, metric = "1 client, p50 ms", "p50"
            else:
                plural = "s" if e["level"] > 1 else ""
                what, metric = f"{e['level']} client{plural}, queries/s", "throughput_qps"
            per = e[metric]
            lines.append(
                f"| {size['n']:,} | {e['query'].replace('_', ' ')} | {what} | "
                f"{_both(per['polypindex'])} | {_both(per['chroma'])} | "
                f"{_both(e[f'{metric}_ratio'])} | {_both([e[f'{metric}_ratio_median']])} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--chroma", type=Path, default=Path("var/bench/peers-venv/bin/chroma"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 20_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 5, 50])
    parser.add_argument("--seconds", type=float, default=8.0, help="per concurrent level")
    parser.add_argument("--requests", type=int, default=300, help="single-client queries")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="PolypIndex uvicorn workers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("var/bench/peers"))
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if not args.chroma.exists():
        raise SystemExit(f"{args.chroma} not found: `make bench-peers` installs Chroma in its venv")
    chroma_pkg = subprocess.run(
        [str(args.chroma.parent / "python"), "-c", "import chromadb; print(chromadb.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    sizes = [run_size(n, args) for n in args.sizes]
    result = {
        "benchmark": "peers",
        "systems": list(SYSTEMS),
        "k": 10,
        "levels": [SINGLE, *args.levels],
        "seconds_per_level": args.seconds,
        "single_client_requests": args.requests,
        "repeats": args.repeats,
        "workers": args.workers,
        "sizes": sizes,
        "note": "client (asyncio httpx, one process) and both servers share the machine's "
        "cores; PolypIndex searches exactly below 100,000 vectors, Chroma with HNSW",
        "environment": environment(chromadb=chroma_pkg or None),
    }
    write_result(args.out, result, echo=False)
    print(table(result))
    return result

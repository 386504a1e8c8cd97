"""The client side of the peer benchmark, the same for every system.

A system is measured through :class:`Operation`: a name and a coroutine that makes one
query (one or more HTTP requests) with an ``httpx.AsyncClient`` and the query number.
:func:`single_client` times one client's queries one after another (p50/p99),
:func:`concurrent` runs ``clients`` asyncio clients for a fixed time (throughput,
errors, p99); both run in this one process, so every system pays the same client
cost. :func:`schedule` interleaves the systems (each level alternates them, in a
different order per repetition) so a change of machine load hits both alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

Query = Callable[[httpx.AsyncClient, int], Awaitable[None]]
"""One query: raise on any failure (a non-200 answer, a short result)."""


@dataclass(frozen=True)
class Operation:
    """One kind of query of one system (``system``: who, ``name``: by id / by embedding)."""

    system: str
    name: str
    base_url: str
    query: Query


def percentiles(ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 of latencies in ms (empty dict for none)."""
    if not ms:
        return {}
    a = np.asarray(ms, dtype=np.float64)
    return {q: round(float(np.percentile(a, int(q[1:]))), 3) for q in ("p50", "p90", "p99")}


def schedule(
    systems: Sequence[str], levels: Sequence[int], repeats: int
) -> list[tuple[int, int, str]]:
    """``(repeat, level, system)`` in run order: per repetition, each level in turn with
    every system once, the systems' order rotated by level and repetition (A B, B A, ...)."""
    out = []
    for rep in range(repeats):
        for n, level in enumerate(levels):
            shift = (rep + n) % len(systems)
            order = list(systems[shift:]) + list(systems[:shift])
            out += [(rep, level, system) for system in order]
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` rounded to 3 places, ``None`` when either is missing or ``b`` is 0."""
    if a is None or not b:
        return None
    return round(a / b, 3)


async def _timed(op: Operation, client: httpx.AsyncClient, i: int) -> float:
    t0 = time.perf_counter()
    await op.query(client, i)
    return (time.perf_counter() - t0) * 1000


async def single_client(op: Operation, requests: int, warmup: int = 20) -> dict[str, Any]:
    """``requests`` queries one after another on one connection, after ``warmup``."""
    async with httpx.AsyncClient(base_url=op.base_url, timeout=60) as client:
        for i in range(warmup):
            await op.query(client, i)
        ms = [await _timed(op, client, warmup + i) for i in range(requests)]
    return {"requests": len(ms), **percentiles(ms)}


async def concurrent(op: Operation, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` clients, each with its own connection, querying for ``seconds``."""
    ms: list[float] = []
    errors: list[str] = []
    until = time.monotonic() + seconds

    async def one(c: int) -> None:
        i = 1_000_003 * c
        async with httpx.AsyncClient(base_url=op.base_url, timeout=120) as client:
            while time.monotonic() < until:
                i += 1
                try:
                    ms.append(await _timed(op, client, i))
                except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                    errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")

    t0 = time.monotonic()
    await asyncio.gather(*(one(c) for c in range(clients)))
    wall = time.monotonic() - t0
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "queries": len(ms),
        "errors": len(errors),
        "first_errors": sorted(set(errors))[:3],
        "throughput_qps": round(len(ms) / wall, 1),
        **percentiles(ms),
    }


def check_hits(hits: Sequence[Any], k: int, what: str) -> None:
    """Raise ``RuntimeError`` unless ``hits`` holds ``k`` results (a query that came back
    short is not a query answered)."""
    if len(hits) != k:
        raise RuntimeError(f"{what}: {len(hits)} hits, not {k}")

"""The systems of the peer benchmark: their data, their servers and their queries.

PolypIndex is the real app (:func:`polypindex.benchmarks.search_service.serving`) over
a benchmark world (:func:`polypindex.benchmarks.search_world.build_world`: clustered
unit vectors in SQLite, each with a size prediction, and the saved index). Chroma is
``chroma run`` from its own virtualenv, given the same vectors under the same ids
with the same metadata a PolypIndex hit carries (procedure, key, frames, identity,
the size prediction), in a collection with the inner-product space (cosine on unit
vectors) and Chroma's default HNSW settings.

Queries, k = 10 with metadata on both sides:

- by embedding: ``POST /search`` ``{"query": {"embedding": ...}}`` against Chroma's
  ``POST .../query`` with ``include: ["metadatas", "distances"]``;
- by id: ``POST /search`` ``{"query": {"tracklet_id": ...}}``; Chroma has no query by
  id, so its by-id query is two requests, ``.../get`` the stored embedding then
  ``.../query`` with it (what a Chroma client has to do).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from polypindex.benchmarks.peers.workload import Operation, check_hits
from polypindex.benchmarks.serving import free_port
from polypindex.indexer.store import Store
from polypindex.model.core.layout import Layout

K = 10
COLLECTIONS = "/api/v2/tenants/default_tenant/databases/default_database/collections"
INCLUDE = ["metadatas", "distances"]


def world_vectors(home: Path, version: str) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """The world's ids, stored embeddings and, per id, the metadata of its search hit."""
    store = Store(Layout(home=home).database_url)
    try:
        ids, vectors = store.embeddings_for_ids(store.tracklet_ids(version).tolist())
        records = store.get_tracklets(ids.tolist())
        predictions = store.predictions_for(ids.tolist())
    finally:
        store.close()
    metadata = []
    for i in ids.tolist():
        r = records[i]
        meta: dict[str, Any] = {
            "procedure_uid": r.procedure_uid,
            "key": r.key,
            "start_frame": r.start_frame,
            "end_frame": r.end_frame,
            "n_frames": r.n_frames,
            "identity_label": r.identity_label or "",
        }
        for task, p in predictions.get(i, {}).items():
            meta[f"{task}_label"] = p.label
            meta[f"{task}_probability"] = p.probability
            meta[f"{task}_probe"] = p.probe_version
        metadata.append(meta)
    return ids, vectors, metadata


def polyp_operations(base: str, ids: Sequence[int], queries: np.ndarray) -> list[Operation]:
    """PolypIndex's two queries: by id (``ids[i % len]``) and by embedding (``queries[i % len]``)."""
    embeddings = [q.tolist() for q in queries]

    async def by_id(client: httpx.AsyncClient, i: int) -> None:
        body = {"query": {"tracklet_id": int(ids[i % len(ids)])}, "k": K}
        r = await client.post("/search", json=body)
        r.raise_for_status()
        check_hits(r.json()["results"], K, "polypindex by id")

    async def by_embedding(client: httpx.AsyncClient, i: int) -> None:
        body = {"query": {"embedding": embeddings[i % len(embeddings)]}, "k": K}
        r = await client.post("/search", json=body)
        r.raise_for_status()
        check_hits(r.json()["results"], K, "polypindex by embedding")

    return [
        Operation("polypindex", "by_id", base, by_id),
        Operation("polypindex", "by_embedding", base, by_embedding),
    ]


@contextmanager
def chroma_server(
    chroma: Path, data: Path, seconds: float = 120
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``chroma run`` over ``data`` on a free loopback port; yields its base URL and process."""
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    cmd = [str(chroma), "run", "--path", str(data), "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + seconds
        with httpx.Client(base_url=base, timeout=5) as client:
            while True:
                try:
                    if client.get("/api/v2/heartbeat").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    err = server.stderr.read().decode() if server.stderr else ""
                    raise SystemExit(f"chroma did not start: {err[-2000:]}")
                time.sleep(0.2)
        yield base, server
    finally:
        server.terminate()
        server.wait(timeout=60)


def chroma_version(base: str) -> str | None:
    with httpx.Client(base_url=base, timeout=10) as client:
        r = client.get("/api/v2/version")
        return str(r.json()) if r.status_code == 200 else None


def chroma_collection(
    base: str, name: str, ids: np.ndarray, vectors: np.ndarray, metadata: list[dict[str, Any]]
) -> dict[str, Any]:
    """The collection ``name`` holding these vectors (created and filled unless it already
    holds as many); its id and how long filling took."""
    with httpx.Client(base_url=base, timeout=600) as client:
        r = client.post(
            COLLECTIONS,
            json={"name": name, "configuration": {"hnsw": {"space": "ip"}}, "get_or_create": True},
        )
        r.raise_for_status()
        cid = r.json()["id"]
        have = client.get(f"{COLLECTIONS}/{cid}/count").json()
        t0 = time.perf_counter()
        if have != len(ids):
            if have:
                raise SystemExit(f"chroma collection {name} holds {have}, not {len(ids)}")
            batch = int(client.get("/api/v2/pre-flight-checks").json().get("max_batch_size", 1000))
            batch = max(1, min(batch, 2000))
            for start in range(0, len(ids), batch):
                stop = start + batch
                body = {
                    "ids": [str(i) for i in ids[start:stop].tolist()],
                    "embeddings": vectors[start:stop].tolist(),
                    "metadatas": metadata[start:stop],
                }
                client.post(f"{COLLECTIONS}/{cid}/add", json=body).raise_for_status()
        return {
            "collection_id": cid,
            "count": client.get(f"{COLLECTIONS}/{cid}/count").json(),
            "fill_seconds": round(time.perf_counter() - t0, 2),
            "reused": have == len(ids),
        }


def chroma_operations(
    base: str, cid: str, ids: Sequence[int], queries: np.ndarray
) -> list[Operation]:
    """Chroma's two queries: by id (get the embedding, then query) and by embedding."""
    embeddings = [q.tolist() for q in queries]
    path = f"{COLLECTIONS}/{cid}"

    async def query(client: httpx.AsyncClient, embedding: list[float], what: str) -> None:
        body = {"query_embeddings": [embedding], "n_results": K, "include": INCLUDE}
        r = await client.post(f"{path}/query", json=body)
        r.raise_for_status()
        answer = r.json()
        check_hits(answer["ids"][0], K, what)
        check_hits(answer["metadatas"][0], K, what)

    async def by_id(client: httpx.AsyncClient, i: int) -> None:
        body = {"ids": [str(ids[i % len(ids)])], "include": ["embeddings"]}
        r = await client.post(f"{path}/get", json=body)
        r.raise_for_status()
        found = r.json()["embeddings"]
        check_hits(found, 1, "chroma get")
        await query(client, found[0], "chroma by id")

    async def by_embedding(client: httpx.AsyncClient, i: int) -> None:
        await query(client, embeddings[i % len(embeddings)], "chroma by embedding")

    return [
        Operation("chroma", "by_id", base, by_id),
        Operation("chroma", "by_embedding", base, by_embedding),
    ]


def fresh(folder: Path) -> Path:
    """``folder`` emptied (a Chroma data folder for a new fill)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder

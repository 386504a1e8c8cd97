"""Indexing archives on a Ray cluster with Ray Data (``polypindex index … --engine ray``).

The same pipeline as :func:`indexer.pipeline.index_sources`, spread out:

1. **Decode + crop** on CPU workers: each procedure becomes its crop chunks
   (:func:`indexer.embed.procedure_chunks`, the same chunks as the single-process path),
   one Ray Data row per chunk (crops pickled).
2. **Embed** in a pool of actors, each holding one encoder (``num_gpus`` per actor when
   the cluster has GPUs); each chunk is embedded with one ``embed_sequences`` call, as in
   the single process, so the embeddings are byte-equal for the same runtime.
3. **Write** on the driver: when a procedure's last chunk has arrived, its rows are
   built and written in one store transaction that replaces any earlier copy of the
   procedure (:func:`indexer.pipeline.commit_procedure`), then its vectors added.

A rerun skips procedures already stored with this encoder version; a procedure whose
worker was lost was never committed, so the rerun embeds it again, and a procedure
committed twice (a retried task) replaces itself: nothing is duplicated or lost.
Ray is an install extra (``pip install 'polypindex[ray]'``). See docs/runtimes.md.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.indexer.embed import Embedder, ProcedureEmbedder, procedure_chunks
from polypindex.indexer.grouping import reid_calibration
from polypindex.indexer.locations import Anchors
from polypindex.indexer.pipeline import commit_procedure, open_encoder_generation
from polypindex.indexer.progress import IndexReport, RunTally
from polypindex.indexer.sources import ProcedureSource
from polypindex.indexer.store import Store
from polypindex.model.core.errors import ConfigError
from polypindex.model.data.config import check_whole_tracklet
from polypindex.model.scoring.probe import Probe

EncoderFactory = Callable[[], Embedder]


def ray_available() -> bool:
    """Whether ``ray[data]`` is importable."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def _crop_rows(
    procedures: Sequence[ProcedureSource], preprocess: Any, fragment: Any
) -> Callable[[dict[str, Any]], Iterator[dict[str, Any]]]:
    def crop(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        position = int(row["position"])
        for number, chunk in enumerate(
            procedure_chunks(procedures[position], preprocess, fragment)
        ):
            yield {
                "position": position,
                "chunk": number,
                "done": chunk.done,
                "decoded": chunk.decoded,
                "items": pickle.dumps(chunk.items, protocol=pickle.HIGHEST_PROTOCOL),
            }

    return crop


class _EmbedActor:
    """One encoder per actor; embeds one chunk per row (``embed_sequences`` once)."""

    def __init__(self, factory: EncoderFactory, batch_size: int) -> None:
        self.encoder = factory()
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out = []
        for blob in batch["items"]:
            items = pickle.loads(blob)
            probe = _Collector(self.encoder, self.batch_size)
            probe.add(items)
            out.append(pickle.dumps(probe.result(), protocol=pickle.HIGHEST_PROTOCOL))
        return {
            "position": batch["position"],
            "chunk": batch["chunk"],
            "done": batch["done"],
            "decoded": batch["decoded"],
            "embedded": np.asarray(out, dtype=object),
        }


class _Collector:
    """Embeds one chunk exactly as :class:`ProcedureEmbedder.add` does, keeping the parts
    the driver needs: tracklet index, embedding, middle crop, frames."""

    def __init__(self, encoder: Embedder, batch_size: int) -> None:
        self.encoder, self.batch_size = encoder, batch_size
        self.parts: list[tuple[int, np.ndarray, np.ndarray, int]] = []

    def add(self, items: list[tuple[int, np.ndarray]]) -> None:
        if not items:
            return
        from polypindex.model.data.preprocess import normalize

        seqs = [normalize(crops, self.encoder.preprocess) for _, crops in items]
        emb = np.asarray(
            self.encoder.embed_sequences(seqs, batch_size=self.batch_size), dtype=np.float32
        )
        for row, (ti, crops) in enumerate(items):
            self.parts.append((ti, emb[row].copy(), crops[len(crops) // 2].copy(), len(crops)))

    def result(self) -> list[tuple[int, np.ndarray, np.ndarray, int]]:
        return self.parts


def index_with_ray(
    procedures: Sequence[ProcedureSource],
    store: Store,
    index_dir: str | Path,
    encoder_factory: EncoderFactory,
    *,
    address: str | None = None,
    force: bool = False,
    batch_size: int = 16,
    thumbnails: bool = True,
    probes: Sequence[Probe] = (),
    actors: int = 1,
    num_gpus: float | None = None,
    init: bool = True,
    anchors: Anchors | None = None,
) -> IndexReport:
    """Index ``procedures`` with Ray Data (module docstring).

    Args:
        procedures: the batch (sent to the workers with cloudpickle).
        store: the SQL store (used on the driver only).
        index_dir: the index root.
        encoder_factory: builds the encoder in each actor (and once on the driver, for
            its version and settings), e.g. ``functools.partial(load_encoder, path)``.
        address: the Ray cluster (``None``: a local Ray, or the one already started).
        force: re-embed procedures already stored.
        actors: embedding actors; num_gpus: GPUs per actor (default: 1 when the cluster
            has GPUs, else 0).
        init: call ``ray.init(address)`` unless Ray is already initialised.
        anchors: the home and data roots the stored sources are made relative to
            (as for :func:`indexer.pipeline.index_sources`).

    Raises:
        ConfigError: Ray is not installed.
    """
    if not ray_available():
        raise ConfigError("the Ray engine needs ray[data]: pip install 'polypindex[ray]'")
    import ray
    import ray.data

    tally = RunTally()
    if init and not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    encoder = encoder_factory()
    check_whole_tracklet(encoder.fragment)
    todo = [p for p in procedures if force or not store.has_procedure(p.uid, encoder.version)]
    tally.skipped(len(procedures) - len(todo))
    out_dir = Path(index_dir)
    index = open_encoder_generation(out_dir, store, encoder)
    if num_gpus is None:
        num_gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    if todo:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # commits in input order
        dataset = (
            ray.data.from_items([{"position": i} for i in range(len(todo))])
            .flat_map(_crop_rows(todo, encoder.preprocess, encoder.fragment), num_cpus=1)
            .map_batches(
                _EmbedActor,
                fn_constructor_kwargs={"factory": encoder_factory, "batch_size": batch_size},
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, actors)),
                num_gpus=num_gpus,
                batch_format="numpy",
            )
        )
        pending: dict[int, ProcedureEmbedder] = {}
        calibration = reid_calibration(encoder)
        for row in dataset.iter_rows():
            position = int(row["position"])
            procedure = todo[position]
            embedder = pending.setdefault(
                position, ProcedureEmbedder(procedure, encoder, batch_size)
            )
            for ti, emb, middle, frames in pickle.loads(row["embedded"]):
                embedder.embeddings[ti] = emb
                embedder.middle[ti] = middle
                embedder.tracklets_done += 1
                embedder.frames_done += frames
            if not bool(row["done"]):
                continue
            del pending[position]
            result = embedder.finish(int(row["decoded"]), out_dir if thumbnails else None)
            new_ids = commit_procedure(
                procedure,
                result,
                store,
                index,
                encoder,
                probes,
                calibration,
                anchors,
                if_absent=not force,
            )
            tally.add(procedure.uid, len(new_ids), result.frames, result.images_decoded)
        index.save()
    return tally.report(len(index), encoder.version)

"""Size / histology predictions of indexed tracklets (docs/method.md#probes): the probes of an
encoder, checked against it, run on each tracklet's stored embedding.

The indexer stores them with each tracklet (same transaction as its row);
:func:`predict_stored` recomputes them for a whole index generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from polypindex.indexer.store import Store
from polypindex.indexer.tables import PredictionRow
from polypindex.model.core.errors import ConfigError
from polypindex.model.data.config import WHOLE_TRACKLET
from polypindex.model.scoring.probe import TASKS, Probe, load_probe, probe_path

__all__ = ["check_probes", "installed_probes", "predict", "predict_stored"]


def check_probes(probes: Sequence[Probe], encoder_version: str) -> None:
    """Refuse probes of another encoder, probes trained on fragments shorter than the
    whole tracklet (indexing predicts from the tracklet embedding), or two of one task."""
    tasks = [p.task for p in probes]
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"one probe per task, got tasks {tasks}")
    for probe in probes:
        probe.check_encoder(encoder_version)
        training = probe.metadata.get("training") or {}
        length = (training.get("fragment") or {}).get("fragment_length", WHOLE_TRACKLET)
        if length != WHOLE_TRACKLET:
            raise ConfigError(
                f"{probe.version} was trained on fragments of {length} frames, but predictions "
                f"are made from whole-tracklet embeddings; retrain it without --fragment-length"
            )


def predict(probes: Sequence[Probe], embedding: np.ndarray) -> tuple[PredictionRow, ...]:
    """The probes' predictions for one tracklet embedding.

    The probes read the encoder's own tracklet embedding (the encoder's fragment
    rule is the whole tracklet, as in :func:`index_sources`), so the stored
    embedding is the probe's one fragment.
    """
    out = []
    for probe in probes:
        p = probe.predict_tracklet(np.asarray(embedding, dtype=np.float32)[None, :])
        out.append(PredictionRow(probe.task, p.label, float(p.probability), probe.version))
    return tuple(out)


def installed_probes(folder: str | Path, encoder_version: str) -> list[Probe]:
    """The probes found in ``folder`` (``size.npz``, ``histology.npz``; absent ones are skipped).

    Raises:
        EncoderMismatchError: a probe there was trained on another encoder.
        ModelLoadError: a probe file there is unreadable.
    """
    return [
        load_probe(probe_path(folder, task), encoder_version)
        for task in TASKS
        if probe_path(folder, task).is_file()
    ]


def predict_stored(
    store: Store, encoder_version: str, probes: Sequence[Probe], progress: bool = True
) -> dict[str, int]:
    """(Re)compute and store every ``encoder_version`` tracklet's predictions; counts per task."""
    check_probes(probes, encoder_version)
    per_task: dict[str, dict[int, PredictionRow]] = {p.task: {} for p in probes}
    total = store.count_tracklets(encoder_version)
    with tqdm(total=total, unit="tracklet", desc="predicting", disable=not progress) as bar:
        for ids, vectors in store.iter_embeddings(encoder_version):
            for tid, vector in zip(ids.tolist(), vectors, strict=True):
                for row in predict(probes, vector):
                    per_task[row.task][int(tid)] = row
            bar.update(len(ids))
    return {task: store.replace_predictions(task, rows) for task, rows in per_task.items()}

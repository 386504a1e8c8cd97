"""`polypindex demo` (what `make serve` runs): build whatever is missing, in order.

1. a synthetic dataset (``var/data/synth``),
2. the demo encoder, trained on it with the CPU demo preset and exported to ONNX
   (``var/models/demo``) — only when no model is there yet,
3. the size and histology probes on that encoder (``var/models/demo/probes``),
   trained on the train split — only when missing,
4. the index of every split's procedures (idempotent: already indexed
   procedures are skipped), with the probes' predictions stored per tracklet.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from polypindex.model.layout import Layout

log = logging.getLogger("polypindex.demo")

DEMO_SPLITS = ("train", "val", "test")


def _step(message: str) -> None:
    print(f"[polypindex demo] {message}", flush=True)


def ensure_dataset(lay: Layout, seed: int = 0) -> Path:
    """Generate the default synthetic dataset unless it is already there."""
    root = lay.demo_data
    if all((root / "annotations" / f"instances_{s}.json").is_file() for s in DEMO_SPLITS):
        _step(f"dataset present: {root}")
        return root
    from polypindex.synth import SynthConfig, generate

    _step(f"generating synthetic procedures into {root} ...")
    generate(root, SynthConfig(seed=seed))
    return root


def ensure_model(lay: Layout, data: Path, config: str = "demo") -> Path:
    """Train and export the demo encoder unless ``encoder.onnx`` exists."""
    out = lay.demo_model_dir
    onnx_path = out / "encoder.onnx"
    if onnx_path.is_file():
        _step(f"model present: {onnx_path}")
        return onnx_path
    from polypindex.model.export import export_onnx
    from polypindex.training.train import load_train_config, train

    _step(f"training the demo encoder ({config} preset) into {out} ...")
    cfg = load_train_config(
        config, {"data_root": str(data), "out_dir": str(out), "cache_dir": str(lay.crop_cache)}
    )
    result = train(cfg)
    _step("exporting to ONNX and checking parity with torch ...")
    report = export_onnx(result.best_checkpoint, onnx_path)
    _step(f"exported {onnx_path} (max |torch - onnx| = {report.max_abs_diff:.1e})")
    return onnx_path


def ensure_probes(lay: Layout, data: Path, model_path: Path) -> None:
    """Train the size and histology probes on the demo encoder unless they exist."""
    from polypindex.model.probe import TASKS, probe_path

    for task in TASKS:
        path = probe_path(model_path.parent / "probes", task)
        if path.is_file():
            _step(f"{task} probe present: {path}")
            continue
        from polypindex.training.probe import train_probe_on_encoder

        _step(f"training the {task} probe on the demo encoder ...")
        train_probe_on_encoder(
            task,
            data,
            model_path,
            out=path,
            cache_dir=lay.probe_cache,
            crop_cache_dir=lay.crop_cache,
        )


def ensure_index(lay: Layout, data: Path, model_path: Path) -> None:
    """Index every split of the dataset (skips procedures already indexed), with the
    installed probes' predictions; fills in predictions missing from earlier runs."""
    from polypindex.indexer.pipeline import index_dataset, installed_probes, predict_stored
    from polypindex.indexer.store import Store
    from polypindex.model.runtime import OnnxEncoder

    encoder = OnnxEncoder(model_path)
    probes = installed_probes(model_path.parent / "probes", encoder.version)
    store = Store(lay.database_url)
    for split in DEMO_SPLITS:
        _step(f"indexing split {split!r} ...")
        index_dataset(data, split, store, lay.index_dir, encoder, probes=probes)
    stored = store.count_tracklets(encoder.version)
    predicted = store.count_predictions(encoder.version)
    if probes and any(predicted.get(p.task, 0) < stored for p in probes):
        _step("predicting size/histology for tracklets indexed before the probes ...")
        predict_stored(store, encoder.version, probes)


def build_demo(lay: Layout) -> Path:
    """Build whatever of the demo is missing under ``lay``; return the encoder to serve."""
    start = time.perf_counter()
    lay.home.mkdir(parents=True, exist_ok=True)
    data = ensure_dataset(lay)
    model_path = ensure_model(lay, data)
    ensure_probes(lay, data, model_path)
    ensure_index(lay, data, model_path)
    _step(f"ready in {time.perf_counter() - start:.0f} s")
    return model_path

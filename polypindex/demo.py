"""`polypindex demo` (what `make serve` runs): build whatever is missing, in order.

1. a synthetic dataset (``var/data/synth``),
2. the demo encoder (``var/models/demo``) — only when no model is there yet — in two
   stages (docs/training.md#the-default-demo-model): frame-level MSN pretraining of the
   resnet18 (preset ``msn_demo``, into ``var/models/demo/msn``; an interrupted one is
   resumed), then the method on temporal bags with that frame encoder (preset
   ``demo_model``), exported to ONNX,
3. the size and histology probes on that encoder (``var/models/demo/probes``),
   trained on the train split — only when missing,
4. the index of every split's procedures (idempotent: already indexed
   procedures are skipped), with the probes' predictions stored per tracklet.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from polypindex.model.core.layout import Layout

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


DEMO_MSN_CONFIG = "msn_demo"
DEMO_TRAIN_CONFIG = "demo_model"


def ensure_frame_pretraining(lay: Layout, data: Path, config: str | Path = DEMO_MSN_CONFIG) -> Path:
    """MSN-pretrain the demo's frame encoder unless a finished ``msn.pt`` is there
    (an unfinished run with its ``last.ckpt`` is resumed); return ``msn.pt``."""
    from polypindex.model.nets.encoder import load_frame_encoder_checkpoint
    from polypindex.training.msn import MSN_CHECKPOINT, pretrain_frames
    from polypindex.training.msn_config import load_msn_config
    from polypindex.training.trainer import LAST_CHECKPOINT

    out = lay.demo_model_dir / "msn"
    cfg = load_msn_config(
        config, {"data_root": str(data), "out_dir": str(out), "cache_dir": str(lay.crop_cache)}
    )
    checkpoint = out / MSN_CHECKPOINT
    if checkpoint.is_file():
        epoch = load_frame_encoder_checkpoint(checkpoint).extra.get("epoch")
        if epoch == cfg.epochs:
            _step(f"frame pretraining present: {checkpoint}")
            return checkpoint
    resume = (out / LAST_CHECKPOINT).is_file()
    _step(
        f"{'resuming' if resume else 'running'} frame-level MSN pretraining "
        f"({config} preset) into {out} ..."
    )
    return pretrain_frames(cfg, resume=resume).checkpoint


def ensure_model(
    lay: Layout,
    data: Path,
    config: str | Path = DEMO_TRAIN_CONFIG,
    msn_config: str | Path = DEMO_MSN_CONFIG,
) -> Path:
    """Train and export the demo encoder unless ``encoder.onnx`` exists (first the MSN
    frame pretraining ``msn_config`` of :func:`ensure_frame_pretraining`, when the
    training preset has an ``init_frame_encoder``)."""
    out = lay.demo_model_dir
    onnx_path = out / "encoder.onnx"
    if onnx_path.is_file():
        _step(f"model present: {onnx_path}")
        return onnx_path
    from polypindex.model.nets.export import export_onnx
    from polypindex.training.train import train
    from polypindex.training.train_config import load_train_config

    overrides: dict[str, str] = {
        "data_root": str(data),
        "out_dir": str(out),
        "cache_dir": str(lay.crop_cache),
    }
    if load_train_config(config).init_frame_encoder:
        overrides["init_frame_encoder"] = str(ensure_frame_pretraining(lay, data, msn_config))
    from polypindex.training.trainer import numerics

    train_config = load_train_config(config, overrides)
    precision, _ = numerics(train_config)
    _step(
        f"training the demo encoder ({config} preset) into {out}, training precision "
        f"{precision} (asked {train_config.precision!r}; recorded in the model, "
        f"`polypindex info`) ..."
    )
    result = train(train_config)
    _step("exporting to ONNX and checking parity with torch ...")
    report = export_onnx(result.best_checkpoint, onnx_path)
    _step(f"exported {onnx_path} (max |torch - onnx| = {report.max_abs_diff:.1e})")
    return onnx_path


def ensure_probes(lay: Layout, data: Path, model_path: Path) -> None:
    """Train the size and histology probes on the demo encoder unless they exist."""
    from polypindex.model.scoring.probe import TASKS, probe_path

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


def describe_runtime(info: dict[str, Any], runtime: str, precision: str) -> str:
    """One line: the runtime, provider and precision chosen, and the parity check."""
    parity = info.get("parity") or {}
    line = (
        f"encoder {info['encoder_version']} runs on {info['runtime']} ({info['provider']}) "
        f"in {info['precision']} (asked {runtime}/{precision}; parity min cosine "
        f"{parity.get('min_cosine')})"
    )
    if info.get("fallback_reason"):
        line += f"; fell back: {info['fallback_reason']}"
    return line


def ensure_index(lay: Layout, data: Path, model_path: Path) -> None:
    """Index every split of the dataset (skips procedures already indexed), with the
    installed probes' predictions; fills in predictions missing from earlier runs."""
    from polypindex.indexer.locations import anchors_for
    from polypindex.indexer.pipeline import index_dataset
    from polypindex.indexer.predictions import installed_probes, predict_stored
    from polypindex.indexer.store import Store
    from polypindex.model.runtime.loader import layout_encoder

    encoder = layout_encoder(lay, model_path)  # the runtime the service will use
    _step(describe_runtime(encoder.describe(), lay.runtime, lay.precision))
    probes = installed_probes(model_path.parent / "probes", encoder.version)
    store = Store(lay.database_url)
    for split in DEMO_SPLITS:
        _step(f"indexing split {split!r} ...")
        index_dataset(
            data, split, store, lay.index_dir, encoder, probes=probes, anchors=anchors_for(lay)
        )
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

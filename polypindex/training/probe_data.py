"""The probes' data (docs/method.md#probes): the features of every fragment of a dataset
split and their labels per polyp, numpy only.

Pipeline: COCO split → tracklets → fragments (the encoder's own fragment rule, read
from its ONNX metadata, :func:`model.data.embedding.tracklet_fragments`) → crops
(:func:`model.data.embedding.cached_sequences`) → :class:`model.runtime.onnx.OnnxEncoder`
embeddings (cached on disk per encoder version + dataset split) → labels per polyp
(:func:`model.scoring.probe.task_label`; unknown labels excluded and counted) → a split **by
polyp** (stratified by label, deterministic per seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from polypindex.model.core.errors import InvalidInputError
from polypindex.model.core.files import atomic_path
from polypindex.model.data.coco import annotation_path, load_coco_split
from polypindex.model.data.config import FragmentConfig, TrackletConfig
from polypindex.model.data.embedding import cached_sequences, tracklet_fragments
from polypindex.model.data.preprocess import CropCache, normalize
from polypindex.model.data.tracklets import Tracklet
from polypindex.model.runtime.base import EncoderBase
from polypindex.model.scoring.probe import CLASSES, check_task, task_label

CACHE_FORMAT = "polypindex-probe-embeddings/1"


# --------------------------------------------------------------------------- fragment features


@dataclass(frozen=True, eq=False)
class FragmentSet:
    """Features of every fragment of a split, with their polyp and tracklet.

    Attributes:
        features: (N, D) float32, one row per fragment.
        identities: N polyp ids (``identity_id``), one per fragment.
        tracklets: N tracklet keys (``sequence/identity/index``).
        polyp_metadata: polyp id → its annotation metadata (``size``, ``histology``, ...).
        source: the feature source (an encoder version, or ``color_histogram``).
        split: the dataset split.
        fragment: the fragment rule used.
    """

    features: np.ndarray
    identities: list[str]
    tracklets: list[str]
    polyp_metadata: dict[str, dict[str, Any]]
    source: str
    split: str
    fragment: FragmentConfig

    def __post_init__(self) -> None:
        n = len(self.features)
        if len(self.identities) != n or len(self.tracklets) != n:
            raise InvalidInputError(
                f"{n} fragments but {len(self.identities)} identities / {len(self.tracklets)} tracklets"
            )

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


FeatureFn = Callable[[list[tuple[Tracklet, list[np.ndarray]]]], np.ndarray]


def _dataset_digest(
    data: Path, split: str, tracklet: TrackletConfig, fragment: FragmentConfig, extra: str
) -> str:
    ann = annotation_path(data, split)
    st = os.stat(ann)
    h = hashlib.sha256()
    for part in (
        str(ann.resolve()),
        str(st.st_size),
        str(st.st_mtime_ns),
        json.dumps(tracklet.to_dict(), sort_keys=True),
        json.dumps(fragment.to_dict(), sort_keys=True),
        extra,
    ):
        h.update(part.encode())
        h.update(b"|")
    return h.hexdigest()[:16]


def cached_fragment_features(
    data: str | Path,
    split: str,
    source: str,
    fragment: FragmentConfig,
    compute: FeatureFn,
    cache_dir: str | Path | None,
    tracklet_config: TrackletConfig | None = None,
    cache_extra: str = "",
    progress: bool = True,
) -> FragmentSet:
    """Features of every fragment of ``data``'s ``split``, computed once and cached.

    The cache file is ``{cache_dir}/{source}/{split}-{digest}.npz``; the digest
    covers the annotation file (path, size, mtime), the tracklet and fragment
    rules and ``cache_extra`` (e.g. the crop settings), so a changed dataset or
    rule is recomputed.

    Args:
        data: dataset folder.
        split: split name.
        source: feature source name (an encoder version for encoders).
        fragment: which frames of a tracklet form its fragments.
        compute: ``[(tracklet, fragment index arrays), ...]`` → (total fragments, D).
        cache_dir: cache root; ``None`` disables the cache.
        tracklet_config: tracklet rule (default :class:`TrackletConfig`).
        cache_extra: more text for the cache key.
        progress: show progress bars.

    Raises:
        InvalidAnnotationError: bad dataset; InvalidInputError: no fragment at all.
    """
    data = Path(data)
    tracklet_config = tracklet_config or TrackletConfig()
    coco = load_coco_split(data, split)
    path: Path | None = None
    if cache_dir is not None:
        digest = _dataset_digest(data, split, tracklet_config, fragment, cache_extra)
        path = Path(cache_dir) / source / f"{split}-{digest}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(z["meta"].tobytes().decode())
                    if meta.get("format") == CACHE_FORMAT:
                        return FragmentSet(
                            features=np.asarray(z["features"], dtype=np.float32),
                            identities=list(meta["identities"]),
                            tracklets=list(meta["tracklets"]),
                            polyp_metadata=meta["polyp_metadata"],
                            source=source,
                            split=split,
                            fragment=fragment,
                        )
            except (OSError, ValueError, KeyError):
                pass  # a torn or old cache file: recompute below
    tracklets = coco.tracklets(tracklet_config)
    items: list[tuple[Tracklet, list[np.ndarray]]] = []
    identities: list[str] = []
    keys: list[str] = []
    polyp_metadata: dict[str, dict[str, Any]] = {}
    for t in tracklets:
        frags = tracklet_fragments(len(t), fragment)
        if not frags:
            continue
        items.append((t, frags))
        identities += [str(t.identity_id)] * len(frags)
        keys += [t.key] * len(frags)
        polyp_metadata.setdefault(str(t.identity_id), dict(t.metadata))
    if not items:
        raise InvalidInputError(
            f"{data} split {split!r}: no tracklet yields a fragment under {fragment}"
        )
    t0 = time.perf_counter()
    features = np.asarray(compute(items), dtype=np.float32)
    if features.ndim != 2 or len(features) != len(identities):
        raise InvalidInputError(
            f"feature function returned {features.shape}, expected ({len(identities)}, D)"
        )
    if progress:
        tqdm.write(
            f"{source} / {split}: {len(features)} fragments of {len(items)} tracklets "
            f"embedded in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
    out = FragmentSet(features, identities, keys, polyp_metadata, source, split, fragment)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": CACHE_FORMAT,
            "identities": identities,
            "tracklets": keys,
            "polyp_metadata": polyp_metadata,
            "fragment": fragment.to_dict(),
        }
        with atomic_path(path, durable=False, suffix=".npz") as tmp:
            np.savez(
                tmp,
                features=features,
                meta=np.frombuffer(json.dumps(meta, default=float).encode(), dtype=np.uint8),
            )
    return out


def encoder_fragment_features(
    encoder: EncoderBase,
    data: str | Path,
    split: str,
    cache_dir: str | Path | None,
    crop_cache_dir: str | Path,
    fragment: FragmentConfig | None = None,
    tracklet_config: TrackletConfig | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> FragmentSet:
    """Embed every fragment of a split with the ONNX encoder, as the service would.

    Fragments follow the encoder's own rule (``encoder.fragment``, from its ONNX
    metadata) unless ``fragment`` overrides it; crops use the encoder's
    preprocessing. Cached under ``{cache_dir}/{encoder.version}/``.
    """
    fragment = fragment or encoder.fragment
    crops = CropCache(crop_cache_dir, encoder.preprocess)

    def compute(items: list[tuple[Tracklet, list[np.ndarray]]]) -> np.ndarray:
        seqs: list[np.ndarray] = []
        for t, frags in tqdm(
            items, desc=f"crop {split}", disable=not progress, leave=False, unit="tracklet"
        ):
            seqs += [normalize(c, encoder.preprocess) for c in cached_sequences(t, frags, crops)]
        out = np.zeros((len(seqs), encoder.dim), dtype=np.float32)
        step = max(1, batch_size * 4)
        for start in tqdm(
            range(0, len(seqs), step),
            desc=f"embed {split}",
            disable=not progress,
            leave=False,
            unit="chunk",
        ):
            out[start : start + step] = encoder.embed_sequences(
                seqs[start : start + step], batch_size=batch_size
            )
        return out

    return cached_fragment_features(
        data,
        split,
        encoder.version,
        fragment,
        compute,
        cache_dir,
        tracklet_config,
        cache_extra=encoder.preprocess.to_json(),
        progress=progress,
    )


# --------------------------------------------------------------------------- labels and split


@dataclass(frozen=True)
class LabelledFragments:
    """The fragments of a :class:`FragmentSet` that have a known label for one task.

    Attributes:
        features: (M, D) float32 features of the labelled fragments.
        labels: (M,) int64 labels (1 = ``CLASSES[task][1]``).
        identities: M polyp ids.
        polyp_labels: polyp id → label, for the labelled polyps.
        excluded_polyps: polyps without a known label (never guessed).
        excluded_fragments: their fragments.
    """

    features: np.ndarray
    labels: np.ndarray
    identities: list[str]
    polyp_labels: dict[str, int]
    excluded_polyps: int
    excluded_fragments: int

    def subset(self, polyps: set[str]) -> LabelledFragments:
        keep = np.asarray([i in polyps for i in self.identities], dtype=bool)
        return LabelledFragments(
            features=self.features[keep],
            labels=self.labels[keep],
            identities=[i for i, k in zip(self.identities, keep, strict=True) if k],
            polyp_labels={p: y for p, y in self.polyp_labels.items() if p in polyps},
            excluded_polyps=0,
            excluded_fragments=0,
        )

    def balance(self, task: str) -> dict[str, Any]:
        """Label balance by polyp and by fragment, with the class names."""
        neg, pos = CLASSES[task]
        by_polyp = np.asarray(list(self.polyp_labels.values()), dtype=np.int64)
        return {
            "polyps": {neg: int(np.sum(by_polyp == 0)), pos: int(np.sum(by_polyp == 1))},
            "fragments": {neg: int(np.sum(self.labels == 0)), pos: int(np.sum(self.labels == 1))},
        }


def label_fragments(fragments: FragmentSet, task: str) -> LabelledFragments:
    """Attach the ``task`` label of each fragment's polyp; drop (and count) unknown ones."""
    check_task(task)
    polyp_labels: dict[str, int] = {}
    unknown: set[str] = set()
    for polyp, meta in fragments.polyp_metadata.items():
        label = task_label(task, meta)
        if label is None:
            unknown.add(polyp)
        else:
            polyp_labels[polyp] = label
    keep = np.asarray([i in polyp_labels for i in fragments.identities], dtype=bool)
    ids = [i for i, k in zip(fragments.identities, keep, strict=True) if k]
    return LabelledFragments(
        features=fragments.features[keep],
        labels=np.asarray([polyp_labels[i] for i in ids], dtype=np.int64),
        identities=ids,
        polyp_labels={p: polyp_labels[p] for p in sorted(set(ids))},
        excluded_polyps=len({i for i in fragments.identities if i in unknown}),
        excluded_fragments=int(np.count_nonzero(~keep)),
    )


def split_polyps(
    polyp_labels: dict[str, int], seed: int, val_fraction: float = 0.3
) -> tuple[list[str], list[str]]:
    """Split polyps (not fragments) into train and validation, stratified by label.

    Within each class the polyps are sorted, shuffled with
    ``numpy.random.default_rng(seed)`` and ``round(val_fraction · n)`` go to
    validation — at least one when the class has two or more polyps, never all.
    No polyp is on both sides; the result depends only on the labels and the seed.

    Returns:
        ``(train_ids, val_ids)``, each sorted.
    """
    rng = np.random.default_rng(seed)
    train: list[str] = []
    val: list[str] = []
    for label in (0, 1):
        ids = sorted(p for p, y in polyp_labels.items() if y == label)
        order = [ids[i] for i in rng.permutation(len(ids))]
        n_val = round(val_fraction * len(ids))
        # at least one polyp of each class on both sides when the class has two or more
        n_val = min(max(n_val, 1), len(ids) - 1) if len(ids) >= 2 else 0
        val += order[:n_val]
        train += order[n_val:]
    return sorted(train), sorted(val)

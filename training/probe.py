"""Training size and histology probes on a frozen ONNX encoder (SPEC §6, issue 6).

Pipeline: COCO split → tracklets → fragments (the encoder's own fragment rule,
read from its ONNX metadata) → :class:`model.runtime.OnnxEncoder` embeddings
(cached on disk per encoder version + dataset split) → labels per polyp
(:func:`model.probe.task_label`; unknown labels excluded and counted) → a
70/30 split **by polyp** (stratified by label, deterministic per seed) → a
linear or MLP probe (torch; AdamW, one-cycle LR, a fixed number of epochs, the
last epoch kept) → temperature scaling fitted on the validation polyps → a
:class:`model.probe.Probe` that serves with numpy only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from polypindex.model.coco import annotation_path, load_coco_split
from polypindex.model.config import FragmentConfig, TrackletConfig
from polypindex.model.errors import ConfigError, InvalidInputError
from polypindex.model.evaluation import (
    binary_classification_metrics,
    expected_calibration_error,
    save_reliability_png,
)
from polypindex.model.preprocess import CropCache, normalize
from polypindex.model.probe import (
    CLASSES,
    HEADS,
    MLP_HIDDEN,
    Probe,
    check_task,
    probe_path,
    sigmoid,
    task_label,
    vote_by_identity,
)
from polypindex.model.runtime import OnnxEncoder
from polypindex.model.tracklets import Tracklet, fragment_indices

CACHE_FORMAT = "polypindex-probe-embeddings/1"
TEMPERATURE_BOUNDS = (0.05, 20.0)
DEFAULT_LR = {"linear": 1e-2, "mlp": 3e-3}


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ProbeTrainConfig:
    """How a probe is trained.

    Attributes:
        head: ``"linear"`` (inputs standardised on the training fragments, the
            map folded into the exported weights) or ``"mlp"`` (SPEC §6:
            LayerNorm → Linear(256) → GELU → Dropout → Linear).
        epochs: passes over the training fragments (the last epoch is kept).
        batch_size: fragments per step.
        lr: peak learning rate of the one-cycle schedule; ``None`` = 1e-2
            (linear) or 3e-3 (mlp).
        weight_decay: AdamW weight decay.
        dropout: MLP dropout.
        val_fraction: fraction of the polyps (per class) held out for calibration.
        seed: seeds the polyp split and the probe's initialisation and batches.
    """

    head: str = "linear"
    epochs: int = 20
    batch_size: int = 32
    lr: float | None = None
    weight_decay: float = 1e-2
    dropout: float = 0.1
    val_fraction: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {list(HEADS)}, got {self.head!r}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0 (or None for the head's default), got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.head]


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
        frags = fragment_indices(len(t), fragment)
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
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            features=features,
            meta=np.frombuffer(json.dumps(meta, default=float).encode(), dtype=np.uint8),
        )
        tmp.replace(path)
    return out


def encoder_fragment_features(
    encoder: OnnxEncoder,
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
            needed = sorted({int(i) for f in frags for i in f})
            raw = crops.get([t.image_paths[i] for i in needed], t.boxes[needed])
            row = {frame: r for r, frame in enumerate(needed)}
            seqs += [normalize(raw[[row[int(i)] for i in f]], encoder.preprocess) for f in frags]
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


# --------------------------------------------------------------------------- the probe (torch)


class ProbeHead(nn.Module):
    """The trainable probe: ``(N, D)`` features → ``(N,)`` logits.

    ``linear``: fixed standardisation ``(x − mean)/std`` (buffers) → ``Linear(D, 1)``.
    ``mlp``: ``LayerNorm(D) → Linear(D, 256) → GELU → Dropout → Linear(256, 1)``.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self,
        dim: int,
        head: str,
        dropout: float = 0.1,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.head = head
        if head == "linear":
            self.register_buffer(
                "mean",
                torch.as_tensor(np.zeros(dim) if mean is None else mean, dtype=torch.float32),
            )
            self.register_buffer(
                "std", torch.as_tensor(np.ones(dim) if std is None else std, dtype=torch.float32)
            )
            self.linear = nn.Linear(dim, 1)
        elif head == "mlp":
            self.norm = nn.LayerNorm(dim)
            self.fc1 = nn.Linear(dim, MLP_HIDDEN)
            self.act = nn.GELU()
            self.drop = nn.Dropout(dropout)
            self.fc2 = nn.Linear(MLP_HIDDEN, 1)
        else:
            raise ConfigError(f"head must be one of {list(HEADS)}, got {head!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head == "linear":
            out = self.linear((x - self.mean) / self.std)
        else:
            out = self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))
        return out[:, 0]

    def export_arrays(self) -> dict[str, np.ndarray]:
        """Numpy weights for :class:`model.probe.Probe` (standardisation folded in)."""
        if self.head == "linear":
            w = self.linear.weight.detach().double().numpy()  # (1, D)
            b = self.linear.bias.detach().double().numpy()
            std = self.std.detach().double().numpy()
            mean = self.mean.detach().double().numpy()
            w_folded = w / std
            return {
                "linear.weight": w_folded.astype(np.float32),
                "linear.bias": (b - w_folded @ mean).astype(np.float32),
            }
        return {
            "norm.weight": self.norm.weight.detach().numpy().copy(),
            "norm.bias": self.norm.bias.detach().numpy().copy(),
            "fc1.weight": self.fc1.weight.detach().numpy().copy(),
            "fc1.bias": self.fc1.bias.detach().numpy().copy(),
            "fc2.weight": self.fc2.weight.detach().numpy().copy(),
            "fc2.bias": self.fc2.bias.detach().numpy().copy(),
        }


def fit_head(
    features: np.ndarray, labels: np.ndarray, config: ProbeTrainConfig
) -> tuple[ProbeHead, list[float]]:
    """Train a :class:`ProbeHead` with BCE, AdamW and a one-cycle LR schedule.

    Args:
        features: (N, D) training features.
        labels: (N,) labels in {0, 1}.
        config: head, epochs, batch size, LR, weight decay, seed.

    Returns:
        The trained head (eval mode) and the mean training loss of each epoch.
    """
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise InvalidInputError(f"features (N, D) and labels (N,) needed, got {x.shape}, {y.shape}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    mean = x.mean(axis=0)
    std = np.maximum(x.std(axis=0), 1e-6)
    model = ProbeHead(x.shape[1], config.head, config.dropout, mean, std)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.peak_lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.peak_lr, total_steps=config.epochs * steps_per_epoch
    )
    loss_fn = nn.BCEWithLogitsLoss()
    history: list[float] = []
    model.train()
    # the probe's tensors are tiny: one thread avoids thread start-up and contention costs
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(config.epochs):
            order = torch.randperm(len(x), generator=generator)
            total = 0.0
            for start in range(0, len(x), config.batch_size):
                batch = order[start : start + config.batch_size]
                loss = loss_fn(model(xt[batch]), yt[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(batch)
            history.append(total / len(x))
    finally:
        torch.set_num_threads(threads)
    return model.eval(), history


def binary_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of ``labels`` under ``sigmoid(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    y = np.asarray(labels, dtype=np.float64)
    # -[y log σ(z) + (1-y) log(1-σ(z))] = softplus(z) - y z, computed stably
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
    iterations: int = 100,
) -> float:
    """Temperature ``T`` minimising the NLL of ``sigmoid(logits / T)`` (temperature scaling).

    The NLL is convex in ``1/T``, hence unimodal in ``log T``: a golden-section
    search over ``log T`` in ``bounds`` finds the minimum (to ~1e-9 relative
    after 100 iterations). ``T`` stays inside ``bounds``: a separable validation
    set pushes it to the lower bound.

    Args:
        logits: (N,) uncalibrated logits, N ≥ 1.
        labels: (N,) labels in {0, 1}.
        bounds: ``(T_min, T_max)``, 0 < T_min < T_max.

    Returns:
        The fitted temperature.
    """
    z = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if z.size == 0 or z.shape != y.shape:
        raise InvalidInputError(f"need N >= 1 logits and labels, got {z.size} and {y.size}")
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    if not 0 < bounds[0] < bounds[1]:
        raise InvalidInputError(f"temperature bounds must satisfy 0 < lo < hi, got {bounds}")
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = binary_nll(z, y, math.exp(c)), binary_nll(z, y, math.exp(d))
    for _ in range(iterations):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = binary_nll(z, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = binary_nll(z, y, math.exp(d))
    best = math.exp((a + b) / 2.0)
    # the ends of the interval are candidates too (a monotone NLL)
    candidates = [(binary_nll(z, y, t), t) for t in (best, bounds[0], bounds[1])]
    return float(min(candidates)[1])


# --------------------------------------------------------------------------- train + calibrate


@dataclass
class ProbeFit:
    """A trained, calibrated probe and what was measured while fitting it.

    Attributes:
        probe: the numpy probe (weights, temperature, metadata).
        head: the torch module (for parity checks).
        report: JSON-ready summary (split sizes, balance, exclusions, history,
            validation metrics, ECE before/after calibration).
        val_probabilities: ``{"uncalibrated": (M,), "calibrated": (M,)}`` on the
            validation fragments.
        val_labels: (M,) validation fragment labels.
    """

    probe: Probe
    head: ProbeHead
    report: dict[str, Any]
    val_probabilities: dict[str, np.ndarray] = field(default_factory=dict)
    val_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def identity_metrics(
    probabilities: np.ndarray, labels: np.ndarray, identities: Sequence[str]
) -> dict[str, Any]:
    """Polyp-level metrics: majority vote per polyp, AUROC on the mean probability."""
    ids, voted, mean_p = vote_by_identity(probabilities, identities)
    truth: dict[str, int] = {}
    for i, y in zip(identities, np.asarray(labels).tolist(), strict=True):
        truth.setdefault(i, int(y))
    y_true = np.asarray([truth[str(i)] for i in ids], dtype=np.int64)
    out = binary_classification_metrics(y_true, voted, mean_p)
    out["predictions"] = {
        "polyps": [str(i) for i in ids],
        "y_true": y_true.tolist(),
        "y_pred": voted.tolist(),
        "probability": mean_p.tolist(),
    }
    return out


def train_probe(
    task: str,
    fragments: FragmentSet,
    config: ProbeTrainConfig,
    encoder_version: str,
    training_info: dict[str, Any] | None = None,
) -> ProbeFit:
    """Train and calibrate a probe on one split's fragments.

    The labelled polyps are split 70/30 (``config.val_fraction``) by polyp with
    :func:`split_polyps`; the head is trained on the 70 % (fixed epochs, last
    epoch kept), the temperature fitted on the 30 %'s fragment logits.

    Args:
        task: ``"size"`` or ``"histology"``.
        fragments: the split's fragment features.
        config: training settings.
        encoder_version: stored with the probe (``fragments.source`` for encoders).
        training_info: more JSON-ready facts for the probe's ``training`` metadata.

    Raises:
        InvalidInputError: fewer than two labelled polyps per class.
    """
    check_task(task)
    labelled = label_fragments(fragments, task)
    balance = labelled.balance(task)
    if min(balance["polyps"].values()) < 2:
        raise InvalidInputError(
            f"{task} probe needs at least 2 labelled polyps per class in split "
            f"{fragments.split!r}, got {balance['polyps']} "
            f"({labelled.excluded_polyps} polyp(s) without a known label excluded)"
        )
    train_ids, val_ids = split_polyps(labelled.polyp_labels, config.seed, config.val_fraction)
    train = labelled.subset(set(train_ids))
    val = labelled.subset(set(val_ids))
    t0 = time.perf_counter()
    head, history = fit_head(train.features, train.labels, config)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        val_logits = head(torch.from_numpy(val.features)).double().numpy()
    temperature = fit_temperature(val_logits, val.labels)
    p_before = sigmoid(val_logits)
    p_after = sigmoid(val_logits / temperature)
    val_metrics = identity_metrics(p_after, val.labels, val.identities)
    val_metrics.pop("predictions")
    report: dict[str, Any] = {
        "task": task,
        "classes": list(CLASSES[task]),
        "split": fragments.split,
        "fragment": fragments.fragment.to_dict(),
        "config": {**asdict(config), "peak_lr": config.peak_lr},
        "excluded_unknown_label": {
            "polyps": labelled.excluded_polyps,
            "fragments": labelled.excluded_fragments,
        },
        "label_balance": {
            "all": balance,
            "probe_train": train.balance(task),
            "probe_val": val.balance(task),
        },
        "probe_train_polyps": train_ids,
        "probe_val_polyps": val_ids,
        "train_seconds": seconds,
        "train_loss_per_epoch": history,
        "temperature": temperature,
        "temperature_at_bound": bool(
            math.isclose(temperature, TEMPERATURE_BOUNDS[0])
            or math.isclose(temperature, TEMPERATURE_BOUNDS[1])
        ),
        "val": {
            "nll_before": binary_nll(val_logits, val.labels, 1.0),
            "nll_after": binary_nll(val_logits, val.labels, temperature),
            "ece_before": expected_calibration_error(p_before, val.labels),
            "ece_after": expected_calibration_error(p_after, val.labels),
            "ece_definition": "15 equal-width bins of P(positive), fragment level",
            "identity_level": val_metrics,
        },
    }
    metadata = {
        "task": task,
        "classes": list(CLASSES[task]),
        "head": config.head,
        "temperature": temperature,
        "encoder_version": encoder_version,
        "dim": fragments.dim,
        "training": {
            "split": fragments.split,
            "fragment": fragments.fragment.to_dict(),
            "seed": config.seed,
            "epochs": config.epochs,
            "peak_lr": config.peak_lr,
            "weight_decay": config.weight_decay,
            "batch_size": config.batch_size,
            "label_balance": report["label_balance"],
            "excluded_unknown_label": report["excluded_unknown_label"],
            **(training_info or {}),
        },
        "metrics": {
            "val_ece_before": report["val"]["ece_before"],
            "val_ece_after": report["val"]["ece_after"],
            "val_identity_accuracy": val_metrics["accuracy"],
            "val_identity_macro_f1": val_metrics["macro_f1"],
            "val_identity_auroc": val_metrics.get("auroc"),
        },
    }
    probe = Probe(head.export_arrays(), metadata)
    report["probe_version"] = probe.version
    return ProbeFit(
        probe=probe,
        head=head,
        report=report,
        val_probabilities={"uncalibrated": p_before, "calibrated": p_after},
        val_labels=val.labels,
    )


def default_probe_cache() -> Path:
    """``$POLYPINDEX_HOME/cache/probe_embeddings`` (``var/`` by default)."""
    return Path(os.environ.get("POLYPINDEX_HOME", "var")) / "cache" / "probe_embeddings"


def train_probe_on_encoder(
    task: str,
    data: str | Path,
    model: str | Path,
    out: str | Path | None = None,
    config: ProbeTrainConfig | None = None,
    split: str = "train",
    cache_dir: str | Path | None = None,
    crop_cache_dir: str | Path | None = None,
    fragment_length: int | None = None,
    progress: bool = True,
) -> tuple[ProbeFit, Path]:
    """``polypindex probe train``: embed ``split`` with the ONNX encoder, train, calibrate, save.

    Writes the probe to ``out`` (default ``<model dir>/probes/<task>.npz``),
    its report to ``<out stem>.report.json`` and the validation reliability
    diagram (before/after temperature scaling) to ``<out stem>_reliability.png``.

    Args:
        fragment_length: override the encoder's fragment length (default: the
            encoder's own rule, what the service embeds).

    Returns:
        The fit and the probe path.
    """
    check_task(task)
    config = config or ProbeTrainConfig()
    model = Path(model)
    encoder = OnnxEncoder(model)
    cache_dir = default_probe_cache() if cache_dir is None else cache_dir
    crop_cache_dir = crop_cache_dir or Path(cache_dir).parent / "crops"
    fragment = encoder.fragment
    if fragment_length is not None:
        fragment = FragmentConfig.from_dict(
            {**fragment.to_dict(), "fragment_length": fragment_length}
        )
    fragments = encoder_fragment_features(
        encoder, data, split, cache_dir, crop_cache_dir, fragment=fragment, progress=progress
    )
    fit = train_probe(
        task,
        fragments,
        config,
        encoder.version,
        training_info={"data": str(data), "encoder_path": str(model)},
    )
    path = Path(out) if out is not None else probe_path(model.parent / "probes", task)
    fit.probe.save(path)
    stem = path.with_suffix("")
    (stem.parent / f"{stem.name}.report.json").write_text(
        json.dumps(fit.report, indent=2, default=float)
    )
    save_reliability_png(
        {
            "uncalibrated": (fit.val_probabilities["uncalibrated"], fit.val_labels),
            f"temperature {fit.probe.temperature:.2f}": (
                fit.val_probabilities["calibrated"],
                fit.val_labels,
            ),
        },
        stem.parent / f"{stem.name}_reliability.png",
        title=f"{task} probe ({config.head}) on {encoder.version}: validation fragments",
    )
    return fit, path

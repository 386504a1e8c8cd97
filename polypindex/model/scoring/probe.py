"""Size and histology probes on frozen encoder embeddings: the serving side (numpy only).

A probe is a small binary classifier trained by :mod:`training.probe` on the
fragment embeddings of one ONNX encoder (docs/method.md#probes):

- ``size``: ``classes = ("non_diminutive", "diminutive")``; diminutive = size ≤ 5 mm.
- ``histology``: ``classes = ("non_adenoma", "adenoma")``; non-adenoma = hyperplastic,
  sessile serrated, traditional serrated or inflammatory.

The head is ``linear`` (one ``Linear(D, 1)``; training standardises the
inputs and folds that affine map into the exported weights) or ``mlp``
(``LayerNorm(D) → Linear(D, 256) → GELU → Dropout(0.1) → Linear(256, 1)``;
dropout is the identity at inference). Its single logit ``z`` is calibrated
by temperature scaling: ``P(classes[1]) = sigmoid(z / T)``.

File format (``.npz``, loaded with ``allow_pickle=False``): the layer arrays
(``linear.weight``/``linear.bias``, or ``norm.weight``, ``norm.bias``,
``fc1.weight``, ``fc1.bias``, ``fc2.weight``, ``fc2.bias``, shaped as in
torch: ``weight`` is ``(out, in)``) and ``metadata``, the UTF-8 bytes of a JSON
object with ``format``, ``task``, ``classes``, ``head``, ``temperature``,
``encoder_version``, ``dim``, ``layer_norm_eps`` and free-form ``training``
and ``metrics`` summaries.

A polyp (or tracklet) is decided by a majority vote over its fragments
(:func:`majority_vote`): each fragment votes ``classes[1]`` when its
calibrated probability is ≥ 0.5; a tie is decided by the mean calibrated
probability (``classes[1]`` when it is ≥ 0.5).

A probe knows its quality (:meth:`Probe.quality`): training stores its validation
metrics (``metrics["validation"]``: AUROC, ECE and, for histology, the NPV for
adenoma on diminutive polyps); a probe whose AUROC is below a setting (default
:data:`model.scoring.probe_quality.RELIABLE_AUROC`) is ``unreliable``, and one without a measured AUROC (files of
older releases without metrics) is ``unknown`` — neither is ever shown as a decision.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from polypindex.model.core.errors import EncoderMismatchError, InvalidInputError, ModelLoadError
from polypindex.model.core.files import atomic_path
from polypindex.model.core.versions import canonical_version
from polypindex.model.scoring.probe_quality import RELIABLE_AUROC, ProbeQuality, probe_quality

TASKS = ("size", "histology")
CLASSES: dict[str, tuple[str, str]] = {
    "size": ("non_diminutive", "diminutive"),
    "histology": ("non_adenoma", "adenoma"),
}
HEADS = ("linear", "mlp")
PROBE_FORMAT = "polypindex-probe/1"
DIMINUTIVE_MAX_MM = 5.0
ADENOMA = "adenoma"
NON_ADENOMA = ("hyperplastic", "sessile_serrated", "traditional_serrated", "inflammatory")
MLP_HIDDEN = 256
DECISION_THRESHOLD = 0.5
_LAYERS = {
    "linear": ("linear.weight", "linear.bias"),
    "mlp": ("norm.weight", "norm.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"),
}


def check_task(task: str) -> str:
    """Return ``task`` if it is one of :data:`TASKS`, else raise :class:`InvalidInputError`."""
    if task not in TASKS:
        raise InvalidInputError(f"unknown probe task {task!r}; choose one of {list(TASKS)}")
    return task


def probe_path(probes_dir: str | Path, task: str) -> Path:
    """Where the probe of ``task`` lives in a probes folder: ``{probes_dir}/{task}.npz``."""
    return Path(probes_dir) / f"{check_task(task)}.npz"


def task_label(task: str, metadata: Mapping[str, Any]) -> int | None:
    """The binary label of one polyp from its annotation metadata, or ``None`` if unknown.

    ``size``: 1 when ``metadata["size"]`` (mm) is ≤ 5, 0 when larger; missing,
    non-numeric, non-finite or non-positive sizes are unknown. ``histology``:
    1 for ``adenoma``, 0 for the four non-adenoma types; anything else
    (missing, ``unknown``, other types) is unknown. Unknown labels are never
    guessed: callers exclude and count them.
    """
    check_task(task)
    if task == "size":
        value = metadata.get("size")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        size = float(value)
        if not math.isfinite(size) or size <= 0:
            return None
        return int(size <= DIMINUTIVE_MAX_MM)
    histology = metadata.get("histology")
    if not isinstance(histology, str):
        return None
    name = histology.strip().lower()
    if name == ADENOMA:
        return 1
    if name in NON_ADENOMA:
        return 0
    return None


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, float64."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, ``x · Φ(x) = x/2 · (1 + erf(x/√2))`` (torch's default), float64."""
    x = np.asarray(x, dtype=np.float64)
    erf = np.asarray(_erf(x / math.sqrt(2.0)), dtype=np.float64)
    return 0.5 * x * (1.0 + erf)


def majority_vote(
    probabilities: np.ndarray, threshold: float = DECISION_THRESHOLD
) -> tuple[int, float]:
    """Decide one polyp from its fragments' calibrated probabilities.

    Each fragment votes 1 when its probability is ≥ ``threshold``. The class
    with more votes wins; a tie (equal votes) is decided by the mean
    probability: 1 when it is ≥ ``threshold``.

    Args:
        probabilities: (F,) calibrated P(positive) of the F ≥ 1 fragments.
        threshold: the per-fragment and tie-break decision threshold.

    Returns:
        ``(label, mean probability)``.

    Raises:
        InvalidInputError: empty or non-finite input.
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise InvalidInputError("majority_vote needs at least one fragment probability")
    if not np.all(np.isfinite(p)):
        raise InvalidInputError("fragment probabilities contain NaN or infinite values")
    positive = int(np.count_nonzero(p >= threshold))
    negative = p.size - positive
    mean = float(p.mean())
    if positive != negative:
        return int(positive > negative), mean
    return int(mean >= threshold), mean


def vote_by_identity(
    probabilities: np.ndarray, identities: Sequence[Hashable]
) -> tuple[list[Hashable], np.ndarray, np.ndarray]:
    """:func:`majority_vote` per identity (polyp), identities in first-seen order.

    Args:
        probabilities: (N,) calibrated P(positive) of N fragments.
        identities: N identity labels, one per fragment.

    Returns:
        ``(ids, labels, mean_probabilities)``: the K distinct identities, (K,)
        int64 voted labels and (K,) float64 mean probabilities.
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    ids = list(identities)
    if len(ids) != p.size:
        raise InvalidInputError(f"{p.size} probabilities but {len(ids)} identities")
    groups: dict[Hashable, list[int]] = {}
    for i, ident in enumerate(ids):
        groups.setdefault(ident, []).append(i)
    keys = list(groups)
    votes = [majority_vote(p[groups[k]]) for k in keys]
    return (
        keys,
        np.asarray([v[0] for v in votes], dtype=np.int64),
        np.asarray([v[1] for v in votes], dtype=np.float64),
    )


@dataclass(frozen=True)
class ProbePrediction:
    """One probe decision.

    Attributes:
        task: ``"size"`` or ``"histology"``.
        label: one of the probe's ``classes``.
        probability: calibrated P(``classes[1]``) (the mean over fragments for a tracklet).
    """

    task: str
    label: str
    probability: float


def _content_hash(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(metadata, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name], dtype=np.float32)
        h.update(f"{name}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:12]


def _expected_shapes(head: str, dim: int) -> dict[str, tuple[int, ...]]:
    if head == "linear":
        return {"linear.weight": (1, dim), "linear.bias": (1,)}
    return {
        "norm.weight": (dim,),
        "norm.bias": (dim,),
        "fc1.weight": (MLP_HIDDEN, dim),
        "fc1.bias": (MLP_HIDDEN,),
        "fc2.weight": (1, MLP_HIDDEN),
        "fc2.bias": (1,),
    }


class Probe:
    """A trained, calibrated binary probe, run with numpy.

    Args:
        arrays: the layer weights (see the module docstring), float32.
        metadata: ``task``, ``classes``, ``head``, ``temperature``,
            ``encoder_version``, ``dim`` (and optional ``layer_norm_eps``,
            ``training``, ``metrics``).

    Attributes:
        task: ``"size"`` or ``"histology"``.
        classes: ``(negative, positive)`` class names.
        head: ``"linear"`` or ``"mlp"``.
        encoder_version: the encoder whose embeddings the probe reads.
        version: short content hash of the weights and metadata.
        temperature: calibration temperature ``T > 0``.
        dim: embedding size ``D``.
        metadata: the full metadata (training summary and metrics included).

    Raises:
        InvalidInputError: inconsistent metadata or weight shapes.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
        meta = dict(metadata)
        try:
            self.task = check_task(str(meta["task"]))
            self.head = str(meta["head"])
            # probes trained on a BF16/FP16 runtime by older releases named its
            # suffixed version; the identity is the model's (model.runtime.parity)
            self.encoder_version = canonical_version(str(meta["encoder_version"]))
            self.temperature = float(meta["temperature"])
            self.dim = int(meta["dim"])
            classes = tuple(str(c) for c in meta["classes"])
            self.layer_norm_eps = float(meta.get("layer_norm_eps", 1e-5))
        except KeyError as exc:
            raise InvalidInputError(f"probe metadata lacks key {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"probe metadata is invalid: {exc}") from exc
        if classes != CLASSES[self.task]:
            raise InvalidInputError(
                f"probe classes {classes} do not match task {self.task!r} ({CLASSES[self.task]})"
            )
        self.classes: tuple[str, str] = CLASSES[self.task]
        if self.head not in HEADS:
            raise InvalidInputError(f"unknown probe head {self.head!r}; expected one of {HEADS}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InvalidInputError(f"probe temperature must be > 0, got {self.temperature}")
        if self.dim < 1:
            raise InvalidInputError(f"probe dim must be >= 1, got {self.dim}")
        expected = _expected_shapes(self.head, self.dim)
        weights: dict[str, np.ndarray] = {}
        for name, shape in expected.items():
            if name not in arrays:
                raise InvalidInputError(f"{self.head} probe lacks weight array {name!r}")
            a = np.asarray(arrays[name], dtype=np.float32)
            if a.shape != shape:
                raise InvalidInputError(
                    f"probe weight {name!r} has shape {a.shape}, expected {shape}"
                )
            if not np.all(np.isfinite(a)):
                raise InvalidInputError(f"probe weight {name!r} contains NaN or infinite values")
            weights[name] = a
        self._weights = weights
        meta.update(
            format=PROBE_FORMAT,
            classes=list(self.classes),
            temperature=self.temperature,
            dim=self.dim,
            layer_norm_eps=self.layer_norm_eps,
        )
        self.metadata: dict[str, Any] = meta
        self.version = f"probe-{self.task}-{_content_hash(weights, meta)}"

    def __repr__(self) -> str:
        return (
            f"Probe(task={self.task!r}, head={self.head!r}, version={self.version!r}, "
            f"encoder_version={self.encoder_version!r}, dim={self.dim}, T={self.temperature:.3f})"
        )

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """Copies of the layer weights (float32, torch layout)."""
        return {k: v.copy() for k, v in self._weights.items()}

    @property
    def metrics(self) -> dict[str, Any]:
        """The stored metrics (``{}`` for a probe without any)."""
        stored = self.metadata.get("metrics")
        return dict(stored) if isinstance(stored, Mapping) else {}

    def quality(self, min_auroc: float = RELIABLE_AUROC) -> ProbeQuality:
        """:func:`probe_quality` of this probe's metrics against ``min_auroc``."""
        return probe_quality(self.task, self.metrics, min_auroc)

    @property
    def reliable(self) -> bool:
        """Validation AUROC ≥ :data:`RELIABLE_AUROC` (``False`` when not measured)."""
        return self.quality().reliable

    def check_encoder(self, encoder_version: str) -> None:
        """Raise :class:`EncoderMismatchError` unless ``encoder_version`` is the probe's encoder."""
        if encoder_version != self.encoder_version:
            raise EncoderMismatchError(
                f"the {self.task} probe {self.version} was trained on encoder "
                f"{self.encoder_version!r}, but the embeddings come from encoder "
                f"{encoder_version!r}; retrain it with `polypindex probe train {self.task}`"
            )

    def _check(self, embeddings: np.ndarray) -> np.ndarray:
        if not isinstance(embeddings, np.ndarray):
            raise InvalidInputError(
                f"embeddings must be a numpy array (N, {self.dim}), got {type(embeddings).__name__}"
            )
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim or embeddings.shape[0] < 1:
            raise InvalidInputError(
                f"embeddings must have shape (N, {self.dim}) with N >= 1, got {embeddings.shape}"
            )
        if not np.issubdtype(embeddings.dtype, np.number) or np.issubdtype(
            embeddings.dtype, np.complexfloating
        ):
            raise InvalidInputError(
                f"embeddings must be real numbers, got dtype {embeddings.dtype}"
            )
        x = embeddings.astype(np.float64)
        if not np.all(np.isfinite(x)):
            raise InvalidInputError("embeddings contain NaN or infinite values")
        return x

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """Uncalibrated logits.

        Args:
            embeddings: (N, D) embeddings of the probe's encoder.

        Returns:
            (N,) float64 logits (before dividing by the temperature).

        Raises:
            InvalidInputError: wrong type, shape or non-finite values.
        """
        x = self._check(embeddings)
        w = {k: v.astype(np.float64) for k, v in self._weights.items()}
        if self.head == "linear":
            out = x @ w["linear.weight"].T + w["linear.bias"]
        else:
            mean = x.mean(axis=1, keepdims=True)
            var = x.var(axis=1, keepdims=True)
            h = (x - mean) / np.sqrt(var + self.layer_norm_eps) * w["norm.weight"] + w["norm.bias"]
            h = gelu(h @ w["fc1.weight"].T + w["fc1.bias"])
            out = h @ w["fc2.weight"].T + w["fc2.bias"]
        return np.asarray(out[:, 0], dtype=np.float64)

    def predict_proba(self, embeddings: np.ndarray) -> np.ndarray:
        """Calibrated probability of ``classes[1]``: ``sigmoid(logit / T)``.

        Args:
            embeddings: (N, D) embeddings of the probe's encoder (float32 or float64).

        Returns:
            (N,) float64 probabilities in [0, 1].

        Raises:
            InvalidInputError: wrong type, shape or non-finite values.
        """
        return sigmoid(self.logits(embeddings) / self.temperature)

    def predict_tracklet(self, fragment_embeddings: np.ndarray) -> ProbePrediction:
        """Decide a tracklet (or a polyp) from its fragment embeddings by majority vote.

        Args:
            fragment_embeddings: (F, D) embeddings of its F ≥ 1 fragments; a
                single (D,) vector counts as one fragment.

        Returns:
            The voted label (tie → mean calibrated probability ≥ 0.5) and the
            mean calibrated probability of ``classes[1]``.
        """
        x = fragment_embeddings
        if isinstance(x, np.ndarray) and x.ndim == 1:
            x = x.reshape(1, -1)
        label, mean = majority_vote(self.predict_proba(x))
        return ProbePrediction(task=self.task, label=self.classes[label], probability=mean)

    def save(self, path: str | Path) -> Path:
        """Write the probe to ``path`` (``.npz``; folders are created; atomic, see
        :mod:`polypindex.model.core.files`)."""
        path = Path(path)
        payload = dict(self._weights)
        payload["metadata"] = np.frombuffer(
            json.dumps(self.metadata, sort_keys=True, default=float).encode(), dtype=np.uint8
        )
        with atomic_path(path, suffix=".npz") as tmp:
            np.savez(tmp, **payload)  # type: ignore[arg-type]
        return path


def load_probe(path: str | Path, encoder_version: str | None = None) -> Probe:
    """Load a probe written by :meth:`Probe.save`.

    Args:
        path: the ``.npz`` file.
        encoder_version: when given, the probe must have been trained on this encoder.

    Raises:
        ModelLoadError: missing, unreadable or malformed file (the message names the path).
        EncoderMismatchError: the probe belongs to another encoder version (both named).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(
            f"probe file not found: {path} (train it with `polypindex probe train`)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelLoadError(f"cannot read probe file {path}: {exc}") from exc
    if "metadata" not in arrays:
        raise ModelLoadError(f"probe file {path} has no metadata entry")
    try:
        metadata = json.loads(arrays.pop("metadata").astype(np.uint8).tobytes().decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"probe file {path} has unreadable metadata: {exc}") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != PROBE_FORMAT:
        got = metadata.get("format") if isinstance(metadata, dict) else type(metadata).__name__
        raise ModelLoadError(f"probe file {path} has format {got!r}, expected {PROBE_FORMAT!r}")
    try:
        probe = Probe(arrays, metadata)
    except InvalidInputError as exc:
        raise ModelLoadError(f"probe file {path} is invalid: {exc}") from exc
    if encoder_version is not None:
        probe.check_encoder(encoder_version)
    return probe

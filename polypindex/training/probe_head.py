"""The probe head and its fitting (docs/method.md#probes): a linear or MLP head
trained with
BCE, AdamW and a one-cycle LR for a fixed number of epochs (the last kept), and the
temperature scaling fitted on held-out polyps. torch; the served probe is
:class:`model.scoring.probe.Probe` (numpy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from polypindex.model.core.errors import ConfigError, InvalidInputError
from polypindex.model.scoring.probe import HEADS, MLP_HIDDEN

TEMPERATURE_BOUNDS = (0.05, 20.0)
DEFAULT_LR = {"linear": 1e-2, "mlp": 3e-3}


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ProbeTrainConfig:
    """How a probe is trained.

    Attributes:
        head: ``"linear"`` (inputs standardised on the training fragments, the
            map folded into the exported weights) or ``"mlp"`` (docs/method.md#probes:
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
        """Numpy weights for :class:`model.scoring.probe.Probe` (standardisation folded in)."""
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

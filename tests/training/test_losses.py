"""Losses (docs/method.md#losses) against naive python-loop references and closed-form cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from polypindex.model.core.errors import ConfigError, InvalidInputError
from polypindex.training.losses import MilNceLoss, mil_nce, multi_positive_contrastive


def _cos(z: torch.Tensor) -> np.ndarray:
    z = z.double().numpy()
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    return z @ z.T


def _lse(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def naive_mil_nce(
    z: torch.Tensor, labels: list[int], tau: float, ignore: np.ndarray | None = None
) -> float:
    sim = _cos(z) / tau
    losses = []
    for i in range(len(labels)):
        cand = [j for j in range(len(labels)) if j != i and (ignore is None or not ignore[i, j])]
        pos = [j for j in cand if labels[j] == labels[i]]
        if pos:
            losses.append(-(_lse([sim[i, j] for j in pos]) - _lse([sim[i, j] for j in cand])))
    return sum(losses) / len(losses) if losses else 0.0


def naive_multi_positive(z: torch.Tensor, labels: list[int], tau: float) -> float:
    sim = _cos(z) / tau
    losses = []
    for i in range(len(labels)):
        cand = [j for j in range(len(labels)) if j != i]
        pos = [j for j in cand if labels[j] == labels[i]]
        if not pos:
            continue
        norm = _lse([sim[i, j] for j in cand])
        losses.append(-sum(sim[i, j] - norm for j in pos) / len(pos))
    return sum(losses) / len(losses)


CASES = [
    # (n, d, labels, tau, seed)
    (6, 4, [0, 0, 0, 1, 1, 1], 0.07, 0),
    (10, 8, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4], 0.1, 1),
    (7, 3, [0, 1, 1, 2, 2, 2, 3], 0.5, 2),  # anchors 0 and 6 have no positive
    (12, 16, [0] * 12, 1.0, 3),  # every other item is a positive
]


@pytest.mark.parametrize(("n", "d", "labels", "tau", "seed"), CASES)
def test_mil_nce_matches_naive(n: int, d: int, labels: list[int], tau: float, seed: int) -> None:
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    got = mil_nce(z, torch.tensor(labels), tau)
    assert float(got) == pytest.approx(naive_mil_nce(z, labels, tau), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize(("n", "d", "labels", "tau", "seed"), CASES)
def test_multi_positive_matches_naive(
    n: int, d: int, labels: list[int], tau: float, seed: int
) -> None:
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    got = multi_positive_contrastive(z, torch.tensor(labels), tau)
    assert float(got) == pytest.approx(naive_multi_positive(z, labels, tau), rel=1e-5, abs=1e-6)


def test_mil_nce_ignore_mask_matches_naive() -> None:
    z = torch.randn(8, 5, generator=torch.Generator().manual_seed(4))
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    ignore = np.zeros((8, 8), dtype=bool)
    ignore[0, 5] = ignore[5, 0] = True  # a negative pair dropped
    ignore[1, 2] = ignore[2, 1] = True  # a positive pair dropped
    got = mil_nce(z, torch.tensor(labels), 0.2, torch.from_numpy(ignore))
    assert float(got) == pytest.approx(naive_mil_nce(z, labels, 0.2, ignore), rel=1e-5)


def _unit(angle_deg: float) -> list[float]:
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


def test_mil_nce_closed_form() -> None:
    # a=0°, b=60° (cos 0.5, same bag), c=90°, d=180°: cosines known exactly
    z = torch.tensor([_unit(0), _unit(60), _unit(90), _unit(180)])
    labels = torch.tensor([0, 0, 1, 1])
    tau = 1.0
    e = math.exp
    # anchor a: pos {b: .5}; all {b: .5, c: 0, d: -1}
    la = -(0.5 - math.log(e(0.5) + e(0.0) + e(-1.0)))
    # anchor b: pos {a: .5}; all {a: .5, c: cos30, d: cos120=-.5}
    c30 = math.cos(math.radians(30))
    lb = -(0.5 - math.log(e(0.5) + e(c30) + e(-0.5)))
    # anchor c: pos {d: cos90=0}; all {a: 0, b: cos30, d: 0}
    lc = -(0.0 - math.log(e(0.0) + e(c30) + e(0.0)))
    # anchor d: pos {c: 0}; all {a: -1, b: -.5, c: 0}
    ld = -(0.0 - math.log(e(-1.0) + e(-0.5) + e(0.0)))
    expected = (la + lb + lc + ld) / 4
    assert float(mil_nce(z, labels, tau)) == pytest.approx(expected, rel=1e-6)


def test_mil_nce_one_correct_positive_carries_the_anchor() -> None:
    # anchor a's bag {a, b, x}: b points the same way as a, x is a wrong (opposite)
    # member. With LSE over positives, a's loss stays near its clean value (x adds
    # at most log 2 to the candidates' sum and nothing to the positives').
    z = torch.tensor([_unit(0), _unit(0), _unit(180), _unit(90)])
    clean = mil_nce(z[[0, 1, 3]], torch.tensor([0, 0, 1]), 0.07, reduction="none")[0]
    noisy = mil_nce(z, torch.tensor([0, 0, 0, 1]), 0.07, reduction="none")[0]
    assert float(noisy) < float(clean) + 1e-3
    # while averaging log-probabilities over positives (multi-positive) is hurt a lot:
    # half of a's target mass sits on x, at cosine -1
    mp_clean = multi_positive_contrastive(z[[0, 1, 3]], torch.tensor([0, 0, 1]), 0.07)
    mp_noisy = multi_positive_contrastive(z, torch.tensor([0, 0, 0, 1]), 0.07)
    assert float(mp_noisy) > float(mp_clean) + 5.0


def test_mil_nce_reduction_none_matches_mean() -> None:
    z = torch.randn(7, 3, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 3])
    per = mil_nce(z, labels, 0.5, reduction="none")
    assert per.shape == (7,)
    assert float(per[0]) == 0.0 and float(per[6]) == 0.0  # no positive
    assert float(per[1:6].mean()) == pytest.approx(float(mil_nce(z, labels, 0.5)), rel=1e-6)


def test_multi_positive_closed_form() -> None:
    # a=0°, b=0° (identical), c=90°; labels a,b same. tau=1.
    z = torch.tensor([_unit(0), _unit(0), _unit(90)])
    labels = torch.tensor([0, 0, 1])
    e = math.exp
    # anchor a: -log softmax over {b:1, c:0} at b; same for b; c has no positive
    la = -(1.0 - math.log(e(1.0) + e(0.0)))
    assert float(multi_positive_contrastive(z, labels, 1.0)) == pytest.approx(la, rel=1e-6)


def test_losses_without_positives_are_zero_and_differentiable() -> None:
    z = torch.randn(4, 3, requires_grad=True)
    for loss in (mil_nce(z, torch.arange(4)), multi_positive_contrastive(z, torch.arange(4))):
        assert float(loss.detach()) == 0.0
        loss.backward()


def test_gradients_are_finite_in_half_precision_input() -> None:
    z = torch.randn(6, 8).half().requires_grad_(True)
    loss = mil_nce(z, torch.tensor([0, 0, 0, 1, 1, 1]))
    loss.backward()
    assert loss.dtype == torch.float32
    assert z.grad is not None and torch.isfinite(z.grad.float()).all()


def _naive_three_terms(
    proj: torch.Tensor, labels: list[int], tau: float, ignore_same: bool
) -> tuple[float, float, float]:
    b, t, d = proj.shape
    s = t - 1
    t1 = naive_mil_nce(proj[:, 0], labels, tau)
    frames = proj[:, 1:].reshape(b * s, d)
    frame_labels = [labels[i // s] for i in range(b * s)]
    ignore = None
    if ignore_same:
        ignore = np.array([[i // s == j // s for j in range(b * s)] for i in range(b * s)])
    t2 = naive_mil_nce(frames, frame_labels, tau, ignore)
    t3 = naive_mil_nce(frames, [i // s for i in range(b * s)], tau)
    return t1, t2, t3


@pytest.mark.parametrize("ignore_same", [True, False])
@pytest.mark.parametrize(("weights"), [(1.0, 1.0, 1.0), (1.0, 0.5, 0.25), (0.0, 1.0, 0.0)])
def test_three_term_loss_matches_naive(
    ignore_same: bool, weights: tuple[float, float, float]
) -> None:
    proj = torch.randn(6, 1 + 3, 4, generator=torch.Generator().manual_seed(5))
    labels = [0, 0, 0, 1, 1, 1]
    loss_fn = MilNceLoss(0.1, *weights, ignore_same_fragment_pairs=ignore_same)
    total, terms = loss_fn(proj, torch.tensor(labels))
    t1, t2, t3 = _naive_three_terms(proj, labels, 0.1, ignore_same)
    expected = weights[0] * t1 + weights[1] * t2 + weights[2] * t3
    assert float(total) == pytest.approx(expected, rel=1e-5)
    if weights[0]:
        assert float(terms["fragment"]) == pytest.approx(t1, rel=1e-5)
    assert float(terms["frame_across"]) == pytest.approx(t2, rel=1e-5)


def test_three_term_fragment_ignore_mask_extends_to_frames() -> None:
    proj = torch.randn(4, 1 + 2, 4, generator=torch.Generator().manual_seed(6))
    labels = torch.tensor([0, 0, 1, 1])
    ignore = torch.zeros(4, 4, dtype=torch.bool)
    ignore[0, 2] = ignore[2, 0] = True
    _, terms = MilNceLoss(0.1, 1.0, 1.0, 0.0, ignore_same_fragment_pairs=True)(proj, labels, ignore)
    frame_ignore = np.zeros((8, 8), dtype=bool)
    for i in range(8):
        for j in range(8):
            fi, fj = i // 2, j // 2
            frame_ignore[i, j] = fi == fj or bool(ignore[fi, fj])
    frames = proj[:, 1:].reshape(8, 4)
    expected = naive_mil_nce(frames, [0, 0, 0, 0, 1, 1, 1, 1], 0.1, frame_ignore)
    assert float(terms["frame_across"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"temperature": 0.0}, ConfigError, "temperature"),
        ({"fragment_weight": -1.0}, ConfigError, ">= 0"),
        (
            {"fragment_weight": 0.0, "frame_across_weight": 0.0, "frame_within_weight": 0.0},
            ConfigError,
            "positive weight",
        ),
    ],
)
def test_three_term_config_errors(
    kwargs: dict[str, float], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        MilNceLoss(**kwargs)  # type: ignore[arg-type]


def test_shape_errors() -> None:
    with pytest.raises(InvalidInputError, match=r"\(N, D\)"):
        mil_nce(torch.randn(2, 3, 4), torch.tensor([0, 0]))
    with pytest.raises(InvalidInputError, match="labels"):
        mil_nce(torch.randn(3, 4), torch.tensor([0, 0]))
    with pytest.raises(InvalidInputError, match="projections"):
        MilNceLoss()(torch.randn(3, 1, 4), torch.tensor([0, 0, 1]))

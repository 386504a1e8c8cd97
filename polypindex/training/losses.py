"""Contrastive losses (docs/method.md#losses): MIL-NCE over noisy temporal bags, the supervised
multi-positive contrastive loss it is compared against, and the distance-aware soft
version of the latter (targets weighted by the temporal distance between bag members).

All losses take cosine similarities over a temperature, exclude self pairs, and
compute in float32 whatever the input dtype (safe under mixed precision).

The training losses are chosen by name from :data:`LOSSES` (``TrainConfig.loss``);
adding one is a builder function decorated with :func:`register_loss` (see the end of
this module).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from polypindex.model.core.errors import ConfigError, InvalidInputError


def _pair_masks(
    embeddings: Tensor, labels: Tensor, ignore_mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Cosine-similarity logits and the (N, N) masks of candidate and positive pairs."""
    if embeddings.ndim != 2:
        raise InvalidInputError(f"embeddings must be (N, D), got shape {tuple(embeddings.shape)}")
    n = embeddings.shape[0]
    if labels.shape != (n,):
        raise InvalidInputError(
            f"labels must be ({n},) to match embeddings, got {tuple(labels.shape)}"
        )
    z = F.normalize(embeddings.float(), dim=-1)
    sim = z @ z.T
    eye = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    valid = ~eye
    if ignore_mask is not None:
        if ignore_mask.shape != (n, n):
            raise InvalidInputError(
                f"ignore_mask must be ({n}, {n}), got {tuple(ignore_mask.shape)}"
            )
        valid = valid & ~ignore_mask.to(device=embeddings.device, dtype=torch.bool)
    positive = valid & (labels[:, None] == labels[None, :])
    return sim, valid, positive


def _pair_log_softmax(
    embeddings: Tensor, labels: Tensor, temperature: float, ignore_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Each anchor's log-softmax of ``cos / τ`` over its candidates, and the positive pairs."""
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    sim, valid, positive = _pair_masks(embeddings, labels, ignore_mask)
    logits = (sim / temperature).masked_fill(~valid, torch.finfo(sim.dtype).min)
    return logits - torch.logsumexp(logits, dim=1, keepdim=True), positive


def _mean_over_anchors(per_anchor: Tensor, has_pos: Tensor, embeddings: Tensor) -> Tensor:
    """Mean over the anchors with a positive; without one, 0 (in the graph of ``embeddings``)."""
    if not bool(has_pos.any()):
        return embeddings.sum() * 0.0
    return per_anchor[has_pos].mean()


def mil_nce(
    embeddings: Tensor,
    bag_labels: Tensor,
    temperature: float = 0.07,
    ignore_mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """MIL-NCE: per anchor, −(logsumexp over its bag members − logsumexp over all others).

    For anchor ``i`` with positives ``P_i = {j ≠ i : label_j = label_i}`` and
    candidates ``A_i = {j ≠ i}`` (both minus ignored pairs),
    ``loss_i = −(LSE_{j∈P_i} s_ij − LSE_{j∈A_i} s_ij)`` with ``s_ij = cos(z_i, z_j) / τ``.

    Args:
        embeddings: (N, D) vectors (normalised here).
        bag_labels: (N,) int labels; items sharing a label are positives.
        temperature: τ.
        ignore_mask: optional (N, N) bool, True where a pair is excluded from both
            sums (e.g. the same fragment drawn into two bags).
        reduction: ``"mean"`` or ``"none"``.

    Returns:
        ``"mean"``: scalar, the mean over anchors with at least one positive (0 if
        none). ``"none"``: (N,) per-anchor losses, 0 for anchors without a positive.
    """
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if reduction not in ("mean", "none"):
        raise ConfigError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    sim, valid, positive = _pair_masks(embeddings, bag_labels, ignore_mask)
    logits = sim / temperature
    neg_inf = torch.finfo(logits.dtype).min
    pos_lse = torch.logsumexp(logits.masked_fill(~positive, neg_inf), dim=1)
    all_lse = torch.logsumexp(logits.masked_fill(~valid, neg_inf), dim=1)
    has_pos = positive.any(dim=1)
    per_anchor = torch.where(has_pos, all_lse - pos_lse, torch.zeros_like(pos_lse))
    if reduction == "none":
        return per_anchor
    return _mean_over_anchors(per_anchor, has_pos, embeddings)


def multi_positive_contrastive(
    embeddings: Tensor,
    labels: Tensor,
    temperature: float = 0.07,
    ignore_mask: Tensor | None = None,
) -> Tensor:
    """Supervised multi-positive contrastive loss.

    Cross-entropy between the softmax over non-self similarities and a target spread
    uniformly over the same-label non-self items:
    ``loss_i = −(1/|P_i|) Σ_{j∈P_i} log softmax_{k∈A_i}(s_ik)_j``.

    Args:
        embeddings: (N, D) vectors (normalised here).
        labels: (N,) int labels.
        temperature: τ.
        ignore_mask: optional (N, N) bool of pairs to exclude.

    Returns:
        Scalar: the mean over anchors with at least one positive (0 if none).
    """
    log_prob, positive = _pair_log_softmax(embeddings, labels, temperature, ignore_mask)
    n_pos = positive.sum(dim=1)
    pos_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return _mean_over_anchors(-pos_log_prob / n_pos.clamp_min(1), n_pos > 0, embeddings)


def temporal_soft_targets(
    positive: Tensor, times: Tensor, sigma: float, groups: Tensor | None = None
) -> Tensor:
    """Row-normalised target weights over positives: ``w_ij ∝ exp(−|t_i − t_j| / σ)``.

    Args:
        positive: (N, N) bool, the pairs that receive weight.
        times: (N,) item times (e.g. normalised position in the video, in [0, 1]).
        sigma: σ > 0, in the units of ``times``.
        groups: optional (N,) int group (video) per item; pairs of different groups
            are taken as ``Δt = 1`` apart (a whole video).

    Returns:
        (N, N) float32, rows summing to 1 over ``positive`` (all-zero rows without one).
    """
    if sigma <= 0:
        raise ConfigError(f"sigma must be > 0, got {sigma}")
    t = times.float().to(positive.device)
    dt = (t[:, None] - t[None, :]).abs()
    if groups is not None:
        same = groups.to(positive.device)[:, None] == groups.to(positive.device)[None, :]
        dt = torch.where(same, dt, torch.ones_like(dt))
    logits = (-dt / sigma).masked_fill(~positive, torch.finfo(dt.dtype).min)
    weights = torch.softmax(logits, dim=1)
    return torch.where(positive, weights, torch.zeros_like(weights))


def soft_multi_positive_contrastive(
    embeddings: Tensor,
    labels: Tensor,
    times: Tensor,
    sigma: float = 0.05,
    temperature: float = 0.07,
    *,
    ignore_mask: Tensor | None = None,
    groups: Tensor | None = None,
) -> Tensor:
    """Distance-aware soft multi-positive contrastive loss.

    Like :func:`multi_positive_contrastive`, but the target over an anchor's positives
    is not uniform: ``w_ij ∝ exp(−|t_i − t_j| / σ)`` (:func:`temporal_soft_targets`),
    so bag members close in time count more than distant ones (which are more often
    another polyp): ``loss_i = −Σ_{j∈P_i} w_ij log softmax_{k∈A_i}(s_ik)_j``.
    As σ → ∞ it equals the uniform multi-positive loss.

    Args:
        embeddings: (N, D) vectors (normalised here).
        labels: (N,) int bag labels; same label = positive.
        times: (N,) item times (normalised video position).
        sigma: σ, in the units of ``times``.
        temperature: τ.
        ignore_mask: optional (N, N) bool of pairs to exclude.
        groups: optional (N,) video codes; cross-video pairs count as ``Δt = 1``.

    Returns:
        Scalar: the mean over anchors with at least one positive (0 if none).
    """
    log_prob, positive = _pair_log_softmax(embeddings, labels, temperature, ignore_mask)
    if times.shape != labels.shape:
        raise InvalidInputError(
            f"times must be {tuple(labels.shape)} like labels, got {tuple(times.shape)}"
        )
    weights = temporal_soft_targets(positive, times, sigma, groups)
    per_anchor = -torch.where(positive, weights * log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    return _mean_over_anchors(per_anchor, positive.any(dim=1), embeddings)


class MilNceLoss(nn.Module):
    """The three-term MIL-NCE (docs/method.md#mil-nce) over projected tokens.

    1. fragment level: CLS projections, labelled by bag;
    2. frame level across fragments: every frame token labelled by its bag
       (optionally ignoring pairs of frames from the same fragment);
    3. frame level within a fragment: frames of one fragment are positives.

    Args:
        temperature: τ of every term.
        fragment_weight: weight of term 1.
        frame_across_weight: weight of term 2 (0 skips it).
        frame_within_weight: weight of term 3 (0 skips it).
        ignore_same_fragment_pairs: in term 2, exclude pairs of frames of one
            fragment, so the positives are frames of the *other* bag members.
    """

    def __init__(
        self,
        temperature: float = 0.07,
        fragment_weight: float = 1.0,
        frame_across_weight: float = 1.0,
        frame_within_weight: float = 1.0,
        ignore_same_fragment_pairs: bool = True,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        weights = {
            "fragment_weight": fragment_weight,
            "frame_across_weight": frame_across_weight,
            "frame_within_weight": frame_within_weight,
        }
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ConfigError(f"loss weights must be >= 0, got {negative}")
        if sum(weights.values()) <= 0:
            raise ConfigError("at least one MIL-NCE term needs a positive weight")
        self.temperature = temperature
        self.fragment_weight = fragment_weight
        self.frame_across_weight = frame_across_weight
        self.frame_within_weight = frame_within_weight
        self.ignore_same_fragment_pairs = ignore_same_fragment_pairs

    def forward(
        self, projections: Tensor, bag_labels: Tensor, ignore_mask: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted sum of the three terms.

        Args:
            projections: (b, 1+s, d_proj), token 0 the CLS projection.
            bag_labels: (b,) int bag label per fragment.
            ignore_mask: optional (b, b) bool of fragment pairs to exclude in terms 1
                and 2 (e.g. one fragment drawn into two bags of the batch).

        Returns:
            ``(loss, terms)`` with ``terms`` holding each unweighted term (detached).
        """
        if projections.ndim != 3 or projections.shape[1] < 2:
            raise InvalidInputError(
                f"projections must be (b, 1+s, d) with s >= 1, got {tuple(projections.shape)}"
            )
        b, t, d = projections.shape
        s = t - 1
        device = projections.device
        terms: dict[str, Tensor] = {}
        total = projections.new_zeros((), dtype=torch.float32)
        if self.fragment_weight > 0:
            frag = mil_nce(projections[:, 0], bag_labels, self.temperature, ignore_mask)
            terms["fragment"] = frag.detach()
            total = total + self.fragment_weight * frag
        frames = projections[:, 1:].reshape(b * s, d)
        fragment_of = torch.arange(b, device=device).repeat_interleave(s)
        if self.frame_across_weight > 0:
            frame_ignore = None
            if ignore_mask is not None:
                frame_ignore = ignore_mask.to(device=device, dtype=torch.bool)[fragment_of][
                    :, fragment_of
                ]
            if self.ignore_same_fragment_pairs:
                same = fragment_of[:, None] == fragment_of[None, :]
                frame_ignore = same if frame_ignore is None else frame_ignore | same
            across = mil_nce(
                frames, bag_labels.to(device)[fragment_of], self.temperature, frame_ignore
            )
            terms["frame_across"] = across.detach()
            total = total + self.frame_across_weight * across
        if self.frame_within_weight > 0 and s > 1:
            within = mil_nce(frames, fragment_of, self.temperature)
            terms["frame_within"] = within.detach()
            total = total + self.frame_within_weight * within
        return total, terms


def msn_loss(
    anchors: Tensor,
    targets: Tensor,
    prototypes: Tensor,
    temperature: float = 0.1,
    sharpen_temperature: float = 0.25,
    me_max_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Masked Siamese Networks loss (docs/method.md#frame-pretraining): prototype matching +
    mean-entropy maximisation.

    Each view's soft assignment to the prototypes is ``p = softmax(cos(z, c_k) / τ)``. The
    target assignment is sharpened, ``p^(1/T) / Σ p^(1/T)``, and carries no gradient.
    Anchor view ``a`` of image ``i`` is trained towards the target of image ``i``:
    ``CE = mean_a −Σ_k t_ik log p_ak``. The me-max regulariser is the negative entropy
    of the mean anchor assignment, ``Σ_k p̄_k log p̄_k`` (minimising it spreads the
    anchors over all prototypes, so they do not collapse onto one).

    Args:
        anchors: (V·B, D) anchor-view projections, view-major (views of image ``i`` at
            rows ``i, B + i, 2B + i, ...``).
        targets: (B, D) target-view projections (from the EMA encoder).
        prototypes: (K, D) learnable prototypes (normalised here).
        temperature: τ of both assignments.
        sharpen_temperature: T of the target sharpening (T < 1 sharpens).
        me_max_weight: weight of the me-max term (0 disables it).

    Returns:
        ``(loss, terms)``, ``terms`` holding ``ce``, ``me_max`` (the negative entropy),
        ``anchor_entropy`` and ``target_entropy`` (mean per-view entropies), detached.
    """
    if temperature <= 0 or sharpen_temperature <= 0:
        raise ConfigError(
            f"temperature and sharpen_temperature must be > 0, got {temperature}, "
            f"{sharpen_temperature}"
        )
    if me_max_weight < 0:
        raise ConfigError(f"me_max_weight must be >= 0, got {me_max_weight}")
    if anchors.ndim != 2 or targets.ndim != 2 or prototypes.ndim != 2:
        raise InvalidInputError("anchors, targets and prototypes must be 2-D (N, D)")
    b = targets.shape[0]
    if b == 0 or anchors.shape[0] % b:
        raise InvalidInputError(
            f"anchors ({anchors.shape[0]} rows) must be a multiple of targets ({b} rows)"
        )
    protos = F.normalize(prototypes.float(), dim=-1)
    anchor_logits = F.normalize(anchors.float(), dim=-1) @ protos.T / temperature
    anchor_log_p = torch.log_softmax(anchor_logits, dim=-1)
    with torch.no_grad():
        target_logits = F.normalize(targets.float(), dim=-1) @ protos.T / temperature
        # p^(1/T) normalised = softmax(logits / T)
        target_p = torch.softmax(target_logits / sharpen_temperature, dim=-1)
    views = anchors.shape[0] // b
    target_rep = target_p.repeat(views, 1)
    ce = -(target_rep * anchor_log_p).sum(dim=-1).mean()
    mean_p = anchor_log_p.exp().mean(dim=0)
    me_max = (mean_p * torch.log(mean_p.clamp_min(1e-12))).sum()
    loss = ce + me_max_weight * me_max
    anchor_p = anchor_log_p.exp()
    terms = {
        "ce": ce.detach(),
        "me_max": me_max.detach(),
        "anchor_entropy": -(anchor_p * anchor_log_p).sum(-1).mean().detach(),
        "target_entropy": -(target_p * target_p.clamp_min(1e-12).log()).sum(-1).mean(),
    }
    return loss, terms


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class LossSettings:
    """``TrainConfig.loss_params`` (``--set loss_params.soft_sigma=0.1``): the one place the
    loss settings are declared and validated; each registered loss reads those it needs.

    Attributes:
        temperature: τ of the contrastive losses.
        fragment_weight, frame_across_weight, frame_within_weight,
        ignore_same_fragment_pairs: :class:`MilNceLoss` settings.
        soft_sigma: σ of ``soft_multi_positive``, in normalised video time.
    """

    temperature: float = 0.07
    fragment_weight: float = 1.0
    frame_across_weight: float = 1.0
    frame_within_weight: float = 1.0
    ignore_same_fragment_pairs: bool = True
    soft_sigma: float = 0.05

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not self.soft_sigma > 0:
            raise ConfigError(f"soft_sigma must be > 0, got {self.soft_sigma}")


@dataclass(frozen=True)
class LossBatch:
    """What a training loss sees of one bag batch.

    Attributes:
        projections: (b, 1+s, d_proj) projected tokens, token 0 the CLS projection.
        labels: (b,) bag label per fragment (same label = positive).
        ignore_mask: (b, b) bool pairs to exclude (one fragment drawn twice).
        times: (b,) each fragment's normalised position in its video, for losses
            registered with ``needs_times=True`` (else ``None``).
        groups: (b,) int video code per fragment, alongside ``times``.
    """

    projections: Tensor
    labels: Tensor
    ignore_mask: Tensor | None = None
    times: Tensor | None = None
    groups: Tensor | None = None


# a built training loss: batch → (loss, {term name: detached value})
LossFn = Callable[[LossBatch], tuple[Tensor, dict[str, Tensor]]]
LossBuilder = Callable[[LossSettings], LossFn]


@dataclass(frozen=True)
class LossSpec:
    """A registered training loss: its builder and what its batches must carry."""

    name: str
    build: LossBuilder
    needs_times: bool = False


LOSSES: dict[str, LossSpec] = {}  # by TrainConfig.loss; filled by register_loss


def register_loss(name: str, *, needs_times: bool = False) -> Callable[[LossBuilder], LossBuilder]:
    """Decorator: register ``builder(settings) -> loss_fn`` as the training loss ``name``
    (``TrainConfig.loss``); ``needs_times``: its batches need ``times`` and ``groups``
    (see :meth:`HmveModule.set_fragment_times`)."""

    def decorator(builder: LossBuilder) -> LossBuilder:
        LOSSES[name] = LossSpec(name, builder, needs_times)
        return builder

    return decorator


def loss_names() -> tuple[str, ...]:
    """The registered training losses, in registration order."""
    return tuple(LOSSES)


def get_loss(name: str) -> LossSpec:
    """The registered loss ``name``; a ConfigError listing the known ones if none."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; choose one of {loss_names()}") from None


@register_loss("mil_nce")
def _build_mil_nce(settings: LossSettings) -> LossFn:
    """Three-term MIL-NCE over bag labels (:class:`MilNceLoss`)."""
    criterion = MilNceLoss(
        settings.temperature,
        settings.fragment_weight,
        settings.frame_across_weight,
        settings.frame_within_weight,
        settings.ignore_same_fragment_pairs,
    )
    return lambda batch: criterion(batch.projections, batch.labels, batch.ignore_mask)


@register_loss("multi_positive")
def _build_multi_positive(settings: LossSettings) -> LossFn:
    """Fragment-level supervised multi-positive loss (labels = bag labels)."""

    def compute(batch: LossBatch) -> tuple[Tensor, dict[str, Tensor]]:
        loss = multi_positive_contrastive(
            batch.projections[:, 0], batch.labels, settings.temperature, batch.ignore_mask
        )
        return loss, {"multi_positive": loss.detach()}

    return compute


@register_loss("soft_multi_positive", needs_times=True)
def _build_soft_multi_positive(settings: LossSettings) -> LossFn:
    """Distance-aware multi-positive loss: targets ∝ exp(−Δt / ``soft_sigma``)."""

    def compute(batch: LossBatch) -> tuple[Tensor, dict[str, Tensor]]:
        if batch.times is None:
            raise InvalidInputError("soft_multi_positive needs each fragment's time")
        loss = soft_multi_positive_contrastive(
            batch.projections[:, 0],
            batch.labels,
            batch.times,
            settings.soft_sigma,
            settings.temperature,
            ignore_mask=batch.ignore_mask,
            groups=batch.groups,
        )
        return loss, {"soft_multi_positive": loss.detach()}

    return compute

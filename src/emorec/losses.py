"""Losses for class-imbalanced training: soft-target CE, focal loss, LDAM with DRW and the
logit-adjusted loss.

Why these: FER-style data is long-tailed (disgust and fear are rare), and plain cross-entropy
lets the majority classes dominate the decision boundaries.

* **Focal loss** (Lin et al., 2017) scales each term by ``(1 - p)^gamma``, so images the model
  already gets right (mostly majority classes) stop dominating the gradient.
* **LDAM-DRW** (Cao et al., 2019, "Learning Imbalanced Datasets with Label-Distribution-Aware
  Margin Loss") asks for a larger margin on rare classes, ``m_c = C / n_c^(1/4)`` with the
  largest margin ``max_margin``, on cosine logits scaled by ``s = 30``; and it *defers* class
  re-weighting (DRW) to late epochs, using the class-balanced weights of Cui et al. (2019),
  ``w_c = (1 - beta) / (1 - beta^n_c)`` (effective number of samples, ``beta = 0.9999``): the
  features are learned without re-weighting, which would hurt them, and only the boundaries are
  re-balanced at the end.
* **Logit-adjusted loss** (Menon et al., 2021, "Long-tail learning via logit adjustment") adds
  ``tau * log(prior_c)`` to every logit in the loss only, so the network's own logits learn the
  class-conditional evidence without the training set's class mix: an argmax over them is the
  balanced-error decision, wherever the faces come from. With ``tau = 1`` it is the balanced
  softmax (Ren et al., 2020). A served model then needs no prior of its own users' faces.

Every loss takes either integer labels ``[N]`` or probability targets ``[N, C]`` (label
smoothing, MixUp/CutMix), and averages ``-sum_c w_c t_c log p_c`` over the batch (divided by
``N``, as the training loop's weighted soft-target CE). For LDAM with soft targets each logit is
lowered by ``t_c * m_c`` (target-weighted margins), which is exact LDAM for one-hot targets and an
extension for MixUp (not in the paper). LDAM expects *cosine* logits: replace the model's
classifier with :func:`use_cosine_classifier` (its ``scale`` must equal the loss's ``scale``),
and rebuild that head before loading such a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "focal", "ldam", "logit_adjusted")


def as_probabilities(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels ``[N]`` -> one-hot float ``[N, C]``; probability targets pass through."""
    if target.ndim == 1:
        return F.one_hot(target.long(), num_classes).float()
    return target.float()


def weighted_soft_ce(logits: torch.Tensor, target: torch.Tensor,
                     weight: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_i -sum_c w_c t_ic log softmax(logits)_ic`` (weights 1 when ``None``)."""
    logp = F.log_softmax(logits.float(), dim=1)
    terms = -as_probabilities(target, logits.shape[1]) * logp
    if weight is not None:
        terms = terms * weight
    return terms.sum(dim=1).mean()


def class_balanced_weights(class_counts: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Cui et al. (2019): ``(1 - beta) / (1 - beta^n_c)``, normalised to sum to ``C``."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if (counts <= 0).any():
        raise ValueError(f"every class needs at least one sample, got counts {list(class_counts)}")
    weights = (1.0 - beta) / (1.0 - torch.pow(beta, counts))
    return (weights / weights.sum() * len(counts)).float()


def ldam_margins(class_counts: Sequence[int], max_margin: float = 0.5) -> torch.Tensor:
    """``m_c ∝ n_c^(-1/4)``, scaled so the rarest class gets ``max_margin``."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if (counts <= 0).any():
        raise ValueError(f"every class needs at least one sample, got counts {list(class_counts)}")
    margins = counts.pow(-0.25)
    return (margins * (max_margin / margins.max())).float()


class SoftTargetCrossEntropy(nn.Module):
    """Weighted cross-entropy for hard or soft targets (the baseline, ``train.loss: ce``)."""

    def __init__(self, weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return weighted_soft_ce(logits, target, self.weight)


class FocalLoss(nn.Module):
    """``-sum_c w_c t_c (1 - p_c)^gamma log p_c``; ``gamma = 0`` is the weighted soft CE.

    With soft targets the modulating factor uses each class's own probability, so a MixUp pair
    is down-weighted only for the component the model already predicts well.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        focus = (1.0 - logp.exp()).clamp(min=0).pow(self.gamma)
        terms = -as_probabilities(target, logits.shape[1]) * focus * logp
        if self.weight is not None:
            terms = terms * self.weight
        return terms.sum(dim=1).mean()


class LDAMLoss(nn.Module):
    """LDAM with deferred re-weighting, on logits ``scale * cos(feature, class weight)``.

    Before ``drw_epoch`` every class weighs 1; from ``drw_epoch`` on, the class-balanced weights
    (``None``: never, plain LDAM; the paper starts at 80 % of the epochs). Call
    :meth:`set_epoch` at the start of each epoch (``build_loss`` does it for you).
    """

    def __init__(self, class_counts: Sequence[int], max_margin: float = 0.5, scale: float = 30.0,
                 drw_epoch: int | None = None, beta: float = 0.9999, epoch: int = 0):
        super().__init__()
        self.scale = scale
        self.drw_epoch = drw_epoch
        self.register_buffer("margins", ldam_margins(class_counts, max_margin))
        self.register_buffer("drw_weights", class_balanced_weights(class_counts, beta))
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def weight(self) -> torch.Tensor | None:
        """The class weights in force this epoch (``None`` before DRW starts)."""
        deferred = self.drw_epoch is None or self.epoch < self.drw_epoch
        return None if deferred else self.drw_weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = as_probabilities(target, logits.shape[1])
        # s * (cos - m_y) for the true class: the margin is subtracted on the cosine scale
        adjusted = logits.float() - self.scale * probs * self.margins
        return weighted_soft_ce(adjusted, probs, self.weight)


def log_prior(class_counts: Sequence[int]) -> torch.Tensor:
    """``log(n_c / sum n)``: the training set's class mix, on the logit scale."""
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if (counts <= 0).any():
        raise ValueError(f"every class needs at least one sample, got counts {list(class_counts)}")
    return torch.log(counts / counts.sum()).float()


class LogitAdjustedLoss(nn.Module):
    """Soft-target CE on ``logits + tau * log(prior)`` (Menon et al., 2021, eq. 10)."""

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0,
                 weight: torch.Tensor | None = None):
        super().__init__()
        if tau < 0:
            raise ValueError(f"logit adjustment tau must be >= 0, got {tau}")
        self.register_buffer("offset", tau * log_prior(class_counts))
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return weighted_soft_ce(logits.float() + self.offset, target, self.weight)


class CosineClassifier(nn.Module):
    """``scale * cos(x, w_c)``: the normalised linear head LDAM's margins are defined on.

    Its only parameter is ``weight`` ``[C, D]`` (no bias), like ``nn.Linear``'s weight, so an
    ordinary linear head can be converted by copying it.
    """

    def __init__(self, in_features: int, num_classes: int, scale: float = 30.0):
        super().__init__()
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


def use_cosine_classifier(model: nn.Module, scale: float = 30.0) -> nn.Module:
    """Replace a timm model's linear classifier (``get_classifier()``) by a cosine head, in place.

    The new head starts from the old weight. Returns ``model``.
    """
    head = model.get_classifier()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"expected a linear classifier, got {type(head).__name__}")
    name = next(n for n, m in model.named_modules() if m is head)
    cosine = CosineClassifier(head.in_features, head.out_features, scale)
    with torch.no_grad():
        cosine.weight.copy_(head.weight)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], cosine)
    return model


def build_loss(name: str, class_counts: Sequence[int], weights: torch.Tensor | None = None,
               epoch: int = 0, *, focal_gamma: float = 2.0, ldam_max_margin: float = 0.5,
               ldam_scale: float = 30.0, drw_epoch: int | None = None,
               cb_beta: float = 0.9999, la_tau: float = 1.0
               ) -> nn.Module:
    """The training loss ``name`` (``ce`` | ``focal`` | ``ldam`` | ``logit_adjusted``) for the
    current ``epoch``.

    ``weights`` (e.g. ``class_weights.json`` in class order) apply to ``ce`` and ``focal``;
    ``ldam`` uses its own deferred class-balanced weights from ``class_counts`` (train images
    per class, in class order) and ignores ``weights``, because static weights from the start
    are exactly what DRW avoids; they switch on at ``drw_epoch`` (0-based; ``None``: never).
    Call once per epoch, or keep the module and call ``set_epoch`` on it where it has one.
    """
    if name == "ce":
        return SoftTargetCrossEntropy(weights)
    if name == "focal":
        return FocalLoss(focal_gamma, weights)
    if name == "ldam":
        return LDAMLoss(class_counts, ldam_max_margin, ldam_scale, drw_epoch, cb_beta, epoch)
    if name == "logit_adjusted":
        return LogitAdjustedLoss(class_counts, la_tau, weights)
    raise ValueError(f"unknown loss {name!r}; expected one of {LOSSES}")

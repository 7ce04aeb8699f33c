"""emorec.losses: each loss trains a tiny model on a tiny imbalanced problem, plus the formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from emorec.losses import (
    CosineClassifier,
    FocalLoss,
    LDAMLoss,
    build_loss,
    class_balanced_weights,
    ldam_margins,
    use_cosine_classifier,
)

COUNTS = [60, 20, 8]  # imbalanced, like FER's rare classes


def blobs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three separable Gaussian blobs in 8-d with ``COUNTS`` points each."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(3, 8) * 4.0
    x = torch.cat([centres[c] + torch.randn(n, 8, generator=g) for c, n in enumerate(COUNTS)])
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])
    return x, y


class TinyNet(nn.Module):
    """An MLP with a timm-like ``get_classifier`` so the cosine head can replace its ``fc``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
        self.fc = nn.Linear(16, 3)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


def mixup(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    """MixUp with lambda 0.7: soft targets as the training loop produces them."""
    perm = torch.randperm(len(y), generator=g)
    onehot = F.one_hot(y, 3).float()
    return 0.7 * x + 0.3 * x[perm], 0.7 * onehot + 0.3 * onehot[perm]


def train(name: str, soft: bool, steps: int = 80) -> tuple[float, float, float, float]:
    """Loss and accuracy before and after ``steps`` full-batch Adam steps."""
    torch.manual_seed(0)
    x, y = blobs()
    model = TinyNet()
    if name == "ldam":
        use_cosine_classifier(model, scale=30.0)
    weights = torch.tensor([0.5, 1.0, 2.0])
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)

    def accuracy() -> float:
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())

    acc0, losses = accuracy(), []
    for step in range(steps):
        loss_fn = build_loss(name, COUNTS, weights, epoch=step // 20, drw_epoch=2)
        xb, tb = mixup(x, y, g) if soft else (x, y)
        loss = loss_fn(model(xb), tb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses[0], losses[-1], acc0, accuracy()


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "mixup"])
@pytest.mark.parametrize("name", ["ce", "focal", "ldam"])
def test_each_loss_trains_a_tiny_model(name, soft):
    first, last, acc0, acc = train(name, soft)
    assert last < 0.5 * first, (first, last)
    assert acc >= 0.95 and acc > acc0, (acc0, acc)


def test_focal_with_gamma_zero_is_weighted_cross_entropy():
    logits = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    y = torch.arange(10) % 4
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    expected = (w[y] * F.cross_entropy(logits, y, reduction="none")).mean()
    assert torch.allclose(FocalLoss(0.0, w)(logits, y), expected, atol=1e-6)
    assert torch.allclose(FocalLoss(0.0, w)(logits, F.one_hot(y, 4).float()), expected, atol=1e-6)
    # gamma > 0 only ever lowers each term
    assert FocalLoss(2.0, w)(logits, y) < expected


def test_ldam_margins_and_hard_equals_one_hot():
    m = ldam_margins([100, 1600], max_margin=0.5)
    assert m[0] == pytest.approx(0.5) and m[1] == pytest.approx(0.5 / 2)  # (16)^(-1/4) = 1/2
    loss = LDAMLoss([100, 1600, 400], scale=30.0)
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    hard = loss(logits, y)
    assert torch.allclose(hard, loss(logits, F.one_hot(y, 3).float()))
    # by hand: cross-entropy with s * m_y subtracted from the true class's logit
    shifted = logits - 30.0 * F.one_hot(y, 3) * loss.margins
    assert torch.allclose(hard, F.cross_entropy(shifted, y), atol=1e-6)


def test_drw_switches_class_balanced_weights_on_at_drw_epoch():
    weights = class_balanced_weights(COUNTS, beta=0.9999)
    assert weights.sum() == pytest.approx(3.0) and weights[0] < weights[1] < weights[2]
    loss = build_loss("ldam", COUNTS, epoch=4, drw_epoch=5)
    assert loss.weight is None
    loss.set_epoch(5)
    assert torch.equal(loss.weight, weights)
    assert torch.equal(build_loss("ldam", COUNTS, epoch=9, drw_epoch=5).weight, weights)


def test_build_loss_names_and_cosine_head_on_a_timm_model():
    import timm

    assert isinstance(build_loss("ce", COUNTS), nn.Module)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        build_loss("hinge", COUNTS)
    model = use_cosine_classifier(timm.create_model("resnet10t", num_classes=3, in_chans=1))
    assert isinstance(model.get_classifier(), CosineClassifier)
    out = model.eval()(torch.zeros(2, 1, 32, 32))
    assert out.shape == (2, 3) and out.abs().max() <= 30.0 + 1e-4

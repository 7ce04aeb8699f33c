"""Quantitative checks of attribution maps: deletion/insertion curves and parameter randomization.

Deletion/insertion (Petsiuk et al., RISE, 2018): order pixels from most to least attributed;
*deletion* replaces the top ``k`` pixels of the image with a baseline (blurred or mean image) and
tracks the probability of the explained class, *insertion* starts from the baseline and puts the
top ``k`` original pixels back. A faithful map makes the deletion curve fall fast (low AUC) and the
insertion curve rise fast (high AUC). A map of random values gives the reference level: a method
that does not beat it is not telling us what the model uses.

Parameter randomization (Adebayo et al., "Sanity Checks for Saliency Maps", 2018): the maps of a
model whose weights were re-initialised should differ from those of the trained model; a Spearman
rank correlation near 1 means the method mostly shows the input (edges), not the model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage, stats
from torch import nn

from emorec.models import batched_probabilities, model_device

BASELINES = ("blur", "mean")


@dataclass(frozen=True)
class Curves:
    """Score of the explained class after removing/adding a fraction of the pixels."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> float:
        return float(np.trapezoid(self.deletion, self.fractions))

    @property
    def insertion_auc(self) -> float:
        return float(np.trapezoid(self.insertion, self.fractions))


def baseline_image(x: np.ndarray, kind: str, blur_sigma: float) -> np.ndarray:
    """What "removed" pixels become: a gaussian blur of the image, or its mean value.

    A blurred baseline removes detail without introducing the sharp edges that a constant fill
    creates (which a CNN may react to on their own).
    """
    if kind == "blur":
        return ndimage.gaussian_filter(x, sigma=blur_sigma).astype(np.float32)
    if kind == "mean":
        return np.full_like(x, x.mean(), dtype=np.float32)
    raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")


def pixel_order(attribution: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat pixel indices, most attributed first; ties broken in a seeded random order.

    Without random tie-breaking a map with flat regions (Grad-CAM after ReLU is often zero over
    large areas) would remove pixels in raster order, which is a hidden, biased choice.
    """
    flat = np.asarray(attribution, dtype=np.float64).ravel()
    return np.lexsort((rng.random(flat.size), -flat))


def perturbation_masks(order: np.ndarray, shape: tuple[int, int], steps: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """``fractions [steps+1]`` and masks ``[steps+1, H, W]`` (1 = pixel among the top fraction)."""
    n = order.size
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * n).astype(int)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    masks = (rank[None, :] < counts[:, None]).astype(np.float32).reshape(steps + 1, *shape)
    return fractions, masks


def deletion_insertion(model: nn.Module, x: np.ndarray, attribution: np.ndarray, target: int,
                       baseline: np.ndarray, steps: int, rng: np.random.Generator,
                       batch_size: int = 64) -> Curves:
    """Deletion and insertion curves of one image ``x [1, H, W]`` for class ``target``.

    All ``2 * (steps + 1)`` perturbed images are scored in batches; the score is the softmax
    probability of ``target``.
    """
    shape = tuple(x.shape[-2:])
    if attribution.shape != shape:
        raise ValueError(f"attribution shape {attribution.shape} does not match image {shape}")
    fractions, masks = perturbation_masks(pixel_order(attribution, rng), shape, steps)
    masks = masks[:, None]  # [S, 1, H, W]
    deleted = x[None] * (1.0 - masks) + baseline[None] * masks
    inserted = baseline[None] * (1.0 - masks) + x[None] * masks
    probs = batched_probabilities(model, np.concatenate([deleted, inserted]), batch_size)
    scores = probs[:, int(target)]
    return Curves(fractions, scores[: steps + 1], scores[steps + 1:])


def random_attribution(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """The reference "explanation": i.i.d. uniform values, so the pixel order is random."""
    return rng.random(shape).astype(np.float32)


def randomized_copy(model: nn.Module, seed: int) -> nn.Module:
    """A copy of ``model`` with every parameter re-initialised from ``seed`` (model untouched).

    Modules re-initialise themselves through ``reset_parameters`` (conv, linear, norm layers);
    parameters of modules without one get a small normal init, so no trained weight survives.
    Initialisation runs on the CPU generator, so the copy is the same on CPU and CUDA runs.
    """
    dev = model_device(model)
    clone = copy.deepcopy(model).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        covered: set[int] = set()
        for module in clone.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in module.parameters(recurse=False))
        with torch.no_grad():
            for param in clone.parameters():
                if id(param) not in covered:
                    param.normal_(0.0, 0.02)
    return clone.to(dev).eval()


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps; ``nan`` when either map is constant (no ranking)."""
    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)

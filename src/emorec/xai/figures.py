"""Pictures of attributions: one overlay per image and method, a comparison grid, the curves.

Colour conventions (the same in every picture): maps that are non-negative by construction
(Grad-CAM, Grad-CAM++) use ``jet``; signed maps (SHAP, LIME) use ``bwr`` centred at zero, red
for evidence *for* the explained class, blue for evidence *against* it. Opacity grows with the
absolute attribution, so unimportant areas show the plain face.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from emorec.xai.faithfulness import Curves  # noqa: E402


def colorize(attribution: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """RGB colours ``[H, W, 3]`` in 0-1 and a strength ``[H, W]`` in 0-1 for a map."""
    a = np.asarray(attribution, dtype=np.float64)
    scale = float(np.abs(a).max()) or 1.0
    if signed:
        rgb = plt.get_cmap("bwr")(0.5 + 0.5 * a / scale)[..., :3]
        strength = np.abs(a) / scale
    else:
        low = float(a.min())
        span = (float(a.max()) - low) or 1.0
        strength = (a - low) / span
        rgb = plt.get_cmap("jet")(strength)[..., :3]
    return rgb, strength


def overlay(gray: np.ndarray, attribution: np.ndarray, signed: bool, alpha: float) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]``: the face with the map blended on top."""
    base = np.repeat(gray.astype(np.float64)[..., None] / 255.0, 3, axis=2)
    rgb, strength = colorize(attribution, signed)
    weight = alpha * strength[..., None]
    return np.clip(255.0 * ((1.0 - weight) * base + weight * rgb), 0, 255).astype(np.uint8)


def save_overlay(path: Path, gray: np.ndarray, attribution: np.ndarray, signed: bool,
                 alpha: float, scale: int) -> None:
    """One overlay PNG, upscaled ``scale`` times (nearest) so small faces stay legible."""
    rgb = overlay(gray, attribution, signed, alpha)
    image = Image.fromarray(rgb)
    if scale > 1:
        image = image.resize((rgb.shape[1] * scale, rgb.shape[0] * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def comparison_grid(path: Path, grays: list[np.ndarray], row_titles: list[str],
                    row_is_correct: list[bool], maps: dict[str, list[np.ndarray]],
                    signed: dict[str, bool], column_titles: dict[str, str], alpha: float) -> None:
    """Rows = images (title: true/predicted class), columns = original + one per method."""
    methods = list(maps)
    n_rows, n_cols = len(grays), 1 + len(methods)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 1.9 * n_rows + 0.4),
                             squeeze=False, layout="constrained")
    for r, gray in enumerate(grays):
        axes[r, 0].imshow(gray, cmap="gray", vmin=0, vmax=255)
        axes[r, 0].set_ylabel(row_titles[r], fontsize=7, rotation=0, ha="right", va="center",
                              color="black" if row_is_correct[r] else "red")
        for c, name in enumerate(methods, start=1):
            axes[r, c].imshow(overlay(gray, maps[name][r], signed[name], alpha))
    axes[0, 0].set_title("original", fontsize=8)
    for c, name in enumerate(methods, start=1):
        axes[0, c].set_title(column_titles[name], fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Attributions for the predicted class (red row label = misclassified)",
                 fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves_figure(path: Path, curves: dict[str, Curves]) -> None:
    """Mean deletion and insertion curves per method (the random baseline dashed)."""
    fig, (ax_del, ax_ins) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, c in curves.items():
        style = {"linestyle": "--", "color": "grey"} if name == "random" else {}
        ax_del.plot(c.fractions, c.deletion, label=f"{name} ({c.deletion_auc:.3f})", **style)
        ax_ins.plot(c.fractions, c.insertion, label=f"{name} ({c.insertion_auc:.3f})", **style)
    ax_del.set(title="Deletion (lower AUC = more faithful)", xlabel="fraction of pixels removed",
               ylabel="probability of predicted class")
    ax_ins.set(title="Insertion (higher AUC = more faithful)", xlabel="fraction of pixels added",
               ylabel="probability of predicted class")
    for ax in (ax_del, ax_ins):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

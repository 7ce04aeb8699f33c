"""Static figures shared by stages: confusion matrices and labelled image grids (PNG).

Uses matplotlib's object-oriented API with the Agg canvas (no pyplot, no global state, no
display needed), so it is safe in worker processes, tests and headless CI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Render ``fig`` with the Agg canvas to a PNG, creating the folder; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def confusion_matrix_png(cm: np.ndarray, classes: Sequence[str], path: str | Path,
                         title: str = "Confusion matrix", normalize: bool = False) -> Path:
    """Counts (or row-normalised rates, i.e. recall per true class) as an annotated heat map."""
    from sklearn.metrics import ConfusionMatrixDisplay  # only this plot needs sklearn

    matrix = np.asarray(cm, dtype=float)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(1.0 + 0.9 * len(classes), 0.8 + 0.8 * len(classes)))
    ax = fig.add_subplot()
    ConfusionMatrixDisplay(matrix if normalize else np.asarray(cm), display_labels=list(classes)
                           ).plot(ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45,
                                  values_format=".2f" if normalize else "d")
    ax.set_title(title)
    return save_figure(fig, path)


def image_grid_png(images: Sequence[np.ndarray], titles: Sequence[str], path: str | Path,
                   ncols: int = 8, title: str | None = None, cmap: str = "gray") -> Path:
    """Images (uint8 ``[H, W]`` or ``[H, W, 3]``) in a grid, each with a small caption.

    An empty ``images`` still writes a figure saying so, because the file is a declared output.
    """
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig = Figure(figsize=(1.9 * ncols, 2.1 * nrows + (0.4 if title else 0)))
    if title:
        fig.suptitle(title)
    if n == 0:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "nothing to show", ha="center", va="center")
        ax.axis("off")
        return save_figure(fig, path)
    for i, (img, caption) in enumerate(zip(images, titles, strict=True)):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(img, cmap=cmap if np.ndim(img) == 2 else None, vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7)
        ax.axis("off")
    return save_figure(fig, path)


def image_rows_png(rows: Sequence[tuple[str, Sequence[np.ndarray]]], path: str | Path,
                   ncols: int, empty_text: str = "nothing to show", dpi: int = 110) -> Path:
    """One row per ``(caption, images)``: up to ``ncols`` uint8 grayscale images each, the
    caption above the first. Short rows leave blank cells; no rows still writes a figure."""
    ncols, nrows = max(1, ncols), max(1, len(rows))
    fig = Figure(figsize=(1.2 * ncols + 0.4, 1.3 * nrows), layout="tight")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (caption, images) in enumerate(rows):
        axes[r, 0].set_title(caption, fontsize=8, loc="left")
        for c, img in enumerate(images[:ncols]):
            axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=255)
    if not rows:
        axes[0, 0].text(0.5, 0.5, empty_text, ha="center", va="center")
    return save_figure(fig, path, dpi)

"""Where a shipped figure came from: the commit, a file's hash, and the training time it cost.

Both real-data records (``reports/fer2013.json`` and ``reports/<shipped model>.json``) carry
these, so a figure in the README can be traced back to code, data and compute.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pandas as pd

#: dvclive's per-epoch timing, written by the train stage
EPOCH_TIMES = Path("reports/train/plots/metrics/time/epoch_s.tsv")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_commit(root: Path) -> str | None:
    """HEAD of the checkout at ``root``; ``None`` outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def train_wall_time_s(root: Path) -> float:
    """Sum of the epoch times dvclive logged (training only, validation excluded)."""
    table = pd.read_csv(root / EPOCH_TIMES, sep="\t")
    return float(table["epoch_s"].sum())

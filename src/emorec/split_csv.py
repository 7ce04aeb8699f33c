"""The split CSVs: their schema and checked readers (no torch, so data stages import it cheaply).

Every split CSV has the columns in :data:`COLUMNS`: ``path`` (relative to the repository root),
``label`` (class name), ``source`` (where the image came from: ``demo``, ``folder``, ``fer2013``,
``augmented`` or ``synthetic``), ``origin`` (the id of the original image an augmented copy was
made from; equal to its own id for originals, so leakage checks can group by it) and ``sha256``.
Synthetic rows also carry ``prompt``, ``seed`` and ``prompt_hash``. Rows of sources with label
distributions (FER+ votes) carry ``soft``: space-separated probabilities in class order, empty
for rows that have a label alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from emorec.errors import DataError

COLUMNS = ["path", "label", "source", "origin", "sha256"]


def split_columns(frame: pd.DataFrame) -> list[str]:
    """:data:`COLUMNS`, plus ``soft`` when the frame has label distributions."""
    return COLUMNS + (["soft"] if "soft" in frame.columns else [])


def read_labelled_csv(path: str | Path, columns: list[str], classes: list[str],
                      what: str = "split file", hint: str = "") -> pd.DataFrame:
    """Load a CSV of labelled images, checking the columns and labels later code relies on."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}{hint}")
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing}")
    unknown = sorted(set(frame["label"]) - set(classes))
    if unknown:
        raise DataError(f"{path} has labels not in params 'classes': {unknown}")
    if frame.empty:
        raise DataError(f"{path} has no rows")
    return frame


def read_split(path: str | Path, classes: list[str]) -> pd.DataFrame:
    """Load a split CSV and check that it is usable for training."""
    return read_labelled_csv(path, COLUMNS, classes)


def check_images_exist(paths: Sequence[Path], where: str | Path) -> None:
    """Fail with one line naming the CSV when image files it lists are not on disk."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{where}: {len(missing)} of {len(paths)} image files are missing, "
                        f"e.g. {missing[0]}")

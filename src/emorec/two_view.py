"""Both label views of the FER2013 faces: FER+'s crowd votes and FER2013's own label (#25).

FER+ (Barsoum et al. 2016) relabelled FER2013's faces with ten votes each, and the two views
disagree on many faces: where FER2013 said "fear" or "sad", FER+'s taggers often said
"neutral". Each view reads some unseen faces better, so a recipe may train on both: the target
of a face is ``(1 - w) * votes + w * one_hot(fer2013 label)``
(:class:`emorec.ferplus.SecondLabels`).

The two releases share pixels but not names. FER+ names its PNGs by row (``fer0000000.png``)
and drops the rows its taggers called no face, while Kaggle's image folders re-encode every row
as a JPEG with a random number (``Training_10118481.jpg``). :func:`join_views` therefore joins
by content, within each usage (Training, PublicTest, PrivateTest):

1. every face becomes a small zero-mean, unit-norm thumbnail (``12 x 12`` area averages), and
   each FER+ face's two nearest FER2013 faces are found by cosine similarity;
2. a match is confirmed on the full 48 x 48 pixels: the mean absolute difference must be at
   most ``max_mae`` grey levels (JPEG costs a few; another face costs tens);
3. a face with two confirmed matches of different labels (FER2013 holds some faces twice) is
   ``ambiguous`` and keeps its votes alone, as does an ``unmatched`` one. Both are counted.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from emorec.config import Params
from emorec.errors import ParamsError
from emorec.ferplus import FOLDERS, SecondLabels, read_label_file
from emorec.readers import Candidate, fer2013_at

#: Side of the thumbnails the nearest-neighbour search compares (the confirmation uses 48 px).
THUMB = 12
#: FER+ and FER2013 faces are 48 x 48.
SIDE = 48
#: Rows of FER+ faces compared against all FER2013 faces at once (bounds the memory).
CHUNK = 2048


@dataclass(frozen=True)
class SecondView:
    """A FER+ source's ``fer2013_view`` entry: where FER2013 is and how its label mixes in."""

    path: Path
    weight: float
    map: dict[str, str | None]
    max_mae: float

    @classmethod
    def from_params(cls, entry: Params, classes: list[str]) -> SecondView:
        mapping: dict[str, str | None] = {}
        for raw, target in entry.mapping("map").items():
            if target is not None and target not in classes:
                raise ParamsError(f"{entry._name('map')}.{raw}",
                                  f"must be one of {classes} or null, got {target!r}")
            mapping[str(raw)] = target
        return cls(path=entry.existing_path("path"),
                   weight=entry.number("weight", low=0.0, high=1.0),
                   map=mapping, max_mae=entry.number("max_mae", low=0.0, high=255.0))


@dataclass
class Join:
    """FER2013's label of each FER+ face, by ``(FER+ folder, file name)``, and the counts."""

    labels: dict[tuple[str, str], str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def report(self) -> dict[str, int]:
        """``matched``, ``ambiguous``, ``unmatched`` (and ``fer2013_missing``: FER+ folders
        whose FER2013 usage had no faces at all)."""
        return {k: int(self.counts.get(k, 0)) for k in
                ("matched", "ambiguous", "unmatched", "fer2013_missing")}


def thumbnails(faces: np.ndarray) -> np.ndarray:
    """``[N, THUMB * THUMB]`` zero-mean unit-norm area averages of ``[N, 48, 48]`` faces."""
    k = SIDE // THUMB
    small = faces.reshape(len(faces), THUMB, k, THUMB, k).mean(axis=(2, 4))
    flat = small.reshape(len(faces), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return (flat / np.maximum(norm, 1e-6)).astype(np.float32)


def nearest_two(query: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """``[N, 2]`` indices into ``pool`` of each query thumbnail's two most similar ones."""
    out = np.zeros((len(query), 2), dtype=np.int64)
    if len(pool) == 1:
        return out
    for start in range(0, len(query), CHUNK):
        sims = query[start:start + CHUNK] @ pool.T
        top = np.argpartition(-sims, 1, axis=1)[:, :2]
        order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
        out[start:start + CHUNK] = np.take_along_axis(top, order, axis=1)
    return out


def match_faces(ferplus: np.ndarray, fer2013: np.ndarray, labels: list[str], max_mae: float
                ) -> tuple[list[str | None], Counter[str]]:
    """FER2013's label for each FER+ face (None when unmatched or ambiguous), and the counts.

    ``ferplus`` and ``fer2013`` are ``[N, 48, 48]`` and ``[M, 48, 48]`` uint8 faces of one
    usage; ``labels`` the M FER2013 labels.
    """
    counts: Counter[str] = Counter()
    if not len(fer2013):
        counts["unmatched"] += len(ferplus)
        return [None] * len(ferplus), counts
    pairs = nearest_two(thumbnails(ferplus.astype(np.float32)),
                        thumbnails(fer2013.astype(np.float32)))
    found: list[str | None] = []
    for face, (first, second) in zip(ferplus.astype(np.int16), pairs, strict=True):
        close = [j for j in dict.fromkeys((first, second))
                 if np.abs(face - fer2013[j]).mean() <= max_mae]
        names = {labels[j] for j in close}
        if not names:
            counts["unmatched"] += 1
            found.append(None)
        elif len(names) > 1:
            counts["ambiguous"] += 1
            found.append(None)
        else:
            counts["matched"] += 1
            found.append(names.pop())
    return found, counts


def join_views(fer2013_path: Path, ferplus_root: Path, folders: Iterable[str], max_mae: float
               ) -> Join:
    """FER2013's raw label (``fear``, ``sad``...) of each FER+ face in ``folders``, joined by
    content (module docstring). Cached per process: ingest reads it once for the candidates
    and once for its report."""
    return _join(Path(fer2013_path), Path(ferplus_root), tuple(sorted(folders)), float(max_mae))


@lru_cache(maxsize=4)
def _join(fer2013_path: Path, ferplus_root: Path, folders: tuple[str, ...], max_mae: float
          ) -> Join:
    by_usage: dict[str, list[Candidate]] = {}
    for cand in fer2013_at(fer2013_path, {}):
        by_usage.setdefault(cand.usage, []).append(cand)
    join = Join()
    for folder in folders:
        names = _ferplus_names(ferplus_root / folder)
        pool = by_usage.get(FOLDERS[folder], [])
        if not pool:
            join.counts["fer2013_missing"] += 1
        faces = np.stack([_gray48(ferplus_root / folder / n) for n in names]) if names else \
            np.zeros((0, SIDE, SIDE), np.uint8)
        others = np.stack([_gray48(c.load()) for c in pool]) if pool else \
            np.zeros((0, SIDE, SIDE), np.uint8)
        found, counts = match_faces(faces, others, [c.raw_label for c in pool], max_mae)
        join.counts.update(counts)
        join.labels.update({(folder, n): label for n, label in zip(names, found, strict=True)
                            if label is not None})
    return join


def _ferplus_names(folder: Path) -> list[str]:
    """The image files a FER+ folder's ``label.csv`` names and that exist."""
    labels = folder / "label.csv"
    if not labels.is_file():
        return []
    return [name for _, name, _ in read_label_file(labels) if name and (folder / name).is_file()]


def _gray48(source: Path | bytes | Image.Image) -> np.ndarray:
    """A face as ``[48, 48]`` uint8 grayscale (FER2013 and FER+ are 48 px; others resized)."""
    if isinstance(source, Path):
        source = source.read_bytes()
    image = source if isinstance(source, Image.Image) else Image.open(io.BytesIO(source))
    image = image.convert("L")
    if image.size != (SIDE, SIDE):
        image = image.resize((SIDE, SIDE), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def view_report(view: SecondView, join: Join) -> dict[str, Any]:
    """What the ingest report says of a source's second view."""
    return {"path": str(view.path), "weight": view.weight, "max_mae": view.max_mae,
            **join.report()}


def second_labels(view: SecondView, join: Join) -> SecondLabels:
    """The join's FER2013 labels mapped to classes by ``view.map`` (unmapped ones dropped)."""
    labels = {key: view.map[raw] for key, raw in join.labels.items()
              if view.map.get(raw) is not None}
    return SecondLabels(labels, view.weight)  # type: ignore[arg-type]

"""FER+ (microsoft/FERPlus, MIT): ten crowd votes for every FER2013 image, read as labels.

Barsoum et al. 2016 had ten taggers label each FER2013 face with one of eight emotions, or
``unknown`` or ``NF`` (not a face). The votes fix much of FER2013's label noise, and their
distribution is a better target than any single label: a face that six people call neutral and
four call sad teaches the model that it is mostly neutral (cross-entropy against the distribution,
the paper's "PLD" scheme).

Layout read here (the FERPlus ``generate_training_data.py`` output, as tessav/crowd-emotion
ships it)::

    root/FER2013Train/label.csv   fer0000000.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0
    root/FER2013Train/fer0000000.png
    root/FER2013Valid/...  (FER2013 PublicTest)     root/FER2013Test/...  (PrivateTest)

Vote columns, in order: :data:`VOTE_COLUMNS`. As in the FERPlus reference code a single vote is
treated as an outlier and removed when others agree. An image whose largest vote share is
``unknown`` or ``NF`` is rejected (``ferplus_unknown``, ``ferplus_not_face``); so is one whose
votes all go to emotions the label map drops (``unknown_label``).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emorec.errors import DataError, ImageError
from emorec.readers import Candidate

#: The vote columns of FER+ label files, after the image name and the face box.
VOTE_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                "contempt", "unknown", "NF")
EMOTIONS = VOTE_COLUMNS[:8]
#: FER+ folders and their FER2013 usage: Valid is PublicTest, Test is PrivateTest.
FOLDERS = {"FER2013Train": "Training", "FER2013Valid": "PublicTest", "FER2013Test": "PrivateTest"}
#: Rejection reasons this reader adds to ingest's.
REASONS = ("ferplus_unknown", "ferplus_not_face")


def clean_votes(votes: np.ndarray) -> np.ndarray:
    """Drop single votes as outliers when more than one vote was cast (FERPlus reference code)."""
    votes = np.asarray(votes, dtype=np.float64)
    if votes.sum() > 1:
        votes = np.where(votes <= 1, 0.0, votes)
    return votes


def vote_target(votes: np.ndarray, mapping: dict[str, str | None], classes: list[str]
                ) -> tuple[str | None, str, np.ndarray | None]:
    """(class or None, raw majority label, class distribution or None) of one image's votes.

    Raises :class:`ImageError` when the majority says the image is no usable face.
    """
    cleaned = clean_votes(votes)
    if cleaned.sum() == 0:
        cleaned = np.asarray(votes, dtype=np.float64)
    top = VOTE_COLUMNS[int(np.argmax(cleaned))]
    if top == "unknown":
        raise ImageError("ferplus_unknown", "most taggers could not name the emotion")
    if top == "NF":
        raise ImageError("ferplus_not_face", "most taggers said this is not a face")
    dist = np.zeros(len(classes))
    index = {c: i for i, c in enumerate(classes)}
    for emotion, count in zip(EMOTIONS, cleaned[:8], strict=True):
        target = mapping.get(emotion)
        if target is not None and count > 0:
            dist[index[target]] += count
    label = mapping.get(top)
    if label is None or dist.sum() == 0:
        return None, top, None
    return label, top, dist / dist.sum()


def read_label_file(path: Path) -> Iterator[tuple[int, str, np.ndarray]]:
    """(line number, image file name, 10 votes) of each row of a FER+ ``label.csv``."""
    with path.open(newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 2 + len(VOTE_COLUMNS):
                raise DataError(f"{path}:{line}: expected name, box and {len(VOTE_COLUMNS)} "
                                f"votes, got {len(row)} fields")
            try:
                votes = np.array([float(v) for v in row[2:]])
            except ValueError as err:
                raise DataError(f"{path}:{line}: votes must be numbers ({err})") from err
            yield line, row[0], votes


def ferplus_candidates(root: Path, mapping: dict[str, str | None], classes: list[str],
                       usage: dict[str, str], second: SecondLabels | None = None
                       ) -> Iterator[Candidate]:
    """Candidates of every FER+ folder under ``root`` that ``usage`` names, test folders first.

    ``usage`` maps a folder name (``FER2013Train``...) to the usage written in the manifest;
    folders it leaves out are not read. With ``second`` each face's soft target also carries
    its FER2013 label (:mod:`emorec.two_view`).
    """
    folders = [root / name for name in sorted(usage, key=_test_first) if (root / name).is_dir()]
    if not folders:
        raise DataError(f"{root}: none of the FER+ folders {sorted(usage)} exists "
                        f"(README 'Real data' says where to get them)")
    for folder in folders:
        labels = folder / "label.csv"
        if not labels.is_file():
            raise DataError(f"{labels} not found: every FER+ folder has one")
        for line, name, votes in read_label_file(labels):
            yield _candidate(folder, labels, line, name, votes, mapping, classes,
                             usage[folder.name], second)


def _test_first(folder: str) -> int:
    order = ("FER2013Test", "FER2013Valid", "FER2013Train")
    return order.index(folder) if folder in order else len(order)


@dataclass(frozen=True)
class SecondLabels:
    """Another label of some FER+ faces and how much of the target it gets: ``labels`` maps
    ``(folder, file name)`` to a class (FER2013's label, mapped), ``weight`` is its share."""

    labels: dict[tuple[str, str], str]
    weight: float

    def mix(self, folder: str, name: str, dist: np.ndarray, classes: list[str]) -> np.ndarray:
        """``dist`` with this face's second label mixed in, or ``dist`` when it has none."""
        label = self.labels.get((folder, name))
        if label is None or self.weight == 0:
            return dist
        mixed = (1.0 - self.weight) * np.asarray(dist, dtype=np.float64)
        mixed[classes.index(label)] += self.weight
        return mixed


def _candidate(folder: Path, labels: Path, line: int, name: str, votes: np.ndarray,
               mapping: dict[str, str | None], classes: list[str], usage: str,
               second: SecondLabels | None = None) -> Candidate:
    path = folder / name
    where = f"{path} ({labels.name}:{line})"
    try:
        label, raw, dist = vote_target(votes, mapping, classes)
    except ImageError as err:
        reason, detail = err.reason, str(err)

        def refuse() -> bytes:
            raise ImageError(reason, detail)
        return Candidate(_id(folder, name), "ferplus", where, "", "votes", refuse,
                         path.suffix.lower(), usage=usage)
    if dist is not None and second is not None:
        dist = second.mix(folder.name, name, dist, classes)
    soft = tuple(round(float(p), 4) for p in dist) if dist is not None else None
    return Candidate(_id(folder, name), "ferplus", where, label, raw, path.read_bytes,
                     path.suffix.lower(), usage=usage, soft=soft)


def _id(folder: Path, name: str) -> str:
    digest = hashlib.sha1(f"{folder.name}/{name}".encode()).hexdigest()[:8]
    return f"{Path(name).stem}-{digest}"

"""ExpW (Zhang et al. 2016, "From Facial Expression Recognition to Interpersonal Relation
Prediction"): web photos with a face box and an expression label per face.

Why this reader: no other training source has many fearful faces (3.6 % of the default's
training faces, and TFEID's 29 performers), and every recipe so far misses most fearful faces
it never trained on. ExpW's balanced release has as many fearful faces as of any other class.

Layout read here (as ``Sansonisimone/ExpW_dataset`` ships it)::

    root/label.lst    angry_actor_120.jpg 1 53 53 372 372 13.9434 2
    root/Images/angry_actor_120.jpg

Each line: image name, face number in the image, box top, left, right, bottom, the box
detector's confidence, and the label code (0 angry, 1 disgust, 2 fear, 3 happy, 4 sad,
5 surprise, 6 neutral: FER2013's codes). The file name's first word is the web search word,
not the label (``angry_actor_120.jpg`` face 1 is labelled fear), so labels come from
``label.lst`` alone.

A candidate is its box grown by ``box_margin`` of the box's side on every side (clipped to the
photo), so the service's detector (``face_crop``) sees the face with the context it sees in a
user's photo and frames it the same way. ExpW says nothing of who is in a photo, so the split
cannot keep a person in one split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from emorec.errors import DataError, ImageError
from emorec.imageio import open_image
from emorec.labels import FER2013_CODES
from emorec.readers import Candidate

#: Fields of a ``label.lst`` line.
FIELDS = ("image", "face", "top", "left", "right", "bottom", "confidence", "label")
IMAGES = "Images"


def read_label_list(path: Path) -> Iterator[tuple[int, str, int, tuple[int, int, int, int], int]]:
    """(line number, image name, face number, box (left, top, right, bottom), label code) of
    every line of ``label.lst``; a malformed line is a DataError naming the file and line."""
    if not path.is_file():
        raise DataError(f"{path} not found: ExpW lists its faces there "
                        f"(docs/real-data.md says where to get it)")
    with path.open(encoding="utf-8-sig") as handle:
        for line, text in enumerate(handle, start=1):
            parts = text.split()
            if not parts:
                continue
            if len(parts) != len(FIELDS):
                raise DataError(f"{path}:{line}: expected {len(FIELDS)} fields "
                                f"({' '.join(FIELDS)}), got {len(parts)}")
            try:
                face, top, left, right, bottom = (int(p) for p in parts[1:6])
                float(parts[6])
                code = int(parts[7])
            except ValueError as err:
                raise DataError(f"{path}:{line}: face, box, confidence and label must be "
                                f"numbers ({err})") from err
            if right <= left or bottom <= top:
                raise DataError(f"{path}:{line}: empty face box (top {top}, left {left}, "
                                f"right {right}, bottom {bottom})")
            yield line, parts[0], face, (left, top, right, bottom), code


def grown_box(box: tuple[int, int, int, int], margin: float, size: tuple[int, int]
              ) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin`` of its width and height on each side, clipped to ``size``."""
    left, top, right, bottom = box
    dx, dy = margin * (right - left), margin * (bottom - top)
    width, height = size
    return (max(0, round(left - dx)), max(0, round(top - dy)),
            min(width, round(right + dx)), min(height, round(bottom + dy)))


def crop_face(path: Path, box: tuple[int, int, int, int], margin: float) -> Image.Image:
    """The grown box of one face, decoded from its photo (ImageError when it cannot be)."""
    if not path.is_file():
        raise ImageError("unreadable", f"{path} is listed in label.lst but missing")
    image = open_image(path)
    crop = grown_box(box, margin, image.size)
    if crop[2] <= crop[0] or crop[3] <= crop[1]:
        raise ImageError("too_small", f"face box {box} lies outside the {image.size} photo")
    return image.crop(crop)


def expw_candidates(root: Path, mapping: dict[str, str | None], margin: float
                    ) -> Iterator[Candidate]:
    """One candidate per face of ``root/label.lst``; ``mapping`` maps FER2013's class names
    (``fear``, ...) or codes to classes."""
    for line, name, face, box, code in read_label_list(root / "label.lst"):
        raw = FER2013_CODES.get(code, str(code))
        label = mapping.get(raw, mapping.get(str(code)))
        path = root / IMAGES / name
        digest = hashlib.sha1(f"{name}:{face}".encode()).hexdigest()[:8]
        yield Candidate(f"{Path(name).stem}-face{face}-{digest}", "expw",
                        f"{path} face {face} (label.lst:{line})", label, raw,
                        lambda path=path, box=box: crop_face(path, box, margin))

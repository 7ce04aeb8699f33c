"""Readers: where ingest's candidate images come from, one generator per ``data.source``.

Each reader validates its params when called and returns a lazy iterator of :class:`Candidate`,
so configuration errors surface before the ingest stage touches its outputs. What the readers
accept (layouts, label maps, official splits) is described in :mod:`emorec.ingest`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from emorec.config import Params
from emorec.demo_faces import generate_dataset
from emorec.errors import DataError, ImageError, ParamsError
from emorec.labels import FER2013_CODES

SOURCES = ("demo", "folder", "fer2013")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: FER2013's official split names, test first: the first copy of an exact duplicate is kept.
FER2013_USAGES = ("PrivateTest", "PublicTest", "Training")


@dataclass
class Candidate:
    """One image offered by a source, not yet validated.

    ``load`` returns the encoded bytes or an already decoded image; ``label`` is the target class
    or ``None`` when the source's label has no class (then ``raw_label`` says what it was).
    ``where`` is what a person needs to find it (file path, CSV row); ``suffix`` the file
    extension for sources made of files, ``None`` otherwise.
    """

    id: str
    source: str
    where: str
    label: str | None
    raw_label: str
    load: Callable[[], bytes | Image.Image]
    suffix: str | None = None
    usage: str = ""  # the dataset's own split name (FER2013 ``Usage``), empty when it has none
    #: a label distribution over the classes (FER+ votes), in class order; None = ``label`` alone
    soft: tuple[float, ...] | None = None
    #: who is in the picture, when the file name says (``person_pattern``): one split per person
    person: str = ""



# -- sources ------------------------------------------------------------------------------------
# Each source validates its params when called and returns a lazy iterator, so configuration
# errors surface before the stage touches its outputs.
def demo_candidates(params: Params) -> Iterator[Candidate]:
    """Candidates from the embedded face generator, class-proportioned as in params."""
    classes = params.classes
    demo = params.section("data.demo")
    proportions = demo.mapping("proportions")
    unknown = sorted(set(proportions) - set(classes))
    missing = [c for c in classes if c not in proportions]
    if unknown or missing:
        raise ParamsError("data.demo.proportions",
                          f"must give a share for exactly the classes {classes} "
                          f"(unknown: {unknown}, missing: {missing})")
    for name in classes:
        demo.number(f"proportions.{name}", low=1e-9)
    faces = generate_dataset(
        n_images=demo.integer("n_images", low=len(classes)),
        proportions={c: float(proportions[c]) for c in classes},
        seed=params.seed,
        size=params.integer("image.size", low=16, high=1024),
        noise_std=demo.number("noise_std", low=0),
        ambiguity=demo.number("ambiguity", low=0, high=1),
    )
    return (Candidate(image_id, "demo", f"demo:{image_id}", label, label,
                      lambda pixels=pixels: Image.fromarray(pixels))
            for image_id, label, pixels in faces)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:40] or "img"


def folder_candidates(params: Params) -> Iterator[Candidate]:
    """Candidates from ``root/<class>/**/*``: every file under root is offered and accounted for."""
    root = params.existing_path("data.folder.root", kind="dir")
    aliases = {str(k): v for k, v in params.mapping("data.folder.aliases", default={}).items()}
    classes = params.classes
    for name, target in aliases.items():
        if target is not None and target not in classes:
            raise ParamsError(f"data.folder.aliases.{name}",
                              f"must be one of {classes} or null, got {target!r}")
    return _walk_folder(root, classes, aliases)


def folder_files(root: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """Every file under ``root`` in a stable order, with the folders between ``root`` and it."""
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        yield path, path.relative_to(root).parts[:-1]


def folder_candidate(root: Path, path: Path, label: str | None, raw_label: str,
                     usage: str = "") -> Candidate:
    """A file read from a folder tree; the id hashes its relative path, so two files of the same
    name in different folders stay apart."""
    digest = hashlib.sha1(path.relative_to(root).as_posix().encode()).hexdigest()[:8]
    return Candidate(f"{slug(path.stem)}-{digest}", "folder", str(path), label, raw_label,
                     path.read_bytes, path.suffix.lower(), usage=usage)


def _walk_folder(root: Path, classes: list[str], aliases: dict[str, str | None]
                 ) -> Iterator[Candidate]:
    for path, folders in folder_files(root):
        folder = folders[0] if folders else ""
        label = folder if folder in classes else aliases.get(folder)
        yield folder_candidate(root, path, label, folder or "<no class folder>")


def fer_map(params: Params) -> dict[int, str | None]:
    raw = params.mapping("data.fer2013.map")
    classes = params.classes
    mapping: dict[int, str | None] = {}
    for key, target in raw.items():
        try:
            code = int(key)
        except (TypeError, ValueError) as err:
            raise ParamsError("data.fer2013.map", f"keys must be FER2013 codes 0-6, got {key!r}"
                              ) from err
        if target is not None and target not in classes:
            raise ParamsError(f"data.fer2013.map.{key}",
                              f"must be one of {classes} or null, got {target!r}")
        mapping[code] = target
    return mapping


def _fer_pixels(text: Any) -> Image.Image | bytes:
    """Decode one FER2013 ``pixels`` cell into a square grayscale image."""
    if not isinstance(text, str) or not text.strip():
        return b""  # open_image turns this into reason "empty"
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError as err:
        raise ImageError("non_numeric", f"pixels are not all integers ({err})") from err
    side = int(round(np.sqrt(values.size)))
    if side * side != values.size:
        raise ImageError("bad_pixel_count", f"{values.size} pixels do not form a square image")
    if values.min() < 0 or values.max() > 255:
        raise ImageError("out_of_range", "pixel values outside 0-255")
    return Image.fromarray(values.reshape(side, side).astype(np.uint8))


def fer2013_candidates(params: Params) -> Iterator[Candidate]:
    """Candidates from FER2013 as a CSV or as Kaggle's image folders, labels via the map."""
    return fer2013_at(params.existing_path("data.fer2013.path"), fer_map(params))


def fer2013_at(path: Path, mapping: dict[int, str | None]) -> Iterator[Candidate]:
    """FER2013 at ``path``: Kaggle's image folders, or the CSV (checked for its columns)."""
    if path.is_dir():
        return fer_folder(path, mapping)
    try:
        frame = pd.read_csv(path, dtype={"pixels": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a readable CSV: {err}") from err
    missing = [c for c in ("emotion", "pixels") if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing} (expected emotion,pixels,Usage)")
    return fer_rows(path, frame, mapping)


def _usage_rank(usage: str) -> int:
    return FER2013_USAGES.index(usage) if usage in FER2013_USAGES else len(FER2013_USAGES)


def _fer_label(code: int | None, raw: str, mapping: dict[int, str | None]
               ) -> tuple[str | None, str]:
    """Target class (or None) and the raw label a person would recognise."""
    if code is None:
        return None, raw
    return mapping.get(code), FER2013_CODES.get(code, raw)


def fer_rows(path: Path, frame: pd.DataFrame, mapping: dict[int, str | None]
              ) -> Iterator[Candidate]:
    usage = frame["Usage"] if "Usage" in frame.columns else pd.Series("", index=frame.index)
    usages = usage.astype(object).where(usage.notna(), "").astype(str).str.strip()
    order = sorted(range(len(frame)), key=lambda r: _usage_rank(usages.iat[r]))
    for row in order:
        emotion, pixels = frame["emotion"].iat[row], frame["pixels"].iat[row]
        try:
            code: int | None = int(emotion)
        except (TypeError, ValueError):
            code = None
        label, raw = _fer_label(code, str(emotion), mapping)
        yield Candidate(f"fer2013-{row:06d}", "fer2013", f"{path}:row {row + 2}", label, raw,
                        lambda pixels=pixels: _fer_pixels(pixels), usage=usages.iat[row])


def fer_folder(root: Path, mapping: dict[int, str | None]) -> Iterator[Candidate]:
    """Kaggle's layout: the class is the parent folder's name, the split the file-name prefix."""
    codes = {name: code for code, name in FER2013_CODES.items()}
    files = [p for p in root.rglob("*") if p.is_file()]
    usage_of = {p: p.name.split("_", 1)[0] if "_" in p.name else "" for p in files}
    for path in sorted(files, key=lambda p: (_usage_rank(usage_of[p]), p.as_posix())):
        folder = path.parent.name
        label, raw = _fer_label(codes.get(folder), folder, mapping)
        rel = path.relative_to(root).as_posix()
        digest = hashlib.sha1(rel.encode()).hexdigest()[:8]
        yield Candidate(f"fer2013-{slug(path.stem)}-{digest}", "fer2013", str(path), label, raw,
                        path.read_bytes, path.suffix.lower(), usage=usage_of[path])


def candidates(params: Params) -> Iterator[Candidate]:
    source = params.choice("data.source", SOURCES)
    return {"demo": demo_candidates, "folder": folder_candidates,
            "fer2013": fer2013_candidates}[source](params)


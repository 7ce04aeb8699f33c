"""Ingest: raw images from one source -> normalised grayscale PNGs plus a manifest.

Sources (``data.source`` in params.yaml):

* ``demo`` - the embedded generator of :mod:`emorec.demo_faces`; no download, deterministic.
* ``folder`` - an ImageFolder tree ``root/<class>/**/*.{png,jpg,jpeg,bmp,webp}``. Folder names are
  class names; ``data.folder.aliases`` maps other names onto classes (``null`` rejects them). For a
  tree in the legacy 8-class schema use the aliases ``{contempt: angry, disgust: angry}``, which is
  :data:`emorec.labels.LEGACY_8_TO_6`: contempt and disgust have no counterpart among the six
  classes and are folded into ``angry``, the nearest negative high-arousal class.
* ``fer2013`` - ``data.fer2013.path`` is either the Kaggle CSV ``emotion,pixels,Usage`` (48x48
  pixels as space-separated numbers) or Kaggle's image-folder layout
  ``root/{train,test}/<fer class>/<Usage>_<n>.jpg`` (class folders ``angry disgust fear happy
  neutral sad surprise``). ``data.fer2013.map`` sends each FER code to a class, or to ``null`` to
  reject it; by default ``1: disgust`` goes to ``angry`` for the same reason as above. The official
  split (``Usage`` column or file-name prefix: Training, PublicTest, PrivateTest) is kept in the
  manifest's ``usage`` column for ``split.strategy: predefined``. Test rows are read first, so an
  exact duplicate of a test image is rejected from train rather than removed from the test set.

Every candidate either becomes one row of ``manifest.csv`` or one entry of the rejection list in
``reports/ingest.json`` with its reason (:data:`REASONS`); nothing is dropped silently and no bad
file stops the stage. A near-blank image (pixel standard deviation below
``ingest.min_pixel_std``, e.g. FER2013's all-black frames) carries no face and is rejected as
``near_blank``. An exact duplicate is an image whose normalised pixels are identical to an
earlier accepted one (byte-identical files always are; so are lossless re-encodings).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from emorec.config import Params
from emorec.errors import DataError, ImageError
from emorec.faces import FaceSettings, align_crop, select_faces, thread_detector, to_rgb
from emorec.ferplus import REASONS as FERPLUS_REASONS
from emorec.imageio import REJECT_REASONS, open_image
from emorec.labels import FER2013_CODES, LEGACY_8_TO_6
from emorec.readers import EXTENSIONS, SOURCES, Candidate, candidates, fer_map
from emorec.sources import (
    SourceSpec,
    cross_source_duplicates,
    merged_candidates,
    read_sources,
    spec_join,
)
from emorec.split_csv import read_labelled_csv
from emorec.two_view import view_report

#: Why a candidate can be rejected: the decoding reasons of :func:`open_image` plus ingest's own.
#: FER2013 CSV rows add their own: wrong pixel count, non-numeric cells, values outside 0-255.
REASONS = (*REJECT_REASONS, "bad_pixel_count", "non_numeric", "out_of_range", "near_blank",
           "no_face", "multiple_faces", "unreadable", "unsupported_extension", "unknown_label",
           "duplicate", "near_duplicate", *FERPLUS_REASONS)
MANIFEST_COLUMNS = ["id", "path", "label", "source", "sha256", "width", "height", "mode", "usage"]


@dataclass
class Rejection:
    where: str
    label: str
    reason: str
    detail: str


def read_manifest(path: Path, classes: list[str]) -> pd.DataFrame:
    """The ingest manifest, checked for the columns and labels later stages rely on."""
    return read_labelled_csv(path, MANIFEST_COLUMNS, classes,
                             what="manifest",
                             hint=" (run the ingest stage first)")


# -- normalisation --------------------------------------------------------------------------------
def to_gray8(image: Image.Image) -> Image.Image:
    """8-bit grayscale, upright, with any alpha flattened onto black.

    16-bit and float images are rescaled to their full range instead of clipped, which would
    turn most of a 16-bit photo white.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I") and arr.max() > 255 else max(1.0, arr.max())
        return Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(flat, rgba)
    return image.convert("L")


def _shrink(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.LANCZOS)


def png_bytes(image: Image.Image) -> bytes:
    """Deterministic PNG encoding (no metadata), so equal pixels give equal bytes and sha256."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def sha256_hex(data: bytes) -> str:
    """The ``sha256`` column of manifest and split CSVs: the digest of the PNG bytes."""
    return hashlib.sha256(data).hexdigest()


# -- the stage ------------------------------------------------------------------------------------
def _decode(cand: Candidate, min_side: int, max_side: int) -> Image.Image:
    try:
        loaded = cand.load()
    except ImageError:
        raise
    except OSError as err:
        raise ImageError("unreadable", f"{cand.where} cannot be read ({err})") from err
    if isinstance(loaded, Image.Image):
        loaded = png_bytes(loaded)
    return open_image(loaded, min_side=min_side, max_side=max_side)


def run_ingest(params: Params, out_dir: Path, report_path: Path) -> dict[str, Any]:
    """Validate, normalise and write every candidate; return (and write) the report.

    Raises :class:`DataError` when a class ends up with no accepted image: training on five of
    six classes would silently produce a model that can never predict the sixth.
    """
    source = params.choice("data.source", (*SOURCES, "sources"))
    classes = params.classes
    rules = IngestRules.from_params(params)
    if source == "sources":
        specs = read_sources(params)
        rules_of = {s.name: rules.with_face_crop(s.face_crop, params) for s in specs}
        offers: Iterable[Candidate] = merged_candidates(specs, classes)
    else:
        specs, rules_of, offers = [], {}, candidates(params)

    images_dir = out_dir / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)
    for name in classes:
        (images_dir / name).mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    rejected: list[Rejection] = []
    seen: dict[str, str] = {}
    tally = SourceTally()
    for cand in tqdm(offers, desc=f"ingest {source}", unit="img", mininterval=2):
        found = _accept(cand, rules_of.get(cand.source, rules), images_dir, seen, rows, tally)
        tally.offer(cand.source, found)
        rejected.extend(found)
    if specs:
        rejected.extend(_drop_near_copies(params, rows, tally))

    manifest = pd.DataFrame(rows, columns=_columns(rows))
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(out_dir / "manifest.csv", index=False)
    report = _report(params, source, tally.offered_total, manifest, rejected)
    if specs:
        report["sources"] = tally.report(specs, manifest, classes)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")

    empty = [c for c in classes if report["accepted_per_class"][c] == 0]
    if empty:
        where = ""
        if source == "folder":
            root = Path(params.string("data.folder.root"))
            where = " (folders: " + ", ".join(str(root / c) for c in empty) + ")"
        raise DataError(f"class(es) {empty} have no accepted images from source '{source}'{where};"
                        f" see {report_path} for rejections")
    return report


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """Manifest columns; ``soft`` only when a source gave label distributions (FER+ votes),
    ``person`` only when one named the people in its pictures (``person_pattern``)."""
    return MANIFEST_COLUMNS + [column for column in ("soft", "person")
                               if any(r.get(column) for r in rows)]


class SourceTally:
    """Per-source counts for the report of a multi-source run (offered, rejected by reason,
    face crops that fell back to the dataset's own image)."""

    def __init__(self) -> None:
        self.offered: Counter[str] = Counter()
        self.rejected: dict[str, Counter[str]] = {}
        self.fallbacks: Counter[str] = Counter()

    @property
    def offered_total(self) -> int:
        return sum(self.offered.values())

    def offer(self, source: str, rejections: list[Rejection]) -> None:
        self.offered[source] += 1
        self.reject(source, rejections)

    def reject(self, source: str, rejections: list[Rejection]) -> None:
        self.rejected.setdefault(source, Counter()).update(r.reason for r in rejections)

    def report(self, specs: list[SourceSpec], manifest: pd.DataFrame, classes: list[str]
               ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for spec in specs:
            mine = manifest[manifest["source"] == spec.name]
            out[spec.name] = {
                "reader": spec.reader, "path": str(spec.path), "split": spec.split,
                "offered": int(self.offered[spec.name]), "accepted": len(mine),
                "accepted_per_class": {c: int((mine["label"] == c).sum()) for c in classes},
                "accepted_per_split": {u or "unsplit": int(n) for u, n in
                                       sorted(Counter(mine["usage"].fillna("")).items())},
                "rejected_by_reason": dict(sorted(self.rejected.get(spec.name, {}).items())),
                "face_crop": spec.face_crop,
                "face_fallbacks": int(self.fallbacks[spec.name]),
            }
            if spec.second_view is not None:
                out[spec.name]["fer2013_view"] = view_report(spec.second_view, spec_join(spec))
        return out


def _drop_near_copies(params: Params, rows: list[dict[str, Any]], tally: SourceTally
                      ) -> list[Rejection]:
    """Remove images that are near copies of an image of another source (test copy wins)."""
    size = params.integer("ingest.cross_source.phash_size", low=2)
    distance = params.integer("ingest.cross_source.distance", low=0, high=size * size)
    images = [np.asarray(Image.open(r["path"]).convert("L")) for r in
              tqdm(rows, desc="near copies", unit="img", mininterval=2)]
    drops = cross_source_duplicates(images, [r["source"] for r in rows], size, distance)
    gone = []
    for j, i in drops:
        row, kept = rows[j], rows[i]
        Path(row["path"]).unlink()
        found = Rejection(row["path"], row["label"], "near_duplicate",
                          f"within {distance} pHash bits of {kept['path']} ({kept['source']}, "
                          f"{kept['usage'] or 'unsplit'}), which is kept")
        tally.reject(row["source"], [found])
        gone.append(found)
    dropped = {j for j, _ in drops}
    rows[:] = [r for k, r in enumerate(rows) if k not in dropped]
    return gone


@dataclass(frozen=True)
class IngestRules:
    """The ``ingest`` section of params.yaml, validated once before any file is read."""

    min_side: int
    max_side: int
    output_max_side: int
    min_std: float
    faces: FaceSettings | None  # crop and align faces (``ingest.face_crop``), or keep the image
    #: no face found: keep the dataset's own image (``fallback``) instead of rejecting it
    face_fallback: bool = False

    @classmethod
    def from_params(cls, params: Params) -> IngestRules:
        ingest = params.section("ingest")
        min_side = ingest.integer("min_side", low=1)
        return cls(min_side=min_side, max_side=ingest.integer("max_side", low=min_side),
                   output_max_side=ingest.integer("output_max_side", low=16),
                   min_std=ingest.number("min_pixel_std", low=0),
                   faces=FaceSettings.from_params(params) if ingest.boolean("face_crop")
                   else None)

    def with_face_crop(self, face_crop: str, params: Params) -> IngestRules:
        """These rules with one source's ``face_crop`` (inherit | true | false | fallback)."""
        if face_crop == "inherit":
            return self
        faces = FaceSettings.from_params(params) if face_crop != "false" else None
        return replace(self, faces=faces, face_fallback=face_crop == "fallback")


def _accept(cand: Candidate, rules: IngestRules, images_dir: Path, seen: dict[str, str],
            rows: list[dict[str, Any]], tally: SourceTally) -> list[Rejection]:
    """Validate one candidate; append its manifest row(s), or return why it was rejected."""
    if cand.label is None:  # checked first: for a stray folder, the folder is the problem
        return [Rejection(cand.where, cand.raw_label, "unknown_label",
                          f"label {cand.raw_label!r} is not mapped to any class")]
    if cand.suffix is not None and cand.suffix not in EXTENSIONS:
        return [Rejection(cand.where, cand.raw_label, "unsupported_extension",
                          f"extension must be one of {list(EXTENSIONS)}")]
    try:
        original = _decode(cand, rules.min_side, rules.max_side)
    except ImageError as err:
        return [Rejection(cand.where, cand.raw_label, err.reason, str(err))]
    try:
        upright = ImageOps.exif_transpose(original)
        crops = _face_crops(upright, rules.faces) if rules.faces else [("", upright)]
    except ImageError as err:
        if err.reason == "no_face" and rules.face_fallback:
            tally.fallbacks[cand.source] += 1
            return _accept_whole(cand, upright, original, rules, images_dir, seen, rows)
        return [Rejection(cand.where, cand.raw_label, err.reason, str(err))]
    except Exception as err:  # noqa: BLE001 - e.g. malformed EXIF; one bad file must not stop ingest
        return [Rejection(cand.where, cand.raw_label, "corrupt",
                          f"cannot be normalised ({type(err).__name__}: {err})")]
    found = [_store(cand, suffix, crop, original, rules, images_dir, seen, rows)
             for suffix, crop in crops]
    return [r for r in found if r is not None]


def _accept_whole(cand: Candidate, image: Image.Image, original: Image.Image,
                  rules: IngestRules, images_dir: Path, seen: dict[str, str],
                  rows: list[dict[str, Any]]) -> list[Rejection]:
    found = _store(cand, "", image, original, rules, images_dir, seen, rows)
    return [found] if found is not None else []


def _face_crops(image: Image.Image, faces: FaceSettings) -> list[tuple[str, Image.Image]]:
    """Aligned face crops of a photo, as ``faces.multi_face`` says; ImageError when none."""
    rgb = to_rgb(image)
    found = thread_detector(faces).detect(rgb)
    if not found:
        raise ImageError("no_face", f"{faces.detector} found no face")
    kept = select_faces(found, faces.multi_face)
    if not kept:
        raise ImageError("multiple_faces", f"{len(found)} faces and faces.multi_face is reject")
    crops = [align_crop(rgb, face, faces.margin).image for face in kept]
    if len(crops) == 1:
        return [("", crops[0])]
    return [(f"-face{k}", crop) for k, crop in enumerate(crops)]


def _store(cand: Candidate, suffix: str, image: Image.Image, original: Image.Image,
           rules: IngestRules, images_dir: Path, seen: dict[str, str],
           rows: list[dict[str, Any]]) -> Rejection | None:
    """Normalise one image (or face crop) and write it, unless blank or a duplicate."""
    where = cand.where + (f" ({suffix.lstrip('-')})" if suffix else "")
    gray = _shrink(to_gray8(image), rules.output_max_side)
    spread = float(np.asarray(gray, dtype=np.float32).std())
    if spread < rules.min_std:
        return Rejection(where, cand.raw_label, "near_blank",
                         f"pixel standard deviation {spread:.2f} < ingest.min_pixel_std "
                         f"{rules.min_std:g}: no face to learn from")
    data = png_bytes(gray)
    digest = sha256_hex(data)
    if digest in seen:
        return Rejection(where, cand.raw_label, "duplicate",
                         f"same pixels as already accepted {seen[digest]}")
    seen[digest] = where
    image_id = cand.id + suffix
    path = images_dir / cand.label / f"{image_id}.png"
    path.write_bytes(data)
    rows.append({"id": image_id, "path": path.as_posix(), "label": cand.label,
                 "source": cand.source, "sha256": digest, "width": original.width,
                 "height": original.height, "mode": original.mode, "usage": cand.usage,
                 "soft": " ".join(f"{p:g}" for p in cand.soft) if cand.soft else "",
                 "person": cand.person})
    return None


def _report(params: Params, source: str, offered: int, manifest: pd.DataFrame,
            rejected: list[Rejection]) -> dict[str, Any]:
    classes = params.classes
    per_class = Counter(manifest["label"])
    by_reason = Counter(r.reason for r in rejected)
    report: dict[str, Any] = {
        "source": source,
        "offered": offered,
        "accepted": len(manifest),
        "rejected": len(rejected),
        "accepted_per_class": {c: int(per_class.get(c, 0)) for c in classes},
        "rejected_by_reason": {r: int(by_reason.get(r, 0)) for r in REASONS},
        "rejected_files": [vars(r) for r in rejected],
        "note": "duplicate = identical pixels after normalisation to 8-bit grayscale (the first "
                "is kept). Legacy 8-class schema -> 6 classes: " + ", ".join(
                    f"{k}->{v}" for k, v in LEGACY_8_TO_6.items() if k != v),
    }
    usages = Counter(manifest["usage"].fillna(""))
    if any(usages):
        report["accepted_per_usage"] = {u or "<none>": int(n) for u, n in sorted(usages.items())}
    if source == "fer2013":
        report["fer2013_map"] = {f"{code} {FER2013_CODES.get(code, '?')}": target
                                 for code, target in sorted(fer_map(params).items())}
    return report

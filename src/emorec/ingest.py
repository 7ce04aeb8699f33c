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
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from emorec.config import Params
from emorec.demo_faces import generate_dataset
from emorec.errors import DataError, ImageError, ParamsError
from emorec.faces import FaceSettings, align_crop, select_faces, thread_detector, to_rgb
from emorec.imageio import REJECT_REASONS, open_image
from emorec.labels import FER2013_CODES, LEGACY_8_TO_6
from emorec.splits import read_labelled_csv

SOURCES = ("demo", "folder", "fer2013")
EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: Why a candidate can be rejected: the decoding reasons of :func:`open_image` plus ingest's own.
#: FER2013 CSV rows add their own: wrong pixel count, non-numeric cells, values outside 0-255.
REASONS = (*REJECT_REASONS, "bad_pixel_count", "non_numeric", "out_of_range", "near_blank",
           "no_face", "multiple_faces", "unreadable", "unsupported_extension", "unknown_label",
           "duplicate")
MANIFEST_COLUMNS = ["id", "path", "label", "source", "sha256", "width", "height", "mode", "usage"]
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


@dataclass
class Rejection:
    where: str
    label: str
    reason: str
    detail: str


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


def _slug(text: str) -> str:
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


def _walk_folder(root: Path, classes: list[str], aliases: dict[str, str | None]
                 ) -> Iterator[Candidate]:
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(root)
        folder = rel.parts[0] if len(rel.parts) > 1 else ""
        label = folder if folder in classes else aliases.get(folder)
        digest = hashlib.sha1(rel.as_posix().encode()).hexdigest()[:8]
        yield Candidate(f"{_slug(path.stem)}-{digest}", "folder", str(path), label,
                        folder or "<no class folder>", path.read_bytes, path.suffix.lower())


def _fer_map(params: Params) -> dict[int, str | None]:
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
    path = params.existing_path("data.fer2013.path")
    mapping = _fer_map(params)
    if path.is_dir():
        return _fer_folder(path, mapping)
    try:
        frame = pd.read_csv(path, dtype={"pixels": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a readable CSV: {err}") from err
    missing = [c for c in ("emotion", "pixels") if c not in frame.columns]
    if missing:
        raise DataError(f"{path} lacks columns {missing} (expected emotion,pixels,Usage)")
    return _fer_rows(path, frame, mapping)


def _usage_rank(usage: str) -> int:
    return FER2013_USAGES.index(usage) if usage in FER2013_USAGES else len(FER2013_USAGES)


def _fer_label(code: int | None, raw: str, mapping: dict[int, str | None]
               ) -> tuple[str | None, str]:
    """Target class (or None) and the raw label a person would recognise."""
    if code is None:
        return None, raw
    return mapping.get(code), FER2013_CODES.get(code, raw)


def _fer_rows(path: Path, frame: pd.DataFrame, mapping: dict[int, str | None]
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


def _fer_folder(root: Path, mapping: dict[int, str | None]) -> Iterator[Candidate]:
    """Kaggle's layout: the class is the parent folder's name, the split the file-name prefix."""
    codes = {name: code for code, name in FER2013_CODES.items()}
    files = [p for p in root.rglob("*") if p.is_file()]
    usage_of = {p: p.name.split("_", 1)[0] if "_" in p.name else "" for p in files}
    for path in sorted(files, key=lambda p: (_usage_rank(usage_of[p]), p.as_posix())):
        folder = path.parent.name
        label, raw = _fer_label(codes.get(folder), folder, mapping)
        rel = path.relative_to(root).as_posix()
        digest = hashlib.sha1(rel.encode()).hexdigest()[:8]
        yield Candidate(f"fer2013-{_slug(path.stem)}-{digest}", "fer2013", str(path), label, raw,
                        path.read_bytes, path.suffix.lower(), usage=usage_of[path])


def candidates(params: Params) -> Iterator[Candidate]:
    source = params.choice("data.source", SOURCES)
    return {"demo": demo_candidates, "folder": folder_candidates,
            "fer2013": fer2013_candidates}[source](params)


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
    source = params.choice("data.source", SOURCES)
    classes = params.classes
    rules = IngestRules.from_params(params)
    offers = candidates(params)

    images_dir = out_dir / "images"
    if images_dir.exists():
        shutil.rmtree(images_dir)
    for name in classes:
        (images_dir / name).mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    rejected: list[Rejection] = []
    seen: dict[str, str] = {}
    offered = 0
    for cand in tqdm(offers, desc=f"ingest {source}", unit="img", mininterval=2):
        offered += 1
        rejected.extend(_accept(cand, rules, images_dir, seen, rows))

    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest.to_csv(out_dir / "manifest.csv", index=False)
    report = _report(params, source, offered, manifest, rejected)
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


@dataclass(frozen=True)
class IngestRules:
    """The ``ingest`` section of params.yaml, validated once before any file is read."""

    min_side: int
    max_side: int
    output_max_side: int
    min_std: float
    faces: FaceSettings | None  # crop and align faces (``ingest.face_crop``), or keep the image

    @classmethod
    def from_params(cls, params: Params) -> IngestRules:
        ingest = params.section("ingest")
        min_side = ingest.integer("min_side", low=1)
        return cls(min_side=min_side, max_side=ingest.integer("max_side", low=min_side),
                   output_max_side=ingest.integer("output_max_side", low=16),
                   min_std=ingest.number("min_pixel_std", low=0),
                   faces=FaceSettings.from_params(params) if ingest.boolean("face_crop")
                   else None)


def _accept(cand: Candidate, rules: IngestRules, images_dir: Path, seen: dict[str, str],
            rows: list[dict[str, Any]]) -> list[Rejection]:
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
        return [Rejection(cand.where, cand.raw_label, err.reason, str(err))]
    except Exception as err:  # noqa: BLE001 - e.g. malformed EXIF; one bad file must not stop ingest
        return [Rejection(cand.where, cand.raw_label, "corrupt",
                          f"cannot be normalised ({type(err).__name__}: {err})")]
    found = [_store(cand, suffix, crop, original, rules, images_dir, seen, rows)
             for suffix, crop in crops]
    return [r for r in found if r is not None]


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
                 "height": original.height, "mode": original.mode, "usage": cand.usage})
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
                                 for code, target in sorted(_fer_map(params).items())}
    return report

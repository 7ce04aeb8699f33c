"""Several datasets in one run: ``data.source: sources`` reads every entry of ``data.sources``.

No single dataset shows a model the faces users have: FER2013 is 48 px grayscale web crops,
SFEW film frames, lab sets posed studio portraits. Each entry of ``data.sources`` names one
dataset and says how to read it::

    - name: sfew                 # unique; becomes the manifest's ``source`` and the id prefix
      reader: folder             # folder | fer2013 | ferplus | expw
      path: data/raw/sfew
      map: {Angry: angry, Disgust: disgust, Fear: fearful, ...}   # raw label -> class | null
      split: predefined          # predefined: path/<usage>/<class>/..., else path/<class>/
      usage: {Train: train, Val: val}   # predefined only: the dataset's split -> train|val|test
      label_pattern: null        # folder only: regex whose group 1 in the file name is the label
      face_crop: inherit         # inherit (ingest.face_crop) | true | false | fallback
      heldout: false             # true: every image goes to the test split and never trains
      person_pattern: null       # regex whose group 1 in the file name is the person in it
      fer2013_view: null         # ferplus only: {path, weight, map, max_mae}, FER2013's own
                                 # label of each face mixed into its votes (emorec.two_view)
      box_margin: 0.3            # expw only: share of a face box's side added on each side
                                 # before the service's detector sees it (emorec.expw)

Raw labels the map leaves out, or maps to ``null``, are rejected as ``unknown_label`` and
counted per source; without a ``map`` a folder source accepts folder names equal to a class.
Predefined sources write their split into the manifest's ``usage`` column, stratified ones leave
it empty and the split stage draws their split (:mod:`emorec.split_balance`).

With ``person_pattern`` (TFEID: its first two digits) the split stage keeps every face of one person
in one split: a val split that shares the train split's people rewards learning them.

A ``heldout: true`` source is how a source is left out of training (:mod:`emorec.unseen`):
all its labelled images land in the test split, so the test-first rule below also drops every
exact or near copy of its faces from the other sources.

Candidates of all sources are offered test first, then val, then train: when two sources hold
the same face, the copy in a test split is the one that is kept (exact copies by pixels in the
ingest loop, near copies by :func:`cross_source_duplicates` afterwards).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from emorec.config import Params, _Scoped
from emorec.errors import ParamsError
from emorec.expw import expw_candidates
from emorec.ferplus import FOLDERS as FERPLUS_FOLDERS
from emorec.ferplus import ferplus_candidates
from emorec.labels import FER2013_CODES
from emorec.quality import near_duplicate_pairs, pack_hashes, perceptual_hash
from emorec.readers import Candidate, fer2013_at, folder_candidate, folder_files
from emorec.two_view import Join, SecondView, join_views, second_labels

READERS = ("folder", "fer2013", "ferplus", "expw")
SPLIT_RULES = ("predefined", "stratified")
FACE_CROP = ("inherit", "true", "false", "fallback")
SPLIT_NAMES = ("train", "val", "test")
#: Offer order: test copies first, so they win against copies elsewhere.
_RANK = {"test": 0, "val": 1, "train": 2, "": 3}
#: Default usage maps of readers whose datasets come with a split of their own.
DEFAULT_USAGE = {
    "fer2013": {"PrivateTest": "test", "PublicTest": "val", "Training": "train"},
    "ferplus": {"FER2013Test": "test", "FER2013Valid": "val", "FER2013Train": "train"},
}


@dataclass(frozen=True)
class SourceSpec:
    """One validated entry of ``data.sources``."""

    name: str
    reader: str
    path: Path
    map: dict[str, str | None] | None
    split: str
    usage: dict[str, str]
    label_pattern: str | None
    face_crop: str
    heldout: bool = False
    #: regex whose first group, searched in a file's name, is the person in it (``person_pattern``)
    person_pattern: str | None = None
    #: ferplus only: FER2013's label of each face as a second view (``fer2013_view``)
    second_view: SecondView | None = None
    #: expw only: share of each face box's side added on every side (``box_margin``)
    box_margin: float = 0.0

    @classmethod
    def from_params(cls, entry: Params, classes: list[str]) -> SourceSpec:
        name = entry.string("name")
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ParamsError(entry._name("name"), f"must be letters, digits, _ or -, got {name!r}")
        reader = entry.choice("reader", READERS)
        split = entry.choice("split", SPLIT_RULES, default="predefined"
                             if reader in DEFAULT_USAGE else "stratified")
        raw_map = entry.get("map", None)
        if raw_map is None and reader != "folder":
            raise ParamsError(entry._name("map"), f"is needed for reader {reader}")
        mapping = None if raw_map is None else _label_map(entry, classes)
        usage = {str(k): str(v) for k, v in
                 (entry.get("usage", None) or DEFAULT_USAGE.get(reader, {})).items()}
        bad = {k: v for k, v in usage.items() if v not in SPLIT_NAMES}
        if bad:
            raise ParamsError(entry._name("usage"), f"values must be one of {list(SPLIT_NAMES)}, "
                                                    f"got {bad}")
        if split == "predefined" and not usage:
            raise ParamsError(entry._name("usage"), "is needed with split: predefined")
        pattern = _regex_with_group(entry, "label_pattern")
        person = _regex_with_group(entry, "person_pattern")
        face_crop = str(entry.get("face_crop", "inherit")).lower()
        if face_crop not in FACE_CROP:
            raise ParamsError(entry._name("face_crop"), f"must be one of {list(FACE_CROP)}, "
                                                        f"got {face_crop!r}")
        heldout = entry.get("heldout", False)
        if not isinstance(heldout, bool):
            raise ParamsError(entry._name("heldout"), f"must be true or false, got {heldout!r}")
        return cls(name=name, reader=reader, path=entry.existing_path("path"), map=mapping,
                   split=split, usage=usage, label_pattern=pattern, face_crop=face_crop,
                   heldout=heldout, person_pattern=person,
                   second_view=_second_view(entry, reader, classes),
                   box_margin=_box_margin(entry, reader))


def _box_margin(entry: Params, reader: str) -> float:
    """The ``box_margin`` of an ExpW source (required there: how much of the photo around a
    face box the detector sees decides the framing); 0 for other readers, which have none."""
    if reader != "expw":
        if entry.get("box_margin", None) is not None:
            raise ParamsError(entry._name("box_margin"), f"is for reader expw, not {reader}")
        return 0.0
    return float(entry.number("box_margin", low=0.0, high=2.0))


def _second_view(entry: Params, reader: str, classes: list[str]) -> SecondView | None:
    """The validated ``fer2013_view`` of a FER+ source, None when it has none."""
    raw = entry.get("fer2013_view", None)
    if raw is None:
        return None
    if reader != "ferplus":
        raise ParamsError(entry._name("fer2013_view"), f"is for reader ferplus, not {reader}")
    if not isinstance(raw, dict):
        raise ParamsError(entry._name("fer2013_view"), "must be a mapping {path, weight, map, "
                                                       "max_mae}")
    return SecondView.from_params(entry.section("fer2013_view"), classes)


def _regex_with_group(entry: Params, key: str) -> str | None:
    """An optional regex with at least one group, or a ParamsError naming ``key``."""
    pattern = entry.get(key, None)
    if pattern is None:
        return None
    try:
        if re.compile(str(pattern)).groups < 1:
            raise ParamsError(entry._name(key), "needs a group: (...)")
    except re.error as err:
        raise ParamsError(entry._name(key), f"is no regex: {err}") from err
    return str(pattern)


def _label_map(entry: Params, classes: list[str]) -> dict[str, str | None]:
    mapping: dict[str, str | None] = {}
    for raw, target in entry.mapping("map").items():
        if target is not None and target not in classes:
            raise ParamsError(f"{entry._name('map')}.{raw}",
                              f"must be one of {classes} or null, got {target!r}")
        mapping[str(raw)] = target
    return mapping


def read_sources(params: Params) -> list[SourceSpec]:
    """Every ``data.sources`` entry, validated before any file is read; names must be unique."""
    specs = source_list(params, "data.sources", params.classes)
    if not specs:
        raise ParamsError("data.sources", "lists no source (data.source is 'sources')")
    return specs


def source_list(params: Params, key: str, classes: list[str]) -> list[SourceSpec]:
    """The list of source entries at ``key`` (``data.sources``, ``evaluate.external``), each
    validated against ``classes``; names must be unique."""
    specs = []
    for k, entry in enumerate(params.sequence(key, default=[])):
        if not isinstance(entry, dict):
            raise ParamsError(f"{key}[{k}]", "must be a mapping (name, reader, path, ...)")
        specs.append(SourceSpec.from_params(_Scoped(entry, f"{key}[{k}]"), classes))
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ParamsError(key, f"names must be unique, {twice} appear twice")
    return specs


# -- reading --------------------------------------------------------------------------------------
def spec_candidates(spec: SourceSpec, classes: list[str]) -> Iterator[Candidate]:
    """The candidates of one source, named after it, with its split as ``usage``."""
    if spec.reader == "folder":
        raw = _folder(spec, classes)
    elif spec.reader == "fer2013":
        raw = _fer2013(spec)
    elif spec.reader == "expw":
        raw = expw_candidates(spec.path, spec.map or {}, spec.box_margin)
    else:
        folders = {f: f for f in FERPLUS_FOLDERS if f in spec.usage}
        second = None
        if spec.second_view is not None:
            second = second_labels(spec.second_view, spec_join(spec))
        raw = ferplus_candidates(spec.path, spec.map or {}, classes, folders, second)
    for cand in raw:
        usage = spec.usage.get(cand.usage, "") if spec.split == "predefined" else ""
        if spec.split == "predefined" and not usage:
            cand = replace(cand, label=None, raw_label=f"{cand.raw_label} (usage "
                                                       f"{cand.usage or '<none>'} not in usage)")
        if spec.heldout and cand.label is not None:
            usage = "test"
        yield replace(cand, id=f"{spec.name}-{cand.id}", source=spec.name, usage=usage,
                      person=_person(spec, cand))


def spec_join(spec: SourceSpec) -> Join:
    """The content join of a FER+ source with FER2013 (``fer2013_view``), cached per process."""
    assert spec.second_view is not None
    folders = [f for f in FERPLUS_FOLDERS if f in spec.usage]
    return join_views(spec.second_view.path, spec.path, folders, spec.second_view.max_mae)


def _person(spec: SourceSpec, cand: Candidate) -> str:
    """``<source>:<id>`` of the person ``person_pattern`` finds in the file name, else ""."""
    if spec.person_pattern is None:
        return ""
    found = re.search(spec.person_pattern, Path(cand.where).name)
    return f"{spec.name}:{found.group(1)}" if found else ""


def _folder(spec: SourceSpec, classes: list[str]) -> Iterator[Candidate]:
    """``path/[<usage>/]<class>/**`` or, with ``label_pattern``, labels from file names."""
    root = spec.path
    pattern = re.compile(spec.label_pattern) if spec.label_pattern else None
    for path, parts in folder_files(root):
        usage = parts[0] if spec.split == "predefined" and parts else ""
        folders = parts[1:] if spec.split == "predefined" else parts
        if pattern is not None:
            match = pattern.search(path.name)
            raw = match.group(1) if match else "<file name without label>"
        else:
            raw = folders[0] if folders else "<no class folder>"
        label = spec.map.get(raw) if spec.map is not None else (raw if raw in classes else None)
        yield folder_candidate(root, path, label, raw, usage=usage)


def _fer2013(spec: SourceSpec) -> Iterator[Candidate]:
    codes = {name: code for code, name in FER2013_CODES.items()}
    mapping: dict[int, str | None] = {}
    for raw, target in (spec.map or {}).items():
        code = codes.get(raw, raw)
        try:
            mapping[int(code)] = target
        except ValueError as err:
            raise ParamsError(f"data.sources {spec.name} map", f"keys are FER2013 codes 0-6 or "
                                                              f"names, got {raw!r}") from err
    return fer2013_at(spec.path, mapping)


def merged_candidates(specs: list[SourceSpec], classes: list[str]) -> list[Candidate]:
    """Every source's candidates, test splits first (stable within a split and source)."""
    offers = [c for spec in specs for c in spec_candidates(spec, classes)]
    return sorted(offers, key=lambda c: _RANK.get(c.usage, len(_RANK)))


# -- cross-source near duplicates ------------------------------------------------------------------
def cross_source_duplicates(images: list[np.ndarray], sources: list[str], hash_size: int,
                            distance: int) -> list[tuple[int, int]]:
    """(dropped, kept) index pairs: images within ``distance`` pHash bits of an earlier image
    from another source. Earlier rows win, and rows are in test-first order, so a test copy stays.
    """
    if len(images) < 2:
        return []
    packed = pack_hashes([perceptual_hash(img, hash_size) for img in images])
    pairs = near_duplicate_pairs(packed, distance)
    dropped: dict[int, int] = {}
    for i, j in pairs[:, :2].tolist():  # i < j, sorted
        if sources[i] != sources[j] and j not in dropped:
            dropped[j] = i
    return sorted(dropped.items())

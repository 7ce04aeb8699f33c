"""Class names and the mappings from other label schemas onto the project's six classes."""

from __future__ import annotations

import json
from pathlib import Path

CLASSES: tuple[str, ...] = ("angry", "fearful", "happy", "neutral", "sad", "surprised")

#: FER2013 integer codes as published with the Kaggle CSV.
FER2013_CODES: dict[int, str] = {
    0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral",
}

#: The seed platform's legacy 8-class schema (AffectNet-style) onto the current 6 classes.
#: ``contempt`` and ``disgust`` have no counterpart: they are folded into ``angry``, the closest
#: negative, high-arousal class, which is also what ``data.fer2013.map`` does with ``disgust`` by
#: default. Set a value to ``None`` in your own mapping to reject such images instead.
LEGACY_8_TO_6: dict[str, str | None] = {
    "angry": "angry",
    "contempt": "angry",
    "disgust": "angry",
    "fearful": "fearful",
    "happy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "surprised": "surprised",
}


def label_map(classes: list[str]) -> dict[str, int]:
    """Class name -> index, in the order given by ``params.classes``."""
    return {name: i for i, name in enumerate(classes)}


def write_label_map(classes: list[str], path: str | Path) -> None:
    Path(path).write_text(json.dumps(label_map(classes), indent=2) + "\n")


def read_label_map(path: str | Path) -> list[str]:
    """Classes ordered by index, from a ``label_map.json``."""
    mapping: dict[str, int] = json.loads(Path(path).read_text())
    return [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])]

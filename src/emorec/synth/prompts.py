"""Per-image generation requests: class, seed, text prompt and the hash that pins them down.

Every synthetic image is described by a :class:`PromptSpec` built from ``synth.seed`` and its
index alone, so any single image can be regenerated without the others, and the ``prompt_hash``
recorded in the CSV changes whenever anything that shapes the pixels changes (prompt, negative
prompt, model, seed, sampler settings, size).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emorec.config import Params
from emorec.demo_faces import class_counts
from emorec.errors import ParamsError

#: Attribute lists of ``synth.diffusers`` that fill the ``{name}`` slots of the prompt template.
VARIED_ATTRIBUTES = {"age": "ages", "ethnicity": "ethnicities", "lighting": "lightings",
                     "pose": "poses"}


@dataclass(frozen=True)
class PromptSpec:
    """Everything a backend needs to make one image, and what the CSV records about it."""

    index: int
    label: str
    seed: int
    prompt: str
    negative_prompt: str
    model: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_hash(self) -> str:
        """sha256 of the canonical JSON of prompt, negative prompt, model, seed and settings.

        Two rows with the same hash were produced by the same request, so the hash both
        identifies an image's recipe and detects silent drift of any ingredient.
        """
        payload = {"prompt": self.prompt, "negative_prompt": self.negative_prompt,
                   "model": self.model, "seed": self.seed, "settings": self.settings}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PromptTemplate:
    """The ``synth.diffusers`` text settings: template, negative prompt and the varied words."""

    template: str
    negative_prompt: str
    emotion_words: dict[str, str]
    attributes: dict[str, list[str]]

    @classmethod
    def from_params(cls, params: Params, classes: list[str]) -> PromptTemplate:
        section = params.section("synth.diffusers")
        template = section.string("prompt_template")
        words = section.mapping("emotion_words")
        missing = [c for c in classes if c not in words]
        if missing:
            raise ParamsError("synth.diffusers.emotion_words", f"lacks classes {missing}")
        attributes = {}
        for slot, key in VARIED_ATTRIBUTES.items():
            values = section.sequence(key)
            if not values:
                raise ParamsError(f"synth.diffusers.{key}", "must list at least one value")
            attributes[slot] = [str(v) for v in values]
        try:
            template.format(emotion="x", **{slot: "x" for slot in attributes})
        except (KeyError, IndexError, ValueError) as err:
            slots = "/".join(["emotion", *attributes])
            raise ParamsError("synth.diffusers.prompt_template",
                              f"may only use the slots {slots}, failed with {err!r}") from err
        return cls(template=template,
                   negative_prompt=str(section.get("negative_prompt", "") or ""),
                   emotion_words={c: str(words[c]) for c in classes}, attributes=attributes)

    def render(self, label: str, rng: np.random.Generator) -> str:
        """The prompt for one image: template with a random choice for each varied attribute."""
        chosen = {slot: values[int(rng.integers(len(values)))]
                  for slot, values in self.attributes.items()}
        return self.template.format(emotion=self.emotion_words[label], **chosen)


def image_rng(base_seed: int, index: int) -> np.random.Generator:
    """The generator of image ``index``: independent of every other image's."""
    return np.random.default_rng([base_seed, index])


def fresh_seed(rng: np.random.Generator) -> int:
    """A seed that fits torch's and numpy's seeding (non-negative, < 2**31)."""
    return int(rng.integers(0, 2**31 - 1))


def allocate(target_total: int, classes: list[str]) -> dict[str, int]:
    """How many images to generate per selected class: an even share of ``target_total``.

    The selected classes are already the minority ones (``synth.classes``); the per-class cap
    then decides how many of them may stay. Largest-remainder rounding, exact total.
    """
    return class_counts(target_total, dict.fromkeys(classes, 1.0))


def interleave(counts: dict[str, int]) -> list[str]:
    """Labels in round-robin order, so a cap reached late does not starve the last class."""
    queues = {c: n for c, n in counts.items()}
    order: list[str] = []
    while any(queues.values()):
        for c in counts:
            if queues[c]:
                order.append(c)
                queues[c] -= 1
    return order

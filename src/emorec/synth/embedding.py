"""Semantic near-duplicate filter for synthetic images: cosine similarity of image embeddings.

pHash catches pixel-level copies, but a generator can also reproduce a training face with a
small shift, another crop or different lighting; those hash far apart yet look like the same
person with the same expression. An image encoder (CLIP's vision tower by default) maps such
pairs close together, so a candidate whose embedding has cosine similarity ``>= threshold`` to
a real image (train, val or test: a copy of a test face would leak it into training) or to an
already accepted synthetic image is rejected, beside the pHash filter.

The encoder is loaded from a local folder or the local Hugging Face cache only (there is no
network here); it is off in the demo (``synth.embedding.enabled: false``) because no weights are
available offline. Heavy imports (torch, transformers) happen only when it is enabled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emorec.config import Params
from emorec.synth.backends import ModelUnavailableError, _looks_like_path

#: CLIP's normalisation, used when the model folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class EmbeddingConfig:
    """``synth.embedding``: whether the filter runs, which encoder, and the cosine threshold."""

    enabled: bool
    model: str
    threshold: float
    batch_size: int

    @classmethod
    def from_params(cls, params: Params) -> EmbeddingConfig:
        if params.get("synth.embedding", None) is None:  # an older params.yaml: filter off
            return cls(enabled=False, model="", threshold=1.0, batch_size=1)
        s = params.section("synth.embedding")
        return cls(enabled=s.boolean("enabled"), model=s.string("model"),
                   threshold=s.number("threshold", low=-1, high=1),
                   batch_size=s.integer("batch_size", low=1))


def _normalisation(source: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Image mean/std from the folder's preprocessor_config.json, else CLIP's."""
    path = Path(source) / "preprocessor_config.json"
    if path.is_file():
        cfg = json.loads(path.read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return CLIP_MEAN, CLIP_STD


def load_encoder(model: str) -> tuple[Any, int]:
    """The image encoder (eval mode) and its input side, never downloading.

    CLIP checkpoints (full or vision-only) load as ``CLIPVisionModelWithProjection`` so the
    embedding is CLIP's projected image embedding; other models go through ``AutoModel``.
    """
    from transformers import AutoConfig, AutoModel, CLIPVisionModelWithProjection

    hint = ("put the weights in a local folder (e.g. `hf download openai/clip-vit-base-patch32 "
            "--local-dir models/clip` on a machine with network) and point "
            "synth.embedding.model at it, or set synth.embedding.enabled: false")
    source = model
    if _looks_like_path(model):
        folder = Path(model).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelUnavailableError(f"synth.embedding.model: {folder} is not a model folder "
                                        f"(no config.json); {hint}")
        source = str(folder)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
        loader = (CLIPVisionModelWithProjection
                  if config.model_type in ("clip", "clip_vision_model") else AutoModel)
        encoder = loader.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelUnavailableError(
            f"synth.embedding.model: image encoder {model!r} is not available locally (there "
            f"is no network here): {hint}. Cause: {first}") from err
    vision = getattr(config, "vision_config", config)
    return encoder.eval(), int(getattr(vision, "image_size", 224))


class ImageEmbedder:
    """L2-normalised embeddings of uint8 grayscale images, computed in batches."""

    def __init__(self, model: str, batch_size: int = 32, dev: Any = None):
        import torch

        from emorec.models import device as default_device

        self.model_name = model
        self.batch_size = batch_size
        self.device = dev or default_device()
        self.encoder, self.size = load_encoder(model)
        self.encoder.to(self.device)
        source = str(Path(model).expanduser()) if _looks_like_path(model) else model
        mean, std = _normalisation(source)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def _pixels(self, grays: Sequence[np.ndarray]) -> Any:
        """Gray -> 3 equal channels, bilinear (antialiased) resize, encoder normalisation."""
        import torch
        import torch.nn.functional as F

        batch = torch.from_numpy(np.stack([np.asarray(g, dtype=np.float32) for g in grays]))
        batch = batch[:, None].expand(-1, 3, -1, -1) / 255.0
        batch = F.interpolate(batch, size=(self.size, self.size), mode="bilinear",
                              align_corners=False, antialias=True)
        return ((batch - self.mean) / self.std).to(self.device)

    def _vectors(self, pixels: Any) -> Any:
        out = self.encoder(pixel_values=pixels)
        for name in ("image_embeds", "pooler_output"):
            value = getattr(out, name, None)
            if value is not None:
                return value
        return out.last_hidden_state.mean(dim=1)

    def embed(self, grays: Sequence[np.ndarray]) -> np.ndarray:
        """float32 ``[N, D]`` unit vectors (``[0, 0]`` for no images)."""
        import torch

        chunks = []
        with torch.inference_mode():
            for start in range(0, len(grays), self.batch_size):
                vectors = self._vectors(self._pixels(grays[start:start + self.batch_size]))
                chunks.append(torch.nn.functional.normalize(vectors.float(), dim=1).cpu())
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)


class EmbeddingIndex:
    """Unit vectors seen so far; "is this one within ``threshold`` cosine of any of them?"."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self._vectors: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None

    def __len__(self) -> int:
        return sum(len(v) for v in self._vectors)

    def add(self, vectors: np.ndarray) -> None:
        if len(vectors):
            self._vectors.append(np.atleast_2d(vectors).astype(np.float32))
            self._matrix = None

    def max_similarity(self, vector: np.ndarray) -> float | None:
        """Highest cosine similarity to a stored vector (``None`` when empty)."""
        if not self._vectors:
            return None
        if self._matrix is None:
            self._matrix = np.concatenate(self._vectors)
        return float((self._matrix @ vector).max())

    def is_near_duplicate(self, vector: np.ndarray) -> bool:
        best = self.max_similarity(vector)
        return best is not None and best >= self.threshold


class EmbeddingFilter:
    """The embedding check of :class:`~emorec.synth.filters.QualityFilter`.

    Remembers the vector of the last checked image, so accepting it costs no second forward.
    """

    def __init__(self, embedder: ImageEmbedder, threshold: float):
        self.embedder = embedder
        self.real = EmbeddingIndex(threshold)
        self.synthetic = EmbeddingIndex(threshold)
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_config(cls, config: EmbeddingConfig) -> EmbeddingFilter | None:
        if not config.enabled:
            return None
        return cls(ImageEmbedder(config.model, config.batch_size), config.threshold)

    def add_references(self, grays: Sequence[np.ndarray]) -> None:
        self.real.add(self.embedder.embed(grays))

    def _vector(self, gray: np.ndarray) -> np.ndarray:
        if self._last is not None and self._last[0] is gray:
            return self._last[1]
        vector = self.embedder.embed([gray])[0]
        self._last = (gray, vector)
        return vector

    def check(self, gray: np.ndarray) -> str | None:
        """``embedding_duplicate_real`` / ``embedding_duplicate_synthetic`` or ``None``."""
        vector = self._vector(gray)
        if self.real.is_near_duplicate(vector):
            return "embedding_duplicate_real"
        if self.synthetic.is_near_duplicate(vector):
            return "embedding_duplicate_synthetic"
        return None

    def accept(self, gray: np.ndarray) -> None:
        self.synthetic.add(self._vector(gray)[None])

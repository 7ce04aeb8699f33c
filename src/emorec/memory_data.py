"""The in-memory data path: decode every image once, then augment whole batches as tensors.

Face datasets at training resolution are small (FER2013 at 64 px: 35,887 x 64 x 64 bytes, about
150 MB), so decoding PNGs in every epoch is wasted work: on two CPU cores it costs as much as the
model's own step. :func:`load_split` decodes a split into one uint8 ``[N, S, S]`` array (with the
same :class:`~emorec.transforms.Preprocess` as every other consumer), and :class:`BatchIterator`
serves shuffled batches from it. Augmentation runs on the whole batch at once with per-sample
random parameters (:class:`BatchAugment`): a random affine warp (scale, rotation, shift) and
horizontal flip in one ``grid_sample``, then timm's ``RandomErasing``. No worker processes are
needed: the main process spends a few percent of a step on it.

Datasets over ``train.in_memory_max_mb`` keep the file-based :class:`~emorec.data.FaceDataset`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.random_erasing import RandomErasing
from tqdm import tqdm

from emorec.camera_augment import CameraAugment
from emorec.config import Params
from emorec.errors import DataError, ParamsError
from emorec.transforms import Preprocess


def load_split(paths: Sequence[Path], preprocess: Preprocess, desc: str = "decode"
               ) -> np.ndarray:
    """uint8 ``[N, S, S]``: every image of a split decoded and resized once."""
    out = np.empty((len(paths), preprocess.size, preprocess.size), dtype=np.uint8)
    for k, path in enumerate(tqdm(paths, desc=desc, unit="img", mininterval=2, leave=False)):
        try:
            with Image.open(path) as img:
                out[k] = preprocess.to_gray(img)
        except OSError as err:
            raise DataError(f"cannot decode {path}: {err}") from err
    return out


def fits_in_memory(n_images: int, size: int, max_mb: float) -> bool:
    """Whether ``n_images`` uint8 images of ``size``^2 pixels stay under ``max_mb`` megabytes."""
    return n_images * size * size <= max_mb * 1e6


@dataclass(frozen=True)
class AugmentConfig:
    """``train.augment``: per-sample random geometry and erasing for the in-memory path."""

    flip: float
    scale: tuple[float, float]
    rotate: float
    translate: float
    erasing: float

    @classmethod
    def from_params(cls, params: Params) -> AugmentConfig:
        a = params.section("train.augment")
        scale = a.sequence("scale")
        if len(scale) != 2 or not 0 < float(scale[0]) <= float(scale[1]):
            raise ParamsError("train.augment.scale", f"must be [low, high] with 0 < low <= high, "
                                                     f"got {scale}")
        return cls(flip=a.number("flip", low=0, high=1),
                   scale=(float(scale[0]), float(scale[1])),
                   rotate=a.number("rotate", low=0, high=180),
                   translate=a.number("translate", low=0, high=0.5),
                   erasing=a.number("erasing", low=0, high=1))


class BatchAugment:
    """Random flip + affine warp + erasing, drawn independently for each image of a batch.

    The warp maps output pixel coordinates to input coordinates (``affine_grid``), so scale > 1
    zooms in; border pixels are repeated rather than filled with black, which would teach the
    model that dark frames mean something.
    """

    def __init__(self, cfg: AugmentConfig, device: torch.device,
                 camera: CameraAugment | None = None):
        self.cfg = cfg
        self.camera = camera  # other cameras' look (emorec.camera_augment), after the warp
        self.erase = (RandomErasing(probability=cfg.erasing, mode="pixel", device=str(device))
                      if cfg.erasing > 0 else None)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = x.shape[0]

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * torch.rand(n, generator=generator)

        c = self.cfg
        scale = uniform(*c.scale)
        angle = uniform(-c.rotate, c.rotate) * math.pi / 180
        flip = torch.where(torch.rand(n, generator=generator) < c.flip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([
            torch.stack([cos * flip, -sin, uniform(-c.translate, c.translate) * 2], dim=1),
            torch.stack([sin * flip, cos, uniform(-c.translate, c.translate) * 2], dim=1),
        ], dim=1).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.camera is not None:
            x = self.camera(x, generator)
        if self.erase is not None:
            x = self.erase(x)  # timm draws its own numbers: seeded by the epoch's torch seed
        return x


class BatchIterator:
    """Shuffled (or ordered) batches of normalised tensors from a uint8 image array.

    One instance serves every epoch; :meth:`set_epoch` re-seeds its generator from
    ``(seed, epoch)`` so a resumed run sees the same batches as an uninterrupted one. Under
    DistributedDataParallel each rank takes every ``world_size``-th index of the shared
    permutation.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, preprocess: Preprocess,
                 batch_size: int, shuffle: bool, augment: BatchAugment | None = None,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, seed: int = 0,
                 channels_last: bool = False, soft: np.ndarray | None = None):
        if len(images) == 0:
            raise DataError("no images to iterate over (empty split?)")
        self.images = torch.from_numpy(images)
        self.targets = torch.from_numpy(np.asarray(targets, dtype=np.int64))
        #: ``[N, C]`` label distributions served instead of ``targets`` (FER+ votes), or None
        self.soft = torch.from_numpy(soft) if soft is not None else None
        self.mean, self.std = preprocess.mean, preprocess.std
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.drop_last = drop_last and self._shard_len() >= batch_size
        self.channels_last = channels_last
        self.generator = torch.Generator()
        self.set_epoch(0)

    def _shard_len(self) -> int:
        return len(range(self.rank, len(self.images), self.world_size))

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        self.generator.manual_seed(seed if seed is not None else self.seed * 100_003 + epoch)

    def __len__(self) -> int:
        n = self._shard_len()
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = (torch.randperm(len(self.images), generator=self.generator) if self.shuffle
                 else torch.arange(len(self.images)))
        order = order[self.rank::self.world_size]
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = self.images[idx].unsqueeze(1).float().div_(255.0)
            x = x.sub_(self.mean).div_(self.std)
            if self.augment is not None:
                x = self.augment(x, self.generator)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.targets[idx] if self.soft is None else self.soft[idx]

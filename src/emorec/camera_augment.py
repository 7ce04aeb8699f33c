"""Augmentation aimed at other cameras: low resolution, blur, JPEG, gamma, contrast and noise.

A model trained on one dataset learns its look: FER2013 is 48 px web crops, lab sets are sharp
studio portraits, webcams are soft, noisy and compressed. Each transform here is drawn per image
with its own probability (``train.camera`` in params.yaml; 0 switches it off and draws no random
numbers, so runs without it are unchanged). They run on whole normalised batches, after the
geometric warp of :class:`emorec.memory_data.BatchAugment`, with the batch iterator's generator,
so a resumed run sees the same images.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from emorec.config import Params
from emorec.errors import ParamsError

#: transform name -> what its range means
RANGES = {
    "downscale": "side of the low-resolution copy, share of the image side",
    "blur": "gaussian sigma, pixels at image.size",
    "jpeg": "JPEG quality",
    "gamma": "gamma exponent (< 1 brightens)",
    "contrast": "contrast factor around the image mean",
    "noise": "gaussian noise std, share of the 0-1 range",
}


@dataclass(frozen=True)
class CameraConfig:
    """``train.camera``: ``{name: {p: probability, range: [low, high]}}`` for :data:`RANGES`."""

    p: dict[str, float]
    ranges: dict[str, tuple[float, float]]
    mean: float
    std: float

    @classmethod
    def from_params(cls, params: Params) -> CameraConfig:
        section = params.get("train.camera", None) or {}
        unknown = sorted(set(section) - set(RANGES))
        if unknown:
            raise ParamsError("train.camera", f"unknown transforms {unknown}; known: "
                                              f"{sorted(RANGES)}")
        p, ranges = {}, {}
        for name in section:
            key = f"train.camera.{name}"
            p[name] = params.number(f"{key}.p", low=0, high=1)
            low, high = (float(v) for v in params.sequence(f"{key}.range"))
            if not 0 <= low <= high:
                raise ParamsError(f"{key}.range", f"must be [low, high] with 0 <= low <= high "
                                                  f"({RANGES[name]}), got {[low, high]}")
            ranges[name] = (low, high)
        if "jpeg" in ranges and not 1 <= ranges["jpeg"][0] <= ranges["jpeg"][1] <= 100:
            raise ParamsError("train.camera.jpeg.range", "JPEG quality must be within 1..100")
        return cls(p=p, ranges=ranges, mean=params.number("image.mean"),
                   std=params.number("image.std", low=1e-6))

    @property
    def active(self) -> bool:
        return any(v > 0 for v in self.p.values())


class CameraAugment:
    """Apply :class:`CameraConfig`'s transforms to a normalised ``[B, 1, S, S]`` batch."""

    def __init__(self, cfg: CameraConfig):
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = (x * self.cfg.std + self.cfg.mean).clamp_(0, 1)
        for name in RANGES:  # fixed order: low resolution and blur happen before compression
            if self.cfg.p.get(name, 0) > 0:
                chosen, value = self._draw(name, u.shape[0], generator)
                if chosen.any():
                    u = getattr(self, f"_{name}")(u, chosen, value, generator)
        return (u.clamp_(0, 1) - self.cfg.mean) / self.cfg.std

    def _draw(self, name: str, n: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = self.cfg.ranges[name]
        chosen = torch.rand(n, generator=generator) < self.cfg.p[name]
        return chosen, low + (high - low) * torch.rand(n, generator=generator)

    @staticmethod
    def _downscale(u: torch.Tensor, chosen: torch.Tensor, share: torch.Tensor,
                   _: torch.Generator) -> torch.Tensor:
        side = u.shape[-1]
        for i in chosen.nonzero().flatten().tolist():
            small = max(4, int(round(side * float(share[i]))))
            low = F.interpolate(u[i:i + 1], size=small, mode="area")
            u[i:i + 1] = F.interpolate(low, size=side, mode="bilinear", align_corners=False)
        return u

    def _blur(self, u: torch.Tensor, chosen: torch.Tensor, sigma: torch.Tensor,
              _: torch.Generator) -> torch.Tensor:
        # one grouped, separable convolution for the whole batch: a kernel per image (a unit
        # impulse where not chosen), all of the radius the largest sigma needs. A convolution
        # per image would rebuild oneDNN's primitive for every new kernel size.
        radius = max(1, math.ceil(2.5 * self.cfg.ranges["blur"][1]))
        t = torch.arange(-radius, radius + 1, dtype=u.dtype)
        s = sigma.clamp(min=1e-3).to(u.dtype).view(-1, 1)
        k = torch.exp(-(t.view(1, -1) ** 2) / (2 * s * s))
        k = k / k.sum(dim=1, keepdim=True)
        impulse = (t == 0).to(u.dtype).expand_as(k)
        k = torch.where(chosen.view(-1, 1), k, impulse).to(u.device)
        n, _, h, w = u.shape
        img = F.pad(u.view(1, n, h, w), (radius, radius, radius, radius), mode="replicate")
        img = F.conv2d(img, k.view(n, 1, 1, -1), groups=n)
        return F.conv2d(img, k.view(n, 1, -1, 1), groups=n).view(n, 1, h, w)

    @staticmethod
    def _jpeg(u: torch.Tensor, chosen: torch.Tensor, quality: torch.Tensor,
              _: torch.Generator) -> torch.Tensor:
        for i in chosen.nonzero().flatten().tolist():
            pixels = (u[i, 0].cpu() * 255).round().to(torch.uint8).numpy()
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG",
                                         quality=int(round(float(quality[i]))))
            decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255
            u[i, 0] = torch.from_numpy(decoded).to(u.device, u.dtype)
        return u

    @staticmethod
    def _gamma(u: torch.Tensor, chosen: torch.Tensor, gamma: torch.Tensor,
               _: torch.Generator) -> torch.Tensor:
        g = torch.where(chosen, gamma, torch.ones_like(gamma)).to(u.device, u.dtype)
        return u.clamp(1e-6, 1).pow(g.view(-1, 1, 1, 1))

    @staticmethod
    def _contrast(u: torch.Tensor, chosen: torch.Tensor, factor: torch.Tensor,
                  _: torch.Generator) -> torch.Tensor:
        c = torch.where(chosen, factor, torch.ones_like(factor)).to(u.device, u.dtype)
        mean = u.mean(dim=(1, 2, 3), keepdim=True)
        return (u - mean) * c.view(-1, 1, 1, 1) + mean

    @staticmethod
    def _noise(u: torch.Tensor, chosen: torch.Tensor, std: torch.Tensor,
               generator: torch.Generator) -> torch.Tensor:
        s = torch.where(chosen, std, torch.zeros_like(std)).to(u.device, u.dtype)
        noise = torch.randn(u.shape, generator=generator).to(u.device, u.dtype)
        return u + noise * s.view(-1, 1, 1, 1)

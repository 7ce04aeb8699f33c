"""Other cameras' look: each transform changes images as it says, off means untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from emorec.camera_augment import RANGES, CameraAugment, CameraConfig
from emorec.config import Params
from emorec.errors import ParamsError


def config(params_raw: dict, **on: tuple[float, float]) -> CameraConfig:
    raw = copy.deepcopy(params_raw)
    for name in RANGES:
        raw["train"]["camera"][name]["p"] = 0.0
    for name, rng in on.items():
        raw["train"]["camera"][name] = {"p": 1.0, "range": list(rng)}
    return CameraConfig.from_params(Params(raw))


def batch(n: int = 6, size: int = 32) -> torch.Tensor:
    """Normalised faces-like batch: a bright ellipse with sharp edges on a dark background."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size),
                            indexing="ij")
    face = ((xx / 0.6) ** 2 + (yy / 0.8) ** 2 < 1).float() * 0.8 + 0.1
    return ((face - 0.5) / 0.5).expand(n, 1, size, size).clone()


def run(cfg: CameraConfig, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return CameraAugment(cfg)(x.clone(), torch.Generator().manual_seed(seed))


def edge_energy(x: torch.Tensor) -> float:
    return float((x[..., 1:] - x[..., :-1]).pow(2).mean())  # blur spreads, not removes, TV


def test_off_by_default_and_draws_nothing(params_raw):
    cfg = CameraConfig.from_params(Params(params_raw))
    assert not cfg.active  # params.yaml lists every transform at p 0


def test_blur_and_downscale_soften_edges(params_raw):
    x = batch()
    for name, rng in {"blur": (1.0, 1.5), "downscale": (0.3, 0.4)}.items():
        out = run(config(params_raw, **{name: rng}), x)
        assert edge_energy(out) < 0.8 * edge_energy(x), name
        assert out.mean().item() == pytest.approx(x.mean().item(), abs=0.05)


def test_gamma_contrast_noise_and_jpeg_change_pixels_as_expected(params_raw):
    x = batch()
    brighter = run(config(params_raw, gamma=(0.5, 0.5)), x)
    assert brighter.mean() > x.mean() + 0.1  # gamma < 1 lifts mid-tones
    flat = run(config(params_raw, contrast=(0.2, 0.2)), x)
    assert flat.std() < 0.3 * x.std()
    noisy = run(config(params_raw, noise=(0.05, 0.05)), x)
    assert 0.05 < (noisy - x).std().item() < 0.2  # 0.05 of the 0-1 range = 0.1 normalised
    jpeg = run(config(params_raw, jpeg=(5, 5)), x)
    assert 0 < (jpeg - x).abs().mean().item() < 0.2  # blocky but still the same face


def test_same_generator_seed_gives_same_batch(params_raw):
    cfg = config(params_raw, noise=(0.01, 0.05), blur=(0.3, 1.0), jpeg=(30, 90))
    x = batch()
    assert torch.equal(run(cfg, x, seed=3), run(cfg, x, seed=3))
    assert not torch.equal(run(cfg, x, seed=3), run(cfg, x, seed=4))


def test_bad_camera_params_name_the_key(params_raw):
    raw = copy.deepcopy(params_raw)
    raw["train"]["camera"]["fisheye"] = {"p": 1, "range": [0, 1]}
    with pytest.raises(ParamsError, match="train.camera"):
        CameraConfig.from_params(Params(raw))
    raw = copy.deepcopy(params_raw)
    raw["train"]["camera"]["jpeg"] = {"p": 0.5, "range": [0, 200]}
    with pytest.raises(ParamsError, match="train.camera.jpeg.range"):
        CameraConfig.from_params(Params(raw))
    raw["train"]["camera"]["jpeg"] = {"p": 1.5, "range": [30, 90]}
    with pytest.raises(ParamsError, match="train.camera.jpeg.p"):
        CameraConfig.from_params(Params(raw))

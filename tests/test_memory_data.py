"""The in-memory data path: decode once, shuffled seeded batches, per-image augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emorec.errors import DataError
from emorec.memory_data import (
    AugmentConfig,
    BatchAugment,
    BatchIterator,
    fits_in_memory,
    load_split,
)
from emorec.transforms import Preprocess

PRE = Preprocess(size=16, mean=0.5, std=0.5)


def images(n: int = 10) -> np.ndarray:
    return np.stack([np.full((16, 16), 20 * k, dtype=np.uint8) for k in range(n)])


def test_load_split_matches_the_shared_preprocessing(tmp_path):
    paths = []
    for k in range(3):
        path = tmp_path / f"{k}.png"
        Image.fromarray(np.random.default_rng(k).integers(0, 256, (40, 40)).astype(np.uint8)
                        ).save(path)
        paths.append(path)
    arr = load_split(paths, PRE)
    assert arr.shape == (3, 16, 16) and arr.dtype == np.uint8
    with Image.open(paths[1]) as img:
        assert np.array_equal(arr[1], PRE.to_gray(img))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        load_split([tmp_path / "bad.png"], PRE)


def test_batches_cover_every_image_once_and_are_seeded_per_epoch():
    it = BatchIterator(images(), np.arange(10), PRE, batch_size=4, shuffle=True, seed=3)
    it.set_epoch(0)
    first = torch.cat([y for _, y in it])
    assert len(it) == 3 and sorted(first.tolist()) == list(range(10))
    it.set_epoch(0)
    assert torch.equal(torch.cat([y for _, y in it]), first)  # resumable: same epoch, same order
    it.set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in it]), first)
    x, y = next(iter(it))  # normalised like every other consumer
    assert torch.allclose(x[:, 0, 0, 0], (y.float() * 20 / 255 - 0.5) / 0.5)


def test_ranks_split_the_permutation_without_overlap():
    shards = [BatchIterator(images(), np.arange(10), PRE, 2, shuffle=True, rank=r,
                            world_size=2, seed=1) for r in range(2)]
    seen = [torch.cat([y for _, y in s]).tolist() for s in shards]
    assert not set(seen[0]) & set(seen[1]) and len(seen[0]) + len(seen[1]) == 10


def test_augment_draws_per_image_and_identity_settings_change_nothing():
    x = torch.linspace(-1, 1, 16).repeat(8, 1, 16, 1)  # a horizontal ramp per image
    identity = BatchAugment(AugmentConfig(0.0, (1.0, 1.0), 0.0, 0.0, 0.0), torch.device("cpu"))
    assert torch.allclose(identity(x.clone(), torch.Generator().manual_seed(0)), x, atol=1e-5)
    flip = BatchAugment(AugmentConfig(0.5, (1.0, 1.0), 0.0, 0.0, 0.0), torch.device("cpu"))
    out = flip(x.clone(), torch.Generator().manual_seed(0))
    flipped = [bool(torch.allclose(o, x[0].flip(-1), atol=1e-5)) for o in out]
    assert 0 < sum(flipped) < len(flipped)  # some images flipped, some not: drawn per image
    strong = BatchAugment(AugmentConfig(0.5, (0.8, 1.2), 15.0, 0.1, 1.0), torch.device("cpu"))
    out = strong(x.clone(), torch.Generator().manual_seed(1))
    assert out.shape == x.shape and not torch.allclose(out[0], out[1])


def test_fits_in_memory_counts_uint8_bytes():
    assert fits_in_memory(35_887, 64, max_mb=150)
    assert not fits_in_memory(35_887, 64, max_mb=100)
    with pytest.raises(DataError):
        BatchIterator(np.zeros((0, 16, 16), np.uint8), np.arange(0), PRE, 4, shuffle=False)

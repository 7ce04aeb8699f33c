"""The train and val batches, on one of two data paths: decoded once into memory and
augmented as whole tensors (:mod:`emorec.memory_data`), or read from files by a
``DataLoader``; plus the class weights and label map the stage checks."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from emorec.camera_augment import CameraAugment, CameraConfig
from emorec.config import Params
from emorec.data import FaceDataset, soft_targets
from emorec.distill import DistillConfig, distilled_targets
from emorec.errors import DataError
from emorec.labels import read_label_map
from emorec.memory_data import (
    AugmentConfig,
    BatchAugment,
    BatchIterator,
    fits_in_memory,
    load_split,
)
from emorec.split_csv import check_images_exist, read_split
from emorec.training.config import TrainConfig, TrainPaths
from emorec.training.distributed import DistEnv, derive_seed, seed_everything, seed_worker
from emorec.transforms import Preprocess

log = logging.getLogger(__package__)  # "emorec.training", one name for the package


def read_class_weights(path: str | Path, classes: Sequence[str]) -> torch.Tensor:
    """Per-class loss weights in class-index order from the balance stage's ``{class: w}`` JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class weights file not found: {path} (or set train.use_class_weights: "
                        "false)")
    raw = json.loads(path.read_text())
    missing = [c for c in classes if c not in raw]
    if missing:
        raise DataError(f"{path} has no weight for classes {missing}")
    weights = torch.tensor([float(raw[c]) for c in classes], dtype=torch.float32)
    if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise DataError(f"{path}: weights must be finite, >= 0 and not all 0, got {raw}")
    return weights


def check_label_map(path: str | Path, classes: list[str]) -> None:
    if not Path(path).is_file():
        raise DataError(f"label map not found: {path}")
    found = read_label_map(path)
    if found != classes:
        raise DataError(f"{path} orders classes as {found} but params 'classes' is {classes}")


#: What the train loop iterates: a ``DataLoader`` (files) or a :class:`BatchIterator` (memory).
Batches = DataLoader | BatchIterator


def make_loaders(cfg: TrainConfig, params: Params, paths: TrainPaths, classes: list[str],
                 env: DistEnv, device: torch.device) -> tuple[Batches, Batches]:
    pre = Preprocess.from_params(params)
    train_frame = read_split(paths.train_csv, classes)
    val_frame = read_split(paths.val_csv, classes)
    distill = DistillConfig.from_params(params)
    if distill is not None:
        soft = distilled_targets(distill, train_frame, classes, cfg.label_smoothing,
                                 Path(paths.root))
        log.info("distillation: %d teacher(s), weight %g", len(distill.teachers), distill.weight)
    else:
        soft = soft_targets(train_frame, classes, cfg.label_smoothing)
    train_ds = FaceDataset(train_frame, classes, pre, root=paths.root, augment=cfg.train_augment,
                           seed=params.seed, soft=soft)
    val_ds = FaceDataset(val_frame, classes, pre, root=paths.root)
    check_images_exist(train_ds.paths, paths.train_csv)
    check_images_exist(val_ds.paths, paths.val_csv)
    in_memory = cfg.in_memory is True or (
        cfg.in_memory == "auto" and fits_in_memory(len(train_ds) + len(val_ds), pre.size,
                                                   cfg.in_memory_max_mb))
    if in_memory:
        train_loader, val_loader = _memory_loaders(cfg, params, train_ds, val_ds, env, device)
    else:
        train_loader, val_loader = _file_loaders(cfg, params, train_ds, val_ds, env, device)
    if env.is_main:
        seen = len(train_loader) * cfg.batch_size * env.world_size
        log.info("train: %d images (%s), val: %d images (%s), %s; %d train images per epoch%s",
                 len(train_ds), paths.train_csv, len(val_ds), paths.val_csv,
                 "decoded once into memory" if in_memory else "read from files every epoch",
                 min(seen, len(train_ds)) if train_loader.drop_last else len(train_ds),
                 " (incomplete last batch left out, a different one each epoch)"
                 if train_loader.drop_last and seen < len(train_ds) else "")
    return train_loader, val_loader


def train_targets(loader: Batches) -> np.ndarray:
    """Every train label, whichever data path serves them."""
    if isinstance(loader, BatchIterator):
        return loader.targets.numpy()
    return loader.dataset.targets


def _memory_loaders(cfg: TrainConfig, params: Params, train_ds: FaceDataset,
                    val_ds: FaceDataset, env: DistEnv, device: torch.device
                    ) -> tuple[BatchIterator, BatchIterator]:
    """Both splits decoded once; train batches augmented as whole tensors."""
    pre = train_ds.preprocess
    camera = CameraConfig.from_params(params)
    augment = (BatchAugment(AugmentConfig.from_params(params), torch.device("cpu"),
                            CameraAugment(camera) if camera.active else None)
               if cfg.train_augment else None)
    common = {"preprocess": pre, "batch_size": cfg.batch_size, "rank": env.rank,
              "world_size": env.world_size, "channels_last": cfg.channels_last}
    train = BatchIterator(load_split(train_ds.paths, pre, "decode train"), train_ds.targets,
                          shuffle=True, augment=augment, drop_last=True, seed=params.seed,
                          soft=train_ds.soft, **common)
    val = BatchIterator(load_split(val_ds.paths, pre, "decode val"), val_ds.targets,
                        shuffle=False, **common)
    return train, val


def _file_loaders(cfg: TrainConfig, params: Params, train_ds: FaceDataset, val_ds: FaceDataset,
                  env: DistEnv, device: torch.device) -> tuple[DataLoader, DataLoader]:
    """Images read from files by ``num_workers`` processes (sets too large for memory)."""
    sampler = DistributedSampler(train_ds, num_replicas=env.world_size, rank=env.rank,
                                 shuffle=True, seed=params.seed)
    train_loader = DataLoader(
        train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
        drop_last=len(sampler) >= cfg.batch_size, generator=torch.Generator(),
        worker_init_fn=seed_worker, pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0)
    val_loader = DataLoader(Subset(val_ds, range(env.rank, len(val_ds), env.world_size)),
                            batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    return train_loader, val_loader


def seed_epoch(seed: int, epoch: int, env: DistEnv, loader: Batches) -> None:
    """Re-seed every generator the epoch uses from (seed, epoch, rank): resumable and exact."""
    s = derive_seed(seed, epoch, env.rank)
    seed_everything(s)
    if isinstance(loader, BatchIterator):
        # one permutation shared by all ranks, so it is seeded without the rank
        loader.set_epoch(epoch, seed=derive_seed(seed, epoch))
        return
    loader.generator.manual_seed(s)
    loader.sampler.set_epoch(epoch)
    loader.dataset.rng = np.random.default_rng(s)

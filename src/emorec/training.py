"""Fine-tuning a timm backbone on the split CSVs, single process or DistributedDataParallel.

The recipe is timm's own pieces wired together rather than re-implemented: optimizer and
warm-up + cosine schedule from ``create_optimizer_v2``/``create_scheduler_v2`` (per-parameter-group
learning rates for backbone and head), ``Mixup`` (MixUp/CutMix and label smoothing in one place),
``ModelEmaV3`` for weight averaging, mixed precision where the hardware has it
(:mod:`emorec.precision`) and gradient clipping. Training runs in two phases: the first
``train.freeze_backbone_epochs`` epochs update only the classifier (``model.get_classifier()``)
so a new head does not push large random gradients into pretrained features; then everything
trains with discriminative learning rates (``lr_backbone`` < ``lr_head``).

Validation uses the EMA weights when EMA is on; those are the weights saved to ``best.pt``.
Every epoch the full resumable state goes to ``last.pt``; random generators are re-seeded from
``(seed, epoch, rank)`` at the start of each epoch, so a resumed run continues exactly like an
uninterrupted one without having to store generator states.

Data that fits in memory (``train.in_memory``) is decoded once and augmented in whole batches
(:mod:`emorec.memory_data`); larger sets stream from files through a ``DataLoader``.

The per-step code avoids host synchronisation: losses, predictions and gradient norms stay on
the device and are read once per epoch (see ``benchmarks/train_throughput.py``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset, get_worker_info
from tqdm import tqdm

from emorec.callbacks import EarlyStopping
from emorec.config import Params
from emorec.data import FaceDataset
from emorec.errors import DataError, EmorecError, ParamsError
from emorec.evaluation import predict_logits
from emorec.labels import read_label_map
from emorec.memory_data import (
    AugmentConfig,
    BatchAugment,
    BatchIterator,
    fits_in_memory,
    load_split,
)
from emorec.metrics import classification_metrics
from emorec.models import create_model, save_checkpoint
from emorec.models import device as default_device
from emorec.precision import autocast, resolve_precision
from emorec.splits import check_images_exist, read_split
from emorec.transforms import Preprocess

log = logging.getLogger(__name__)

#: timm scheduler names accepted for ``train.scheduler`` (``create_scheduler_v2``).
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "constant")


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` section of params.yaml, validated once so the loop reads plain attributes."""

    model: str
    pretrained: str
    epochs: int
    batch_size: int
    num_workers: int
    freeze_backbone_epochs: int
    lr_head: float
    lr_backbone: float
    weight_decay: float
    optimizer: str
    scheduler: str
    scheduler_step: str
    warmup_epochs: int
    warmup_lr: float
    min_lr: float
    amp: bool | str
    amp_dtype: str
    channels_last: bool
    in_memory: bool | str
    in_memory_max_mb: float
    grad_clip: float
    ema: bool
    ema_decay: float
    ema_warmup: bool
    label_smoothing: float
    use_class_weights: bool
    mixup: bool
    mixup_alpha: float
    cutmix_alpha: float
    mixup_prob: float
    mixup_switch_prob: float
    early_stopping_patience: int
    early_stopping_min_delta: float
    train_augment: bool

    @classmethod
    def from_params(cls, params: Params) -> TrainConfig:
        t = params.section("train")
        optimizer = t.string("optimizer")
        if optimizer not in list_optimizers():
            raise ParamsError("train.optimizer", f"is not a timm optimizer name: {optimizer!r}")
        mix = t.section("mixup")
        return cls(
            model=t.string("model"),
            pretrained=str(t.get("pretrained") or "none"),
            epochs=t.integer("epochs", low=1),
            batch_size=t.integer("batch_size", low=1),
            num_workers=t.integer("num_workers", low=0),
            freeze_backbone_epochs=t.integer("freeze_backbone_epochs", low=0),
            lr_head=t.number("lr_head", low=0),
            lr_backbone=t.number("lr_backbone", low=0),
            weight_decay=t.number("weight_decay", low=0),
            optimizer=optimizer,
            scheduler=t.choice("scheduler", SCHEDULERS),
            scheduler_step=t.choice("scheduler_step", ["epoch", "update"]),
            warmup_epochs=t.integer("warmup_epochs", low=0),
            warmup_lr=t.number("warmup_lr", low=0),
            min_lr=t.number("min_lr", low=0),
            amp=_auto_or_bool(t, "amp"),
            amp_dtype=t.choice("amp_dtype", ["bfloat16", "float16"]),
            channels_last=t.boolean("channels_last"),
            in_memory=_auto_or_bool(t, "in_memory"),
            in_memory_max_mb=t.number("in_memory_max_mb", low=0),
            grad_clip=t.number("grad_clip", low=0),
            ema=t.boolean("ema"),
            ema_decay=t.number("ema_decay", low=0, high=1),
            ema_warmup=t.boolean("ema_warmup"),
            label_smoothing=t.number("label_smoothing", low=0, high=0.99),
            use_class_weights=t.boolean("use_class_weights"),
            mixup=mix.boolean("enabled"),
            mixup_alpha=mix.number("mixup_alpha", low=0),
            cutmix_alpha=mix.number("cutmix_alpha", low=0),
            mixup_prob=mix.number("prob", low=0, high=1),
            mixup_switch_prob=mix.number("switch_prob", low=0, high=1),
            early_stopping_patience=t.integer("early_stopping_patience", low=0),
            early_stopping_min_delta=t.number("early_stopping_min_delta", low=0),
            train_augment=t.boolean("train_augment"),
        )

    @property
    def mixup_active(self) -> bool:
        mixing = self.mixup_alpha > 0 or self.cutmix_alpha > 0
        return self.mixup and self.mixup_prob > 0 and mixing


def _auto_or_bool(section: Params, key: str) -> bool | str:
    """A setting that is ``auto`` or a boolean."""
    if section.get(key) == "auto":
        return "auto"
    return section.boolean(key)


# -- distributed / seeding -------------------------------------------------------------------
@dataclass(frozen=True)
class DistEnv:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistEnv:
    """Join the process group that ``torchrun`` describes in the environment (gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return env


def device_for(env: DistEnv) -> torch.device:
    if env.enabled and torch.cuda.is_available():
        return torch.device("cuda", env.local_rank)
    return default_device()


def all_gather(obj: Any, env: DistEnv) -> list[Any]:
    """Every rank's ``obj`` (a list of one without distribution)."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def derive_seed(*keys: int) -> int:
    """A well-mixed 32-bit seed from several integers (e.g. seed, epoch, rank)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    """DataLoader worker init: numpy/random and the dataset's flip generator from torch's seed."""
    info = get_worker_info()
    seed = info.seed % 2**32
    np.random.seed(seed)
    random.seed(seed)
    if hasattr(info.dataset, "rng"):
        info.dataset.rng = np.random.default_rng(seed)


# -- data ----------------------------------------------------------------------------------------
def file_md5(path: str | Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def data_version(paths: Iterable[str | Path]) -> dict[str, str]:
    """``{file: md5}`` of the inputs, stored in checkpoints to tell which data made a model."""
    return {str(p): file_md5(p) for p in paths}


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


# -- loss ----------------------------------------------------------------------------------------
class ClassWeightedSoftTargetCrossEntropy(SoftTargetCrossEntropy):
    """timm's soft-target cross-entropy with optional per-class weights.

    timm's ``SoftTargetCrossEntropy`` (the loss for MixUp/CutMix targets) has no class weights, so
    with weights this delegates to ``torch.nn.functional.cross_entropy`` with probability
    targets: ``loss_i = -sum_c w_c * y_ic * log p_ic``, averaged over the batch (divided by N, not
    by the sum of weights). For a one-hot target that is ``w_y * CE``, the usual weighted CE; for
    a MixUp target each of the two classes contributes with its own weight. Hard labels are turned
    into (smoothed) one-hot targets before the loss so every batch uses this same formula.
    """

    def __init__(self, weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            return super().forward(x, target)
        return F.cross_entropy(x.float(), target, weight=self.weight)


# -- optimisation --------------------------------------------------------------------------------
def param_groups(model: nn.Module, lr_backbone: float, lr_head: float, weight_decay: float
                 ) -> list[dict[str, Any]]:
    """Backbone vs head groups (``model.get_classifier()``), each split into decay / no-decay.

    Biases, norm scales (all 1-d tensors) and the model's ``no_weight_decay()`` names get no weight
    decay, the same rule timm applies when given a whole model.
    """
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    if not head_ids:
        raise EmorecError(f"{type(model).__name__} has no classifier parameters to train")
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        part = "head" if id(p) in head_ids else "backbone"
        decay = p.ndim > 1 and name not in skip
        group = groups.setdefault((part, decay), {
            "params": [], "part": part, "lr": lr_head if part == "head" else lr_backbone,
            "weight_decay": weight_decay if decay else 0.0,
        })
        group["params"].append(p)
    return list(groups.values())


class Trainer:
    """Model, optimizer, schedule, EMA, MixUp and mixed precision; one ``train_step`` per batch."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, classes: Sequence[str],
                 class_weights: torch.Tensor | None, updates_per_epoch: int,
                 device: torch.device, env: DistEnv | None = None):
        self.cfg, self.classes, self.device = cfg, list(classes), device
        self.env = env or DistEnv()
        self.num_classes = len(classes)
        self.model = model.to(device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        groups = param_groups(self.model, cfg.lr_backbone, cfg.lr_head, cfg.weight_decay)
        self.backbone_params = [p for g in groups if g["part"] == "backbone" for p in g["params"]]
        self.optimizer = create_optimizer_v2(groups, opt=cfg.optimizer, lr=cfg.lr_head,
                                             weight_decay=cfg.weight_decay)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=cfg.scheduler, num_epochs=cfg.epochs,
            warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
            step_on_epochs=cfg.scheduler_step == "epoch", updates_per_epoch=updates_per_epoch,
            plateau_mode="max")
        self.precision = resolve_precision(cfg.amp, cfg.amp_dtype, device)
        self.amp_dtype = self.precision.dtype
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = (ModelEmaV3(self.model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup)
                    if cfg.ema else None)
        self.mixup = Mixup(
            mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, prob=cfg.mixup_prob,
            switch_prob=cfg.mixup_switch_prob, label_smoothing=cfg.label_smoothing,
            num_classes=self.num_classes) if cfg.mixup_active else None
        weight = class_weights.to(device) if class_weights is not None else None
        self.criterion = ClassWeightedSoftTargetCrossEntropy(weight)
        self.num_updates = 0
        self.backbone_frozen: bool | None = None
        self.net: nn.Module = self.model
        self.trainable: list[nn.Parameter] = list(self.model.parameters())

    # -- phases ---------------------------------------------------------------------------------
    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze/unfreeze the backbone; DDP is re-wrapped since it fixes its parameter set."""
        if frozen == self.backbone_frozen:
            return
        for p in self.backbone_params:
            p.requires_grad_(not frozen)
        self.backbone_frozen = frozen
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.env.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and saved: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def lrs(self) -> dict[str, float]:
        """Current learning rate per part (backbone, head)."""
        return {g["part"]: g["lr"] for g in self.optimizer.param_groups}

    # -- one step -------------------------------------------------------------------------------
    def soft_targets(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MixUp/CutMix the batch (timm ``Mixup``, also label smoothing) or smooth one-hot targets.

        timm mixes pairs within the batch, so an odd-sized batch is left unmixed.
        """
        if self.mixup is not None and x.shape[0] % 2 == 0:
            return self.mixup(x, y)
        return x, mixup_target(y, self.num_classes, smoothing=self.cfg.label_smoothing)

    def train_step(self, x: torch.Tensor, y: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One optimisation step. Returns detached (loss, predicted class, grad norm) on device."""
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        x, target = self.soft_targets(x, y)
        with autocast(self.device, self.amp_dtype):
            logits = self.net(x)
            loss = self.criterion(logits, target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if self.cfg.grad_clip > 0:
            grad_norm = nn.utils.clip_grad_norm_(self.trainable, self.cfg.grad_clip)
        else:
            grad_norm = nn.utils.get_total_norm([p.grad for p in self.trainable
                                                 if p.grad is not None])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.num_updates += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.num_updates)
        self.scheduler.step_update(num_updates=self.num_updates)
        return loss.detach(), logits.detach().argmax(dim=1), grad_norm.detach()

    # -- epochs ---------------------------------------------------------------------------------
    def train_epoch(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], epoch: int,
                    progress: bool = False) -> dict[str, Any]:
        """Train on every batch; metrics over all ranks, read from the device once at the end.

        Accuracy and F1 compare predictions on the (possibly mixed) inputs with the original
        labels, so with MixUp they are a lower bound of clean training accuracy.
        """
        self.set_backbone_frozen(epoch < self.cfg.freeze_backbone_epochs)
        self.model.train()
        lrs = self.lrs()
        losses, preds, targets, norms, sizes = [], [], [], [], []
        start = time.perf_counter()
        total = len(batches) if hasattr(batches, "__len__") else None
        for x, y in tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
                         disable=not progress, leave=False):
            loss, pred, grad_norm = self.train_step(x, y)
            losses.append(loss)
            preds.append(pred)
            norms.append(grad_norm)
            targets.append(y)
            sizes.append(len(y))
        if not losses:
            raise DataError("the training loader yielded no batches (empty train split?)")
        loss_sum = float((torch.stack(losses).float().cpu() * torch.tensor(sizes)).sum())
        local = (loss_sum, torch.cat(preds).cpu().numpy(), torch.cat(targets).numpy(),
                 torch.stack(norms).float().cpu().numpy())
        elapsed = time.perf_counter() - start
        parts = all_gather(local, self.env)
        y_pred = np.concatenate([p[1] for p in parts])
        y_true = np.concatenate([p[2] for p in parts])
        norms_all = np.concatenate([p[3] for p in parts])
        m = classification_metrics(y_true, y_pred, self.classes)
        return {
            "loss": sum(p[0] for p in parts) / len(y_true), "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"], "grad_norm_mean": float(norms_all.mean()),
            "grad_norm_max": float(norms_all.max()), "epoch_time_s": elapsed,
            "images_per_s": len(y_true) / elapsed, "images": len(y_true), "lr": lrs,
            "backbone_frozen": bool(self.backbone_frozen),
        }

    def validate(self, loader: DataLoader) -> dict[str, Any]:
        """Metrics of :attr:`eval_model` on this rank's shard, gathered over all ranks.

        The loss is plain cross-entropy (no weights, no smoothing), comparable across experiments
        that change those knobs.
        """
        logits, y = predict_logits(self.eval_model, loader, self.device, self.amp_dtype)
        parts = [p for p in all_gather((logits, y), self.env) if len(p[1])]
        logits = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        self.model.train()
        m = classification_metrics(y, logits.argmax(axis=1), self.classes)
        m["loss"] = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)))
        m["n"] = len(y)
        return m

    def end_epoch(self, epoch: int, metric: float) -> None:
        """Per-epoch schedule step (a no-op for per-update schedules)."""
        self.scheduler.step(epoch + 1, metric)

    def weight_norm(self) -> float:
        return float(nn.utils.get_total_norm(list(self.model.parameters())))

    # -- resumable state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict[str, Any], epoch: int) -> None:
        """Restore a :meth:`state_dict`; the learning-rate schedule follows the current params.

        timm schedules are functions of (epoch, update), so they are re-evaluated at the resume
        point instead of restored: raising ``train.epochs`` then stretches the cosine to the new
        length. Only ``plateau`` keeps real state and is restored.
        """
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.num_updates = int(state["num_updates"])
        if self.cfg.scheduler == "plateau":
            self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.step(epoch)
        self.scheduler.step_update(num_updates=self.num_updates)


# -- the stage -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainPaths:
    """Inputs and outputs of the train stage (defaults in ``stages/train.py`` match dvc.yaml)."""

    train_csv: Path
    val_csv: Path
    label_map: Path
    class_weights: Path
    best: Path
    state: Path
    live_dir: Path
    root: Path = Path(".")


Batches = DataLoader | BatchIterator


def _loaders(cfg: TrainConfig, params: Params, paths: TrainPaths, classes: list[str],
             env: DistEnv, device: torch.device) -> tuple[Batches, Batches]:
    pre = Preprocess.from_params(params)
    train_frame = read_split(paths.train_csv, classes)
    val_frame = read_split(paths.val_csv, classes)
    train_ds = FaceDataset(train_frame, classes, pre, root=paths.root, augment=cfg.train_augment,
                           seed=params.seed)
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


def _memory_loaders(cfg: TrainConfig, params: Params, train_ds: FaceDataset,
                    val_ds: FaceDataset, env: DistEnv, device: torch.device
                    ) -> tuple[BatchIterator, BatchIterator]:
    """Both splits decoded once; train batches augmented as whole tensors."""
    pre = train_ds.preprocess
    augment = (BatchAugment(AugmentConfig.from_params(params), torch.device("cpu"))
               if cfg.train_augment else None)
    common = {"preprocess": pre, "batch_size": cfg.batch_size, "rank": env.rank,
              "world_size": env.world_size, "channels_last": cfg.channels_last}
    train = BatchIterator(load_split(train_ds.paths, pre, "decode train"), train_ds.targets,
                          shuffle=True, augment=augment, drop_last=True, seed=params.seed,
                          **common)
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
        worker_init_fn=_seed_worker, pin_memory=device.type == "cuda",
        persistent_workers=cfg.num_workers > 0)
    val_loader = DataLoader(Subset(val_ds, range(env.rank, len(val_ds), env.world_size)),
                            batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    return train_loader, val_loader


def _seed_epoch(seed: int, epoch: int, env: DistEnv, loader: Batches) -> None:
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


def _save_state(path: Path, trainer: Trainer, stopper: EarlyStopping, next_epoch: int,
                cfg: TrainConfig, version: dict[str, str]) -> None:
    """Write the resumable state atomically, so an interrupt never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"epoch": next_epoch, "model_name": cfg.model, "config": asdict(cfg),
                "trainer": trainer.state_dict(), "early_stopping": stopper.state_dict(),
                "data_version": version}, tmp)
    os.replace(tmp, path)


def _load_state(path: Path, trainer: Trainer, stopper: EarlyStopping, cfg: TrainConfig,
                version: dict[str, str]) -> int:
    """Restore ``last.pt``; returns the epoch to continue with."""
    if not path.is_file():
        raise EmorecError(f"--resume: no training state at {path}; start without --resume")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["model_name"] != cfg.model:
        raise EmorecError(f"--resume: {path} holds a {state['model_name']} run but train.model is "
                          f"{cfg.model}; start without --resume")
    if state["data_version"] != version:
        log.warning("--resume: the training data changed since %s was written", path)
    epoch = int(state["epoch"])
    trainer.load_state_dict(state["trainer"], epoch)
    stopper.load_state_dict(state["early_stopping"])
    log.info("resuming after epoch %d (best val macro-F1 %.4f at epoch %d)", epoch,
             stopper.best, stopper.best_epoch + 1)
    return epoch


def _log_epoch(live: Any, epoch: int, train_m: dict[str, Any], val_m: dict[str, Any],
               trainer: Trainer, stopper: EarlyStopping) -> None:
    """One dvclive step per epoch (step = epoch index)."""
    live.step = epoch
    for split, m in (("train", train_m), ("val", val_m)):
        for key in ("loss", "accuracy", "macro_f1"):
            live.log_metric(f"{split}/{key}", m[key])
    for part, lr in train_m["lr"].items():
        live.log_metric(f"lr/{part}", lr)
    live.log_metric("time/epoch_s", train_m["epoch_time_s"])
    live.log_metric("time/images_per_s", train_m["images_per_s"])
    live.log_metric("norm/weight", trainer.weight_norm())
    live.log_metric("norm/grad_mean", train_m["grad_norm_mean"])
    live.log_metric("norm/grad_max", train_m["grad_norm_max"])
    live.log_metric("train/backbone_frozen", int(train_m["backbone_frozen"]))
    live.log_metric("data/train_images_per_epoch", train_m["images"], plot=False)
    live.log_metric("data/val_images", val_m["n"], plot=False)
    live.log_metric("best/val_macro_f1", stopper.best, plot=False)
    live.log_metric("best/epoch", stopper.best_epoch, plot=False)
    live.next_step()


def open_live(live_dir: Path, resume: bool) -> Any:
    """A dvclive logger that leaves dvc.yaml alone (the stage declares metrics and plots there).

    ``dvcyaml=False`` keeps dvclive from writing its own dvc.yaml; ``save_dvc_exp=False`` because
    experiments come from ``dvc exp run``. dvclive asks git for HEAD before checking that a commit
    exists (treeverse/dvclive#522), so in a fresh ``git init`` without commits (CI copies of the
    repo) it would crash; there it logs without the git integration instead.
    """
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    class _Live(Live):
        def _init_dvc(self) -> None:
            try:
                super()._init_dvc()
            except SCMError as err:
                log.warning("dvclive: %s; logging without git/DVC integration", err)
                self._dvc_file = self._init_dvc_file()
                self._save_dvc_exp = False

    return _Live(str(live_dir), resume=resume, dvcyaml=False, save_dvc_exp=False, report=None)


def fit(params: Params, paths: TrainPaths, resume: bool = False, env: DistEnv | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Train, validate every epoch, keep the best checkpoint; returns a summary (all ranks)."""
    env = env or DistEnv()
    cfg = TrainConfig.from_params(params)
    classes = params.classes
    check_label_map(paths.label_map, classes)
    device = device_for(env)
    seed_everything(params.seed)
    weights = (read_class_weights(paths.class_weights, classes) if cfg.use_class_weights
               else None)
    train_loader, val_loader = _loaders(cfg, params, paths, classes, env, device)
    model = create_model(cfg.model, num_classes=len(classes), pretrained=cfg.pretrained)
    trainer = Trainer(model, cfg, classes, weights, len(train_loader), device, env)
    stopper = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta)
    version = data_version([paths.train_csv, paths.val_csv, paths.label_map]
                           + ([paths.class_weights] if cfg.use_class_weights else []))
    start = _load_state(paths.state, trainer, stopper, cfg, version) if resume else 0
    live = open_live(paths.live_dir, resume) if env.is_main else None
    if env.is_main:
        log.info("precision: %s (%s)", trainer.precision.name, trainer.precision.reason)
        live.summary["precision"] = trainer.precision.name
    epochs_run = 0
    for epoch in range(start, cfg.epochs):
        if stopper.should_stop:
            break
        _seed_epoch(params.seed, epoch, env, train_loader)
        train_m = trainer.train_epoch(train_loader, epoch, progress=progress and env.is_main)
        val_m = trainer.validate(val_loader)
        improved = stopper.step(val_m["macro_f1"], epoch)
        trainer.end_epoch(epoch, val_m["macro_f1"])
        epochs_run += 1
        if env.is_main:
            _log_epoch(live, epoch, train_m, val_m, trainer, stopper)
            if improved:
                paths.best.parent.mkdir(parents=True, exist_ok=True)
                save_checkpoint(paths.best, trainer.eval_model, model_name=cfg.model,
                                classes=classes, image=dict(params.mapping("image")),
                                params=params.to_dict(), data_version=version, epoch=epoch,
                                metrics=val_m, world_size=env.world_size)
            _save_state(paths.state, trainer, stopper, epoch + 1, cfg, version)
            log.info("epoch %d/%d: train loss %.4f f1 %.3f | val loss %.4f acc %.3f f1 %.3f%s "
                     "| %.1f img/s on %d process(es)", epoch + 1, cfg.epochs, train_m["loss"],
                     train_m["macro_f1"], val_m["loss"], val_m["accuracy"], val_m["macro_f1"],
                     " *" if improved else "", train_m["images_per_s"], env.world_size)
    if stopper.should_stop and env.is_main:
        log.info("early stopping: no val macro-F1 gain for %d epochs (best %.4f at epoch %d)",
                 stopper.bad_epochs, stopper.best, stopper.best_epoch + 1)
    if live is not None:
        live.end()
    if env.enabled:
        dist.barrier()
    if not paths.best.is_file():
        raise EmorecError(f"no best checkpoint at {paths.best}; train without --resume")
    return {"epochs_run": epochs_run, "start_epoch": start, "best_epoch": stopper.best_epoch,
            "precision": trainer.precision.name,
            "best_val_macro_f1": stopper.best, "stopped_early": stopper.should_stop}


def run(params: Params, paths: TrainPaths, resume: bool = False, progress: bool = True
        ) -> dict[str, Any]:
    """:func:`fit` inside the process group when started by ``torchrun``."""
    env = init_distributed()
    try:
        return fit(params, paths, resume=resume, env=env, progress=progress)
    finally:
        if env.enabled:
            dist.destroy_process_group()

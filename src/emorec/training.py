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

Runs survive interruption. Every epoch the full resumable state goes to ``last.pt`` (written
atomically, with a content checksum), and SIGINT/SIGTERM stop the loop after the current step
with the state of the unfinished epoch saved too. A new run continues that state when it was
written under the same fingerprint (the stage's params except ``train.epochs``, data md5s, code
md5s, number of processes) and starts from epoch 1, saying why in one log line, otherwise.
Random generators are re-seeded from ``(seed, epoch, rank)`` at the start of each epoch and an
unfinished epoch replays its batches and restores the generator states saved at the stop, so a
resumed run gives the results of an uninterrupted one. The dvclive log is rebuilt from the
per-epoch records kept in the state, so its step series has no gaps or repeats.

Data that fits in memory (``train.in_memory``) is decoded once and augmented in whole batches
(:mod:`emorec.memory_data`); larger sets stream from files through a ``DataLoader``.

The per-step code avoids host synchronisation: losses, predictions and gradient norms stay on
the device and are read once per epoch (see ``benchmarks/train_throughput.py``).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset, get_worker_info
from tqdm import tqdm

from emorec.callbacks import EarlyStopping
from emorec.camera_augment import CameraAugment, CameraConfig
from emorec.cli import Interrupted
from emorec.config import Params
from emorec.data import FaceDataset, soft_targets
from emorec.errors import DataError, EmorecError, ParamsError
from emorec.evaluation import predict_logits
from emorec.labels import read_label_map
from emorec.losses import LOSSES, build_loss, use_cosine_classifier
from emorec.memory_data import (
    AugmentConfig,
    BatchAugment,
    BatchIterator,
    fits_in_memory,
    load_split,
)
from emorec.metrics import classification_metrics
from emorec.models import create_model, replacing, save_checkpoint, temp_path
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
    loss: str
    focal_gamma: float
    ldam_max_margin: float
    ldam_scale: float
    drw_at: float | None
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
            loss=t.choice("loss", LOSSES),
            focal_gamma=t.number("loss_options.focal_gamma", low=0),
            ldam_max_margin=t.number("loss_options.ldam_max_margin", low=0),
            ldam_scale=t.number("loss_options.ldam_scale", low=1e-6),
            drw_at=(None if t.get("loss_options.drw_at") is None
                    else t.number("loss_options.drw_at", low=0, high=1)),
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


def effective_freeze_epochs(cfg: TrainConfig) -> int:
    """Head warm-up epochs: none without pretrained weights, where a frozen random backbone
    would only waste the epochs (the warm-up protects *learned* features from a random head)."""
    return cfg.freeze_backbone_epochs if cfg.pretrained != "none" else 0


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
def make_criterion(cfg: TrainConfig, class_counts: Sequence[int], weight: torch.Tensor | None
                   ) -> nn.Module:
    """``train.loss`` from :mod:`emorec.losses`: weighted soft-target CE, focal or LDAM-DRW.

    Every one takes the soft targets of label smoothing and MixUp. LDAM brings its own deferred
    class-balanced weights (from ``drw_at`` x epochs on), so ``class_weights.json`` is not
    applied on top of it.
    """
    drw_epoch = None if cfg.drw_at is None else int(round(cfg.drw_at * cfg.epochs))
    return build_loss(cfg.loss, class_counts, None if cfg.loss == "ldam" else weight,
                      focal_gamma=cfg.focal_gamma, ldam_max_margin=cfg.ldam_max_margin,
                      ldam_scale=cfg.ldam_scale, drw_epoch=drw_epoch)


def class_counts_of(targets: np.ndarray, num_classes: int) -> list[int]:
    """Train images per class, in class order (LDAM's margins and DRW weights)."""
    return np.bincount(np.asarray(targets), minlength=num_classes).tolist()


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


def rng_state() -> dict[str, Any]:
    """The global generators a training step draws from (MixUp, dropout, random erasing)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class EpochProgress:
    """A training epoch's running results: what a stop in the middle of the epoch saves.

    ``rng`` holds the global generator states right after the last step, so a resumed epoch
    (which replays its first ``batches`` from the loader, whose own generators are re-seeded
    per epoch) draws exactly the numbers the uninterrupted epoch would have drawn.
    """

    epoch: int
    lrs: dict[str, float]
    batches: int = 0
    elapsed: float = 0.0
    losses: list[torch.Tensor] = field(default_factory=list)
    preds: list[torch.Tensor] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)
    norms: list[torch.Tensor] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    rng: dict[str, Any] | None = None

    def add(self, loss: torch.Tensor, pred: torch.Tensor, grad_norm: torch.Tensor,
            y: torch.Tensor) -> None:
        self.losses.append(loss)
        self.preds.append(pred)
        self.norms.append(grad_norm)
        self.targets.append(y)
        self.sizes.append(len(y))
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        """Plain CPU values (device tensors are read once here, at the stop)."""
        state = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("losses", "preds", "norms", "targets"):
            state[key] = [t.cpu() for t in state[key]]
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> EpochProgress:
        progress = cls(**state)
        for key in ("losses", "preds", "norms"):
            setattr(progress, key, [t.to(device) for t in getattr(progress, key)])
        return progress


class EpochInterrupted(Exception):
    """A stop request ended :meth:`Trainer.train_epoch` after a step; carries the progress."""

    def __init__(self, progress: EpochProgress):
        super().__init__(f"epoch {progress.epoch + 1} stopped after step {progress.batches}")
        self.progress = progress


def _skip(batches: Iterator[Any], n: int) -> None:
    """Draw and drop ``n`` batches: the loader's generators then stand where the stop left them."""
    for _ in range(n):
        next(batches)


class Trainer:
    """Model, optimizer, schedule, EMA, MixUp and mixed precision; one ``train_step`` per batch."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, classes: Sequence[str],
                 class_weights: torch.Tensor | None, updates_per_epoch: int,
                 device: torch.device, env: DistEnv | None = None,
                 class_counts: Sequence[int] | None = None):
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
        self.criterion = make_criterion(cfg, class_counts or [1] * self.num_classes,
                                        weight).to(device)
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

        timm mixes pairs within the batch, so an odd-sized batch is left unmixed. Distributions
        (``y`` of shape ``[B, C]``, FER+ votes) are mixed with the images' own weight and get no
        further smoothing.
        """
        mix = self.mixup is not None and x.shape[0] % 2 == 0
        if y.ndim == 2:
            if not mix:
                return x, y
            lam = self.mixup._mix_batch(x)  # mixes x in place, as timm's __call__ does
            return x, y * lam + y.flip(0) * (1.0 - lam)
        if mix:
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
                    progress: bool = False, should_stop: Callable[[int], bool] | None = None,
                    resume_from: EpochProgress | None = None) -> dict[str, Any]:
        """Train on every batch; metrics over all ranks, read from the device once at the end.

        Accuracy and F1 compare predictions on the (possibly mixed) inputs with the original
        labels, so with MixUp they are a lower bound of clean training accuracy.

        ``should_stop(steps done)`` is asked after every step; when it says yes the epoch ends
        with :class:`EpochInterrupted`. ``resume_from`` continues such an epoch: the batches it
        had trained on are drawn again and dropped, then its generator states are restored.
        """
        self.set_backbone_frozen(epoch < effective_freeze_epochs(self.cfg))
        if hasattr(self.criterion, "set_epoch"):  # LDAM-DRW switches its weights on by epoch
            self.criterion.set_epoch(epoch)
        self.model.train()
        run = resume_from or EpochProgress(epoch, self.lrs())
        batch_iter = iter(batches)
        if resume_from is not None:
            _skip(batch_iter, run.batches)
            set_rng_state(run.rng)
        start = time.perf_counter()
        total = len(batches) if hasattr(batches, "__len__") else None
        for x, y in tqdm(batch_iter, total=total, initial=run.batches, disable=not progress,
                         desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False):
            run.add(*self.train_step(x, y), y if y.ndim == 1 else y.argmax(dim=1))
            if should_stop is not None and should_stop(run.batches):
                run.elapsed += time.perf_counter() - start
                run.rng = rng_state()
                raise EpochInterrupted(run)
        run.elapsed += time.perf_counter() - start
        return self._epoch_metrics(run)

    def _epoch_metrics(self, run: EpochProgress) -> dict[str, Any]:
        """Loss, accuracy, macro-F1 and gradient norms of a finished epoch, over all ranks."""
        if not run.losses:
            raise DataError("the training loader yielded no batches (empty train split?)")
        loss_sum = float((torch.stack(run.losses).float().cpu() * torch.tensor(run.sizes)).sum())
        local = (loss_sum, torch.cat(run.preds).cpu().numpy(), torch.cat(run.targets).numpy(),
                 torch.stack(run.norms).float().cpu().numpy())
        parts = all_gather(local, self.env)
        y_pred = np.concatenate([p[1] for p in parts])
        y_true = np.concatenate([p[2] for p in parts])
        norms_all = np.concatenate([p[3] for p in parts])
        m = classification_metrics(y_true, y_pred, self.classes)
        return {
            "loss": sum(p[0] for p in parts) / len(y_true), "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"], "grad_norm_mean": float(norms_all.mean()),
            "grad_norm_max": float(norms_all.max()), "epoch_time_s": run.elapsed,
            "images_per_s": len(y_true) / run.elapsed, "images": len(y_true), "lr": run.lrs,
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
    #: files besides :data:`CODE_MODULES` whose md5 is part of the resume fingerprint
    code: tuple[Path, ...] = ()


Batches = DataLoader | BatchIterator


def _loaders(cfg: TrainConfig, params: Params, paths: TrainPaths, classes: list[str],
             env: DistEnv, device: torch.device) -> tuple[Batches, Batches]:
    pre = Preprocess.from_params(params)
    train_frame = read_split(paths.train_csv, classes)
    val_frame = read_split(paths.val_csv, classes)
    train_ds = FaceDataset(train_frame, classes, pre, root=paths.root, augment=cfg.train_augment,
                           seed=params.seed,
                           soft=soft_targets(train_frame, classes, cfg.label_smoothing))
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


def _targets(loader: Batches) -> np.ndarray:
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


# -- resumable runs ------------------------------------------------------------------------------
#: Params sections the train stage reads (its ``params:`` in dvc.yaml).
STAGE_PARAMS = ("seed", "classes", "image", "train")
#: Params that may differ between a saved run and the run continuing it: schedules are functions
#: of (epoch, update) re-evaluated at the resume point (:meth:`Trainer.load_state_dict`), so more
#: epochs extend a run instead of invalidating it.
RESUMABLE_CHANGES = frozenset({"train.epochs"})
#: The train stage's code deps in dvc.yaml (tests/test_resume.py keeps the lists equal); the
#: stage script adds itself through ``TrainPaths.code``.
CODE_MODULES = ("emorec.splits", "emorec.training", "emorec.callbacks", "emorec.evaluation",
                "emorec.precision", "emorec.memory_data", "emorec.losses", "emorec.models",
                "emorec.data", "emorec.transforms", "emorec.camera_augment")
#: Layout version of the state file; a state of another layout is not resumed.
STATE_FORMAT = 2
#: Under DDP the ranks agree on a stop request every this many steps (one all-reduce each).
DDP_STOP_POLL = 10


class StateError(Exception):
    """A saved training state that cannot be continued; the message says why."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as dotted keys (``{"train.lr_head": 0.003}``), to name what changed."""
    if isinstance(tree, dict) and tree:
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.removesuffix("."): tree}


def code_version(extra: Iterable[str | Path] = ()) -> dict[str, str]:
    """``{module or file name: md5}`` of the code a training run's results depend on."""
    files = {name: Path(importlib.import_module(name).__file__) for name in CODE_MODULES}
    files.update({Path(p).name: Path(p) for p in extra})
    return {name: file_md5(path) for name, path in files.items()}


def run_fingerprint(params: Params, version: dict[str, str], code: Iterable[str | Path] = (),
                    world_size: int = 1) -> dict[str, Any]:
    """What a run's results depend on; a state is continued only under an equal fingerprint.

    The values themselves rather than one hash, so a refusal can name what changed.
    """
    raw = params.to_dict()
    flat = _flatten({key: raw.get(key) for key in STAGE_PARAMS})
    return {"params": {k: v for k, v in flat.items() if k not in RESUMABLE_CHANGES},
            "data": dict(version), "code": code_version(code), "world_size": world_size}


def _names(keys: Sequence[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def fingerprint_change(saved: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Why a state written under ``saved`` cannot continue under ``current``; None if it can."""
    missing = object()
    for part, label in (("params", "params"), ("data", "training data"), ("code", "code")):
        old, new = saved.get(part, {}), current[part]
        changed = sorted(k for k in old.keys() | new.keys()
                         if old.get(k, missing) != new.get(k, missing))
        if changed:
            return f"{label} changed ({_names(changed)})"
    if saved.get("world_size") != current["world_size"]:
        return (f"it was written by {saved.get('world_size')} process(es), this run has "
                f"{current['world_size']}")
    return None


def state_digest(obj: Any) -> str:
    """SHA-256 of a state's content (tensors by their bytes), independent of its pickling.

    ``torch.load`` notices a truncated or garbled archive but not flipped bytes inside tensor
    data; comparing this digest with the one stored at save time does.
    """
    digest = hashlib.sha256()
    _feed(digest, obj)
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        flat = obj.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{flat.dtype}{tuple(obj.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())
    elif isinstance(obj, np.ndarray):
        digest.update(f"A{obj.dtype}{obj.shape}".encode())
        digest.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        digest.update(b"{")
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
        digest.update(b"}")
    elif isinstance(obj, (list, tuple)):
        digest.update(b"[" if isinstance(obj, list) else b"(")
        for item in obj:
            _feed(digest, item)
        digest.update(b"]")
    else:
        digest.update(f"{type(obj).__name__}:{obj!r};".encode())


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write a state with its content digest, atomically (temp file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as fobj:
        torch.save({**state, "checksum": state_digest(state)}, fobj)


def read_state(path: Path) -> dict[str, Any]:
    """A state written by :func:`save_state`; :class:`StateError` when it cannot be trusted."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a damaged archive fails in many ways (zip, pickle, unicode, EOF)
        detail = str(err).splitlines()[0] if str(err) else ""
        raise StateError(f"unreadable ({type(err).__name__}: {detail})") from err
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise StateError("written by another version of the train stage")
    stored = state.pop("checksum", None)
    if stored != state_digest(state):
        raise StateError("checksum mismatch, the file is damaged")
    return state


@dataclass
class RunLog:
    """What the state keeps besides the trainer: the run's identity, one record per finished
    epoch (to rebuild the dvclive log) and the md5 of the best checkpoint saved so far."""

    fingerprint: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    best_md5: str | None = None


def _state(trainer: Trainer, stopper: EarlyStopping, epoch: int, cfg: TrainConfig,
           run_log: RunLog, partial: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The resumable state after ``epoch`` finished epochs (``partial``: every rank's progress in
    the next, unfinished one)."""
    return {"format": STATE_FORMAT, "epoch": epoch, "model_name": cfg.model,
            "config": asdict(cfg), "fingerprint": run_log.fingerprint,
            "trainer": trainer.state_dict(), "early_stopping": stopper.state_dict(),
            "history": run_log.history, "best_md5": run_log.best_md5, "partial": partial}


def resumable_state(paths: TrainPaths, cfg: TrainConfig, fingerprint: dict[str, Any]
                    ) -> dict[str, Any] | None:
    """The saved state this run continues, or None (saying why in one line) to start afresh."""
    if not paths.state.is_file():
        return None
    try:
        state = read_state(paths.state)
        _check_resumable(state, cfg, fingerprint, paths.best)
    except StateError as err:
        log.warning("not resuming from %s: %s; training starts at epoch 1", paths.state, err)
        return None
    return state


def _check_resumable(state: dict[str, Any], cfg: TrainConfig, fingerprint: dict[str, Any],
                     best: Path) -> None:
    change = fingerprint_change(state["fingerprint"], fingerprint)
    if change:
        raise StateError(change)
    done, unfinished = int(state["epoch"]), state["partial"] is not None
    if done > cfg.epochs or (unfinished and done >= cfg.epochs):
        raise StateError(f"it is {done} epochs into its run and train.epochs is now {cfg.epochs}")
    if state["best_md5"] and (not best.is_file() or file_md5(best) != state["best_md5"]):
        raise StateError(f"{best} is missing or not the checkpoint saved with it")


def _restore(state: dict[str, Any], trainer: Trainer, stopper: EarlyStopping, run_log: RunLog,
             cfg: TrainConfig, path: Path) -> tuple[int, list[dict[str, Any]] | None]:
    """Load a :func:`resumable_state`; returns (epoch to continue with, unfinished progress)."""
    epoch = int(state["epoch"])
    trainer.load_state_dict(state["trainer"], epoch)
    stopper.load_state_dict(state["early_stopping"])
    run_log.history, run_log.best_md5 = list(state["history"]), state["best_md5"]
    partial = state["partial"]
    where = (f"in epoch {epoch + 1}/{cfg.epochs} after step {partial[0]['batches']}"
             if partial else f"after epoch {epoch}/{cfg.epochs}")
    best = (f"; best val macro-F1 {stopper.best:.4f} at epoch {stopper.best_epoch + 1}"
            if stopper.best_epoch >= 0 else "")
    log.info("resuming %s from %s%s", where, path, best)
    return epoch, partial


def _clear_outputs(paths: TrainPaths, fresh: bool) -> None:
    """Remove temp files a crash left; before a fresh start also the old state and best model."""
    for path in (paths.state, paths.best):
        temp_path(path).unlink(missing_ok=True)
        if fresh:
            path.unlink(missing_ok=True)


class StopSignal:
    """SIGINT/SIGTERM ask the training loop to stop at the next step instead of killing it.

    The handler only records the signal (logging from a handler can re-enter a stream write);
    the loop polls :meth:`requested` between steps, saves the state and raises
    :class:`Interrupted`. Under DDP all ranks take part in an all-reduce of the flag so they stop
    after the same step; that collective is also a host sync on CUDA, so it runs every
    ``DDP_STOP_POLL`` steps. Repeated signals change nothing: torchrun forwards the terminal's
    SIGINT to workers that already got it. Handlers are only installed in the main thread.
    """

    def __init__(self, env: DistEnv, device: torch.device):
        self.env, self.device = env, device
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _record(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    def requested(self, steps: int | None = None) -> bool:
        """Whether to stop now (``steps``: steps done in this epoch, for the DDP poll rate)."""
        if not self.env.enabled:
            return self.signum is not None
        if steps is not None and steps % DDP_STOP_POLL:
            return False
        flag = torch.tensor([self.signum or 0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.signum = int(flag.item()) or None
        return self.signum is not None

    def interrupted(self, where: str, state: Path) -> Interrupted:
        """The error that ends the stage (the stage prints it as its one last line)."""
        name = signal.Signals(self.signum).name
        return Interrupted(self.signum, f"{name} {where}; training state saved to {state}, "
                                        "run `dvc repro` to resume")


def _save_stopped(paths: TrainPaths, trainer: Trainer, stopper: EarlyStopping, cfg: TrainConfig,
                  run_log: RunLog, progress: EpochProgress, env: DistEnv) -> None:
    """Save the state with every rank's unfinished epoch (rank 0 writes it)."""
    parts = all_gather(progress.state_dict(), env)
    if env.is_main:
        save_state(paths.state, _state(trainer, stopper, progress.epoch, cfg, run_log, parts))
    if env.enabled:
        dist.barrier()


# -- dvclive -------------------------------------------------------------------------------------
#: Metrics written to metrics.json only, without a per-epoch plot.
SUMMARY_ONLY = frozenset({"data/train_images_per_epoch", "data/val_images",
                          "best/val_macro_f1", "best/epoch"})


def _epoch_record(train_m: dict[str, Any], val_m: dict[str, Any], trainer: Trainer,
                  stopper: EarlyStopping) -> dict[str, float]:
    """What dvclive logs for one epoch, as plain numbers (kept in the state to rebuild the log)."""
    record = {f"{split}/{key}": m[key] for split, m in (("train", train_m), ("val", val_m))
              for key in ("loss", "accuracy", "macro_f1")}
    record.update({f"lr/{part}": lr for part, lr in train_m["lr"].items()})
    record.update({
        "time/epoch_s": train_m["epoch_time_s"], "time/images_per_s": train_m["images_per_s"],
        "norm/weight": trainer.weight_norm(), "norm/grad_mean": train_m["grad_norm_mean"],
        "norm/grad_max": train_m["grad_norm_max"],
        "train/backbone_frozen": int(train_m["backbone_frozen"]),
        "data/train_images_per_epoch": train_m["images"], "data/val_images": val_m["n"],
        "best/val_macro_f1": stopper.best, "best/epoch": stopper.best_epoch,
    })
    return record


def _log_record(live: Any, step: int, record: dict[str, float]) -> None:
    """One dvclive step (step = epoch index)."""
    live.step = step
    for name, value in record.items():
        live.log_metric(name, value, plot=name not in SUMMARY_ONLY)
    live.next_step()


def open_live(live_dir: Path, history: Sequence[dict[str, float]] = ()) -> Any:
    """A dvclive logger on a cleared ``live_dir`` with ``history`` logged as steps 0, 1, ...

    A resumed run rebuilds the log from the records in its state rather than appending to what
    the interrupted run left: a stop can fall between two metrics of a step or after the log but
    before the state, and rebuilding leaves no repeated or missing steps. ``metrics.json`` is
    written atomically (dvclive's tsv rows are appended one line per write).

    ``dvcyaml=False`` keeps dvclive from writing its own dvc.yaml; ``save_dvc_exp=False`` because
    experiments come from ``dvc exp run``. dvclive asks git for HEAD before checking that a commit
    exists (treeverse/dvclive#522), so in a fresh ``git init`` without commits (CI copies of the
    repo) it would crash; there it logs without the git integration instead.
    """
    from dvclive import Live
    from dvclive.plots import NumpyEncoder
    from scmrepo.exceptions import SCMError

    class _Live(Live):
        def _init_dvc(self) -> None:
            try:
                super()._init_dvc()
            except SCMError as err:
                log.warning("dvclive: %s; logging without git/DVC integration", err)
                self._dvc_file = self._init_dvc_file()
                self._save_dvc_exp = False

        def make_summary(self) -> None:  # dvclive's, through a temp file renamed into place
            if self._step is not None:
                self.summary["step"] = self.step
            text = json.dumps(self.summary, indent=4, cls=NumpyEncoder) + "\n"
            with replacing(self.metrics_file) as fobj:
                fobj.write(text.encode())

    live = _Live(str(live_dir), resume=False, dvcyaml=False, save_dvc_exp=False, report=None)
    for step, record in enumerate(history):
        _log_record(live, step, record)
    return live


# -- the loop ------------------------------------------------------------------------------------
def fit(params: Params, paths: TrainPaths, resume: bool = True, env: DistEnv | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Train, validate every epoch, keep the best checkpoint; returns a summary (all ranks).

    A saved state written under this run's fingerprint is continued (``resume=False``: never);
    otherwise training starts at epoch 1 and the old state and best checkpoint are removed.
    SIGINT/SIGTERM during the epochs save the state and raise :class:`Interrupted`.
    """
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
    if cfg.loss == "ldam":  # LDAM's margins live on cosine logits
        use_cosine_classifier(model, cfg.ldam_scale)
    counts = class_counts_of(_targets(train_loader), len(classes))
    trainer = Trainer(model, cfg, classes, weights, len(train_loader), device, env, counts)
    stopper = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta)
    version = data_version([paths.train_csv, paths.val_csv, paths.label_map]
                           + ([paths.class_weights] if cfg.use_class_weights else []))
    run_log = RunLog(run_fingerprint(params, version, paths.code, env.world_size))
    state = resumable_state(paths, cfg, run_log.fingerprint) if resume else None
    if env.enabled:
        dist.barrier()  # every rank has read the state before rank 0 may remove it
    if env.is_main:
        _clear_outputs(paths, fresh=state is None)
    start, partial = (_restore(state, trainer, stopper, run_log, cfg, paths.state) if state
                      else (0, None))
    del state
    live = open_live(paths.live_dir, run_log.history) if env.is_main else None
    if env.is_main:
        log.info("precision: %s (%s)", trainer.precision.name, trainer.precision.reason)
        live.summary["precision"] = trainer.precision.name
    epochs_run = 0
    with StopSignal(env, device) as stop:
        for epoch in range(start, cfg.epochs):
            if stopper.should_stop:
                break
            if stop.requested():
                raise stop.interrupted(f"after epoch {epoch}/{cfg.epochs}", paths.state)
            _seed_epoch(params.seed, epoch, env, train_loader)
            unfinished = (EpochProgress.from_state(partial[env.rank], device)
                          if partial and epoch == start else None)
            try:
                train_m = trainer.train_epoch(train_loader, epoch, progress and env.is_main,
                                              should_stop=stop.requested,
                                              resume_from=unfinished)
            except EpochInterrupted as stopped:
                _save_stopped(paths, trainer, stopper, cfg, run_log, stopped.progress, env)
                raise stop.interrupted(f"in epoch {epoch + 1}/{cfg.epochs} after step "
                                       f"{stopped.progress.batches}/{len(train_loader)}",
                                       paths.state) from None
            val_m = trainer.validate(val_loader)
            improved = stopper.step(val_m["macro_f1"], epoch)
            trainer.end_epoch(epoch, val_m["macro_f1"])
            epochs_run += 1
            if env.is_main:
                record = _epoch_record(train_m, val_m, trainer, stopper)
                run_log.history.append(record)
                _log_record(live, epoch, record)
                if improved:
                    paths.best.parent.mkdir(parents=True, exist_ok=True)
                    save_checkpoint(paths.best, trainer.eval_model, model_name=cfg.model,
                                    classes=classes, image=dict(params.mapping("image")),
                                    params=params.to_dict(), data_version=version, epoch=epoch,
                                    metrics=val_m, world_size=env.world_size,
                                    cosine_head_scale=(cfg.ldam_scale if cfg.loss == "ldam"
                                                       else None))
                    run_log.best_md5 = file_md5(paths.best)
                save_state(paths.state, _state(trainer, stopper, epoch + 1, cfg, run_log))
                log.info("epoch %d/%d: train loss %.4f f1 %.3f | val loss %.4f acc %.3f f1 %.3f%s "
                         "| %.1f img/s on %d process(es)", epoch + 1, cfg.epochs,
                         train_m["loss"], train_m["macro_f1"], val_m["loss"], val_m["accuracy"],
                         val_m["macro_f1"], " *" if improved else "", train_m["images_per_s"],
                         env.world_size)
    if stopper.should_stop and env.is_main:
        log.info("early stopping: no val macro-F1 gain for %d epochs (best %.4f at epoch %d)",
                 stopper.bad_epochs, stopper.best, stopper.best_epoch + 1)
    if live is not None:
        live.end()
    if env.enabled:
        dist.barrier()
    if not paths.best.is_file():
        raise EmorecError(f"no best checkpoint at {paths.best}; train again with --fresh")
    return {"epochs_run": epochs_run, "start_epoch": start, "best_epoch": stopper.best_epoch,
            "precision": trainer.precision.name,
            "best_val_macro_f1": stopper.best, "stopped_early": stopper.should_stop}


def run(params: Params, paths: TrainPaths, resume: bool = True, progress: bool = True
        ) -> dict[str, Any]:
    """:func:`fit` inside the process group when started by ``torchrun``."""
    env = init_distributed()
    try:
        return fit(params, paths, resume=resume, env=env, progress=progress)
    finally:
        if env.enabled:
            dist.destroy_process_group()

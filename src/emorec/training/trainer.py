"""One model being trained: loss, optimizer groups, schedule, EMA, MixUp, mixed precision
(:class:`Trainer`) and an epoch's running results (:class:`EpochProgress`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from emorec.errors import DataError, EmorecError
from emorec.evaluation import predict_logits
from emorec.losses import build_loss
from emorec.metrics import classification_metrics
from emorec.precision import autocast, resolve_precision
from emorec.training.config import TrainConfig, effective_freeze_epochs
from emorec.training.distributed import DistEnv, all_gather, rng_state, set_rng_state


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
                      ldam_scale=cfg.ldam_scale, drw_epoch=drw_epoch, la_tau=cfg.la_tau)


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

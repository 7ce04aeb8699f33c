"""Training throughput: the project's training loop vs a bare timm loop (images/s, same run).

Both loops train the same timm model (same initial weights), on the same in-memory batches of
demo faces, with the same recipe from params.yaml (optimizer, AMP dtype, MixUp, label smoothing,
gradient clipping, EMA, per-update schedule), so the ratio measures only what the project adds
around the step: param groups, class weights, per-epoch metrics, norms, progress bookkeeping.
The bare loop is what timm's own ``train.py`` does per batch. Timings alternate between the two
loops (A B, B A, ...) so drifting machine load hits both; the headline ratio is the median of the
per-pair ratios. Data loading is excluded on purpose (identical for both, it is the DataLoader).

    python benchmarks/train_throughput.py            # writes reports/bench/train_throughput.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from emorec.config import load_params
from emorec.demo_faces import render_face
from emorec.evaluation import autocast
from emorec.models import create_model
from emorec.models import device as default_device
from emorec.training import TrainConfig, Trainer, seed_everything
from emorec.transforms import Preprocess

TARGET = 0.95


def make_batches(classes: list[str], pre: Preprocess, batch_size: int, n_batches: int,
                 seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rendered demo faces, preprocessed like training batches (float32 [B, 1, S, S])."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n_batches):
        y = rng.integers(0, len(classes), batch_size)
        x = np.stack([pre.normalize(render_face(classes[k], rng, size=pre.size)) for k in y])
        batches.append((torch.from_numpy(x), torch.from_numpy(y)))
    return batches


class BareLoop:
    """timm ``train.py``'s per-batch work, nothing else."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, num_classes: int,
                 updates_per_epoch: int, device: torch.device, amp_dtype: torch.dtype | None):
        self.model, self.device, self.amp_dtype, self.cfg = model.to(device), device, amp_dtype, cfg
        self.num_classes = num_classes
        self.optimizer = create_optimizer_v2(model, opt=cfg.optimizer, lr=cfg.lr_head,
                                             weight_decay=cfg.weight_decay)
        self.scheduler, _ = create_scheduler_v2(
            self.optimizer, sched=cfg.scheduler, num_epochs=cfg.epochs,
            warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr, min_lr=cfg.min_lr,
            step_on_epochs=cfg.scheduler_step == "epoch", updates_per_epoch=updates_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        self.mixup = Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha,
                           prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob,
                           label_smoothing=cfg.label_smoothing,
                           num_classes=num_classes) if cfg.mixup_active else None
        self.criterion = SoftTargetCrossEntropy()
        self.ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema else None
        self.updates = 0

    def epoch(self, batches) -> None:
        self.model.train()
        for x, y in batches:
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.mixup is not None:
                x, y = self.mixup(x, y)
            else:
                y = mixup_target(y, self.num_classes, smoothing=self.cfg.label_smoothing)
            with autocast(self.device, self.amp_dtype):
                loss = self.criterion(self.model(x), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.updates += 1
            if self.ema is not None:
                self.ema.update(self.model, step=self.updates)
            self.scheduler.step_update(num_updates=self.updates)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def measure(params_path: Path, steps: int, repeats: int, warmup: int,
            batch_size: int | None = None, model_name: str | None = None) -> dict[str, Any]:
    """Interleaved timings of both loops; returns the report dict."""
    params = load_params(params_path)
    cfg = TrainConfig.from_params(params)
    overrides = {k: v for k, v in {"batch_size": batch_size, "model": model_name}.items() if v}
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    classes, pre, dev = params.classes, Preprocess.from_params(params), default_device()
    seed_everything(params.seed)
    base = create_model(cfg.model, num_classes=len(classes))
    trainer = Trainer(copy.deepcopy(base), cfg, classes, torch.ones(len(classes)), steps, dev)
    bare = BareLoop(copy.deepcopy(base), cfg, len(classes), steps, dev, trainer.amp_dtype)
    batches = make_batches(classes, pre, cfg.batch_size, steps, params.seed)
    epoch = cfg.freeze_backbone_epochs  # the main phase: whole network trains in both loops

    def fresh():  # Mixup works in place: every run gets its own copies (cost equal for both)
        return ((x.clone(), y) for x, y in batches)

    def time_project() -> float:
        start = time.perf_counter()
        trainer.train_epoch(fresh(), epoch)
        return steps * cfg.batch_size / (time.perf_counter() - start)

    def time_bare() -> float:
        start = time.perf_counter()
        bare.epoch(fresh())
        return steps * cfg.batch_size / (time.perf_counter() - start)

    for _ in range(warmup):
        time_project()
        time_bare()
    project, plain = [], []
    for r in range(repeats):
        if r % 2 == 0:
            project.append(time_project())
            plain.append(time_bare())
        else:
            plain.append(time_bare())
            project.append(time_project())
    ratios = [p / b for p, b in zip(project, plain, strict=True)]
    ratio = statistics.median(ratios)
    return {
        "model": cfg.model, "device": str(dev), "torch_threads": torch.get_num_threads(),
        "batch_size": cfg.batch_size, "image_size": pre.size, "steps_per_repeat": steps,
        "repeats": repeats, "warmup_repeats": warmup,
        "recipe": {"optimizer": cfg.optimizer, "amp": str(trainer.amp_dtype), "mixup":
                   cfg.mixup_active, "ema": cfg.ema, "grad_clip": cfg.grad_clip,
                   "scheduler": f"{cfg.scheduler}/{cfg.scheduler_step}"},
        "project_images_per_s": statistics.median(project),
        "bare_images_per_s": statistics.median(plain),
        "project_images_per_s_runs": project, "bare_images_per_s_runs": plain,
        "ratio": ratio, "ratio_runs": ratios, "target": TARGET, "pass": ratio >= TARGET,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("reports/bench/train_throughput.json"))
    parser.add_argument("--steps", type=int, default=8, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each loop")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each loop first")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--model", default=None, help="default: train.model")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads; 0 keeps torch's default")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report = measure(args.params, args.steps, args.repeats, args.warmup, args.batch_size,
                     args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"project {report['project_images_per_s']:.1f} img/s, bare "
          f"{report['bare_images_per_s']:.1f} img/s, ratio {report['ratio']:.3f} "
          f"(target >= {TARGET}: {'pass' if report['pass'] else 'FAIL'}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

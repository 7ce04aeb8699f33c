"""Training throughput as users wait for it: the project's loop end to end vs a bare timm step.

* **project**: what ``dvc repro train`` runs per epoch - the in-memory data path (shuffled
  batches from a uint8 image array, per-image augmentation from ``train.augment``), then
  ``Trainer.train_epoch`` with the params.yaml recipe (precision from ``train.amp``, EMA,
  gradient clipping, label smoothing or MixUp, per-update schedule, per-epoch metrics).
* **bare**: the fastest plain timm step on the same model and hardware: ready-made float
  batches, AdamW, cross-entropy, nothing else; float32 or bf16 autocast, contiguous or
  channels-last, whichever of the four is fastest here (tried during warm-up).

Timings alternate (A B, B A, ...) so drifting machine load hits both; the headline ratio is the
median of the per-pair ratios. The report names the CPU, its cores and flags: a figure from one
CPU is no promise for another (bf16 and VNNI change everything).

    python benchmarks/train_throughput.py      # writes reports/bench/train_throughput.json

Writes reports/bench/train_throughput.json. Takes about 2 min on 2 cores (AMD EPYC).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2

from emorec.cli import script_parser
from emorec.config import Params, load_params
from emorec.demo_faces import render_face
from emorec.hardware import cpu_info, describe
from emorec.memory_data import AugmentConfig, BatchAugment, BatchIterator
from emorec.models import create_model
from emorec.models import device as default_device
from emorec.precision import autocast
from emorec.training import TrainConfig, Trainer, seed_everything
from emorec.transforms import Preprocess

TARGET = 0.9


def demo_images(classes: list[str], size: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rendered demo faces as uint8 ``[n, size, size]`` and their class indices."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(classes), n)
    return np.stack([render_face(classes[k], rng, size=size) for k in y]), y


class BareStep:
    """A plain timm training step: forward, cross-entropy, backward, AdamW. Nothing else."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device,
                 dtype: torch.dtype | None, channels_last: bool):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=fmt).train()
        self.optimizer = create_optimizer_v2(self.model, opt=cfg.optimizer, lr=cfg.lr_head,
                                             weight_decay=cfg.weight_decay)
        self.device, self.dtype, self.fmt = device, dtype, fmt
        self.smoothing = cfg.label_smoothing
        self.name = (f"{'float32' if dtype is None else 'bfloat16'}"
                     f"{', channels_last' if channels_last else ''}")

    def epoch(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for x, y in batches:
            x = x.to(self.device, memory_format=self.fmt)
            with autocast(self.device, self.dtype):
                loss = F.cross_entropy(self.model(x), y.to(self.device),
                                       label_smoothing=self.smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def images_per_s(run: Callable[[], None], images: int) -> float:
    start = time.perf_counter()
    run()
    return images / (time.perf_counter() - start)


def fastest_bare(base: torch.nn.Module, cfg: TrainConfig, device: torch.device,
                 batches: list[tuple[torch.Tensor, torch.Tensor]], images: int
                 ) -> tuple[BareStep, dict[str, float]]:
    """Every bare variant timed twice (the first run warms up); the fastest one is kept."""
    dtypes: list[torch.dtype | None] = [None, torch.bfloat16]
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        dtypes = [None]
    speeds, steps = {}, {}
    for dtype, channels_last in itertools.product(dtypes, (False, True)):
        step = BareStep(copy.deepcopy(base), cfg, device, dtype, channels_last)
        step.epoch(batches)
        speeds[step.name] = images_per_s(lambda s=step: s.epoch(batches), images)
        steps[step.name] = step
    return steps[max(speeds, key=speeds.get)], speeds


def measure(params: Params, steps: int, repeats: int, warmup: int,
            batch_size: int | None = None, model_name: str | None = None) -> dict[str, Any]:
    """Interleaved timings of both loops; returns the report dict."""
    cfg = TrainConfig.from_params(params)
    overrides = {k: v for k, v in {"batch_size": batch_size, "model": model_name}.items() if v}
    cfg = dataclasses.replace(cfg, **overrides)
    classes, pre, dev = params.classes, Preprocess.from_params(params), default_device()
    seed_everything(params.seed)
    base = create_model(cfg.model, num_classes=len(classes))
    n = steps * cfg.batch_size
    images, targets = demo_images(classes, pre.size, n, params.seed)

    loader = BatchIterator(images, targets, pre, cfg.batch_size, shuffle=True, drop_last=True,
                           augment=BatchAugment(AugmentConfig.from_params(params), dev)
                           if cfg.train_augment else None,
                           channels_last=cfg.channels_last, seed=params.seed)
    trainer = Trainer(copy.deepcopy(base), cfg, classes, torch.ones(len(classes)), steps, dev)
    epoch = cfg.freeze_backbone_epochs  # the main phase: the whole network trains
    bare_batches = list(BatchIterator(images, targets, pre, cfg.batch_size, shuffle=False))
    bare, variants = fastest_bare(base, cfg, dev, bare_batches, n)

    def time_project() -> float:
        return images_per_s(lambda: trainer.train_epoch(loader, epoch), n)

    def time_bare() -> float:
        return images_per_s(lambda: bare.epoch(bare_batches), n)

    for _ in range(warmup):
        time_project()
    project, plain = [], []
    for r in range(repeats):
        first, second = (time_project, time_bare) if r % 2 == 0 else (time_bare, time_project)
        a, b = first(), second()
        project.append(a if first is time_project else b)
        plain.append(b if first is time_project else a)
    ratios = [p / b for p, b in zip(project, plain, strict=True)]
    ratio = statistics.median(ratios)
    cpu = cpu_info()
    return {
        "model": cfg.model, "device": str(dev), "cpu": cpu, "hardware": describe(cpu),
        "batch_size": cfg.batch_size, "image_size": pre.size, "steps_per_repeat": steps,
        "repeats": repeats, "warmup_repeats": warmup,
        "project": {"precision": trainer.precision.name, "precision_reason":
                    trainer.precision.reason, "channels_last": cfg.channels_last,
                    "augment": dataclasses.asdict(AugmentConfig.from_params(params)),
                    "ema": cfg.ema, "mixup": cfg.mixup_active, "grad_clip": cfg.grad_clip},
        "bare": {"variant": bare.name, "variants_images_per_s": variants},
        "project_images_per_s": statistics.median(project),
        "bare_images_per_s": statistics.median(plain),
        "project_images_per_s_runs": project, "bare_images_per_s_runs": plain,
        "ratio": ratio, "ratio_runs": ratios, "target": TARGET, "pass": ratio >= TARGET,
    }


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("reports/bench/train_throughput.json"))
    parser.add_argument("--steps", type=int, default=10, help="batches per timed run")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each loop")
    parser.add_argument("--warmup", type=int, default=1, help="untimed project runs first")
    parser.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    parser.add_argument("--model", default=None, help="default: train.model")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads; 0 keeps torch's default")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report = measure(load_params(args.params), args.steps, args.repeats, args.warmup,
                     args.batch_size, args.model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['hardware']}: project {report['project_images_per_s']:.1f} img/s "
          f"({report['project']['precision']}), bare {report['bare_images_per_s']:.1f} img/s "
          f"({report['bare']['variant']}), ratio {report['ratio']:.3f} "
          f"(target >= {TARGET}: {'pass' if report['pass'] else 'FAIL'}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``train.amp: auto``: mixed precision only where the hardware computes bf16 natively."""

from __future__ import annotations

import copy

import torch

from emorec.config import Params
from emorec.models import create_model
from emorec.precision import CpuFeatures, resolve_precision
from emorec.training import TrainConfig, Trainer

CPU = torch.device("cpu")
NO_BF16 = CpuFeatures(avx512_bf16=False, amx=False)  # e.g. a Xeon with AVX-512F only


def test_auto_picks_float32_on_a_cpu_without_native_bf16():
    chosen = resolve_precision("auto", "bfloat16", CPU, NO_BF16)
    assert chosen.dtype is None and chosen.name == "float32"
    assert "no native bf16" in chosen.reason


def test_auto_picks_bf16_with_avx512_bf16_or_amx():
    for cpu in (CpuFeatures(avx512_bf16=True, amx=False), CpuFeatures(avx512_bf16=False,
                                                                        amx=True)):
        assert resolve_precision("auto", "bfloat16", CPU, cpu).dtype == torch.bfloat16


def test_explicit_settings_win_over_the_hardware():
    assert resolve_precision(False, "bfloat16", CPU, CpuFeatures(True, True)).dtype is None
    assert resolve_precision(True, "bfloat16", CPU, NO_BF16).dtype == torch.bfloat16
    # float16 autocast needs CUDA; on CPU bf16 is used instead, and said so
    forced = resolve_precision(True, "float16", CPU, NO_BF16)
    assert forced.dtype == torch.bfloat16 and "float16 needs CUDA" in forced.reason


def test_training_converges_in_float32_on_a_cpu_without_bf16(repo_params_raw, monkeypatch):
    """The Trainer on amp: auto, fed a no-bf16 CPU, trains in float32 and learns."""
    monkeypatch.setattr(CpuFeatures, "detect", classmethod(lambda cls: NO_BF16))
    raw = copy.deepcopy(repo_params_raw)
    raw["train"].update(amp="auto", ema=False, warmup_epochs=0, freeze_backbone_epochs=0,
                        lr_head=3e-3, lr_backbone=3e-3, epochs=40)
    raw["train"]["mixup"]["enabled"] = False
    cfg = TrainConfig.from_params(Params(raw))
    torch.manual_seed(0)
    classes = ["a", "b"]
    trainer = Trainer(create_model("resnet10t", num_classes=2), cfg, classes, None, 1, CPU)
    assert trainer.precision.dtype is None
    x = torch.randn(16, 1, 16, 16)
    y = torch.arange(16) % 2
    x[y == 1] += 1.5  # two separable blobs
    first = trainer.train_step(x, y)[0].item()
    for _ in range(30):
        loss, pred, _ = trainer.train_step(x, y)
    assert loss.item() < first * 0.5
    assert (pred == y).float().mean() >= 0.9

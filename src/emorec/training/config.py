"""The train stage's settings: the ``train`` params section (:class:`TrainConfig`) and its
input and output paths (:class:`TrainPaths`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from timm.optim import list_optimizers

from emorec.config import Params
from emorec.errors import ParamsError
from emorec.losses import LOSSES

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
    la_tau: float
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
            la_tau=t.number("loss_options.la_tau", low=0),
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


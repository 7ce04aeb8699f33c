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

Modules: :mod:`~emorec.training.config` (``train`` params, stage paths),
:mod:`~emorec.training.distributed` (``torchrun`` process group, seeding),
:mod:`~emorec.training.loaders` (the two data paths), :mod:`~emorec.training.trainer` (the
:class:`Trainer`), :mod:`~emorec.training.state` (fingerprint, checksummed state, stop signals)
and :mod:`~emorec.training.stage` (:func:`fit`, :func:`run`, the dvclive log).
"""

from emorec.training.config import SCHEDULERS, TrainConfig, TrainPaths, effective_freeze_epochs
from emorec.training.distributed import (
    DistEnv,
    all_gather,
    derive_seed,
    device_for,
    init_distributed,
    rng_state,
    seed_everything,
    set_rng_state,
)
from emorec.training.loaders import Batches, check_label_map, make_loaders, read_class_weights
from emorec.training.stage import SUMMARY_ONLY, fit, open_live, run
from emorec.training.state import (
    CODE_MODULES,
    DDP_STOP_POLL,
    RESUMABLE_CHANGES,
    STAGE_PARAMS,
    STATE_FORMAT,
    RunLog,
    StateError,
    StopSignal,
    code_version,
    data_version,
    file_md5,
    fingerprint_change,
    read_state,
    resumable_state,
    run_fingerprint,
    save_state,
    state_digest,
)
from emorec.training.trainer import (
    EpochInterrupted,
    EpochProgress,
    Trainer,
    class_counts_of,
    make_criterion,
    param_groups,
)

__all__ = [
    "CODE_MODULES", "DDP_STOP_POLL", "RESUMABLE_CHANGES", "SCHEDULERS", "STAGE_PARAMS",
    "STATE_FORMAT", "SUMMARY_ONLY", "Batches", "DistEnv", "EpochInterrupted", "EpochProgress",
    "RunLog", "StateError", "StopSignal", "TrainConfig", "TrainPaths", "Trainer", "all_gather",
    "check_label_map", "class_counts_of", "code_version", "data_version", "derive_seed",
    "device_for", "effective_freeze_epochs", "file_md5", "fingerprint_change", "fit",
    "init_distributed", "make_criterion", "make_loaders", "open_live", "param_groups",
    "read_class_weights", "read_state", "resumable_state", "rng_state", "run", "run_fingerprint",
    "save_state", "seed_everything", "set_rng_state", "state_digest",
]

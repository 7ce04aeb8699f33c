"""The train stage's run: :func:`fit` (epochs, validation, best checkpoint, resumable
state), :func:`run` (inside a ``torchrun`` process group) and the dvclive log."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from emorec.callbacks import EarlyStopping
from emorec.config import Params
from emorec.errors import EmorecError
from emorec.losses import use_cosine_classifier
from emorec.models import create_model, replacing, save_checkpoint
from emorec.training.config import TrainConfig, TrainPaths
from emorec.training.distributed import DistEnv, device_for, init_distributed, seed_everything
from emorec.training.loaders import (
    check_label_map,
    make_loaders,
    read_class_weights,
    seed_epoch,
    train_targets,
)
from emorec.training.state import (
    RunLog,
    StopSignal,
    clear_outputs,
    data_version,
    file_md5,
    make_state,
    restore_state,
    resumable_state,
    run_fingerprint,
    save_state,
    save_stopped,
)
from emorec.training.trainer import EpochInterrupted, EpochProgress, Trainer, class_counts_of

log = logging.getLogger(__package__)  # "emorec.training", one name for the package


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
    train_loader, val_loader = make_loaders(cfg, params, paths, classes, env, device)
    model = create_model(cfg.model, num_classes=len(classes), pretrained=cfg.pretrained)
    if cfg.loss == "ldam":  # LDAM's margins live on cosine logits
        use_cosine_classifier(model, cfg.ldam_scale)
    counts = class_counts_of(train_targets(train_loader), len(classes))
    trainer = Trainer(model, cfg, classes, weights, len(train_loader), device, env, counts)
    stopper = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta)
    version = data_version([paths.train_csv, paths.val_csv, paths.label_map]
                           + ([paths.class_weights] if cfg.use_class_weights else []))
    run_log = RunLog(run_fingerprint(params, version, paths.code, env.world_size))
    state = resumable_state(paths, cfg, run_log.fingerprint) if resume else None
    if env.enabled:
        dist.barrier()  # every rank has read the state before rank 0 may remove it
    if env.is_main:
        clear_outputs(paths, fresh=state is None)
    start, partial = (restore_state(state, trainer, stopper, run_log, cfg, paths.state) if state
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
            seed_epoch(params.seed, epoch, env, train_loader)
            unfinished = (EpochProgress.from_state(partial[env.rank], device)
                          if partial and epoch == start else None)
            try:
                train_m = trainer.train_epoch(train_loader, epoch, progress and env.is_main,
                                              should_stop=stop.requested,
                                              resume_from=unfinished)
            except EpochInterrupted as stopped:
                save_stopped(paths, trainer, stopper, cfg, run_log, stopped.progress, env)
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
                save_state(paths.state, make_state(trainer, stopper, epoch + 1, cfg, run_log))
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

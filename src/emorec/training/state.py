"""Resumable runs: the fingerprint a saved state must match, the checksummed state file,
what a resume restores, and SIGINT/SIGTERM as a stop request (:class:`StopSignal`)."""

from __future__ import annotations

import hashlib
import importlib
import logging
import signal
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from emorec.callbacks import EarlyStopping
from emorec.cli import Interrupted
from emorec.config import Params
from emorec.models import replacing, temp_path
from emorec.training.config import TrainConfig, TrainPaths
from emorec.training.distributed import DistEnv, all_gather
from emorec.training.trainer import EpochProgress, Trainer

log = logging.getLogger(__package__)  # "emorec.training", one name for the package


# -- fingerprint -------------------------------------------------------------------------------
def file_md5(path: str | Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def data_version(paths: Iterable[str | Path]) -> dict[str, str]:
    """``{file: md5}`` of the inputs, stored in checkpoints to tell which data made a model."""
    return {str(p): file_md5(p) for p in paths}


# -- resumable runs ------------------------------------------------------------------------------
#: Params sections the train stage reads (its ``params:`` in dvc.yaml).
STAGE_PARAMS = ("seed", "classes", "image", "train")
#: Params that may differ between a saved run and the run continuing it: schedules are functions
#: of (epoch, update) re-evaluated at the resume point (:meth:`Trainer.load_state_dict`), so more
#: epochs extend a run instead of invalidating it.
RESUMABLE_CHANGES = frozenset({"train.epochs"})
#: The train stage's code deps in dvc.yaml (tests/test_resume.py keeps the lists equal); the
#: stage script adds itself through ``TrainPaths.code``.
#: Every module of this package is listed (dvc.yaml names the package folder).
CODE_MODULES = ("emorec.split_csv", "emorec.training", "emorec.training.config",
                "emorec.training.distributed", "emorec.training.loaders", "emorec.training.stage",
                "emorec.training.state", "emorec.training.trainer", "emorec.callbacks",
                "emorec.evaluation", "emorec.precision", "emorec.memory_data", "emorec.losses",
                "emorec.models", "emorec.data", "emorec.transforms", "emorec.camera_augment",
                "emorec.headline")
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


def make_state(trainer: Trainer, stopper: EarlyStopping, epoch: int, cfg: TrainConfig,
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


def restore_state(state: dict[str, Any], trainer: Trainer, stopper: EarlyStopping,
                  run_log: RunLog, cfg: TrainConfig, path: Path
                  ) -> tuple[int, list[dict[str, Any]] | None]:
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


def clear_outputs(paths: TrainPaths, fresh: bool) -> None:
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


def save_stopped(paths: TrainPaths, trainer: Trainer, stopper: EarlyStopping, cfg: TrainConfig,
                 run_log: RunLog, progress: EpochProgress, env: DistEnv) -> None:
    """Save the state with every rank's unfinished epoch (rank 0 writes it)."""
    parts = all_gather(progress.state_dict(), env)
    if env.is_main:
        save_state(paths.state, make_state(trainer, stopper, progress.epoch, cfg, run_log, parts))
    if env.enabled:
        dist.barrier()

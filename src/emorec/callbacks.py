"""Small stateful helpers of the training loop that must survive ``--resume``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EarlyStopping:
    """Stop when a metric that should grow (validation macro-F1) has not improved for a while.

    ``patience`` epochs without an improvement larger than ``min_delta`` end training; a
    patience of 0 disables stopping. The state is a plain dict so that it goes into the resumable
    ``last.pt`` and an interrupted run stops at the same epoch as an uninterrupted one.
    """

    patience: int
    min_delta: float = 0.0
    best: float = float("-inf")
    best_epoch: int = -1
    bad_epochs: int = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record this epoch's metric; returns True when it is a new best."""
        if value > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("best", "best_epoch", "bad_epochs"):
            setattr(self, key, state[key])

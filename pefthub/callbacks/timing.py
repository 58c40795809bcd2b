"""Wall-clock time of each optimiser step, logged as ``train/step_time_s``."""

from __future__ import annotations

import time

from lightning.pytorch import Callback, LightningModule, Trainer


class StepTimer(Callback):
    """Logs the wall time from the start of a training batch to its end (forward, backward
    and, on stepping batches, the optimiser step)."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        if self._start is not None:
            pl_module.log("train/step_time_s", time.perf_counter() - self._start, on_step=True, on_epoch=False)

"""ModelCheckpoint whose ``last.ckpt`` is always the latest state.

Since Lightning 2.6, ``ModelCheckpoint(monitor=..., save_last=True)`` rewrites ``last.ckpt``
only when a top-k checkpoint was saved in the same step, so after an epoch that did not
improve the monitored metric ``last.ckpt`` is stale and ``--ckpt_path last`` would silently
resume from an older state. This subclass writes ``last.ckpt`` at every save point.
Lightning writes checkpoints through an fsspec transaction (temporary file, then move), so a
kill during a save leaves the previous ``last.ckpt`` intact.
"""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) that also keeps ``last.ckpt`` current."""

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) and not self._should_save_on_train_epoch_end(trainer):
            if self._last_global_step_saved != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) and self._should_save_on_train_epoch_end(trainer):
            if self._last_global_step_saved != trainer.global_step:
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

"""ModelCheckpoint whose ``last.ckpt`` is always the latest state.

Since Lightning 2.6, ``ModelCheckpoint(monitor=..., save_last=True)`` rewrites ``last.ckpt``
only when a top-k checkpoint was saved in the same step, so after an epoch that did not
improve the monitored metric ``last.ckpt`` is stale and ``--ckpt_path last`` would silently
resume from an older state. This subclass writes ``last.ckpt`` at every save point.
Saves are atomic: Lightning's own write goes through an fsspec transaction whose temporary
file lives in the system temp folder and is *moved* into place, which is a copy (truncate, then
write) whenever that folder is on another filesystem than the checkpoints, so a kill mid-copy
leaves a truncated ``last.ckpt``. Here every checkpoint is written to ``<name>.partial`` in its
own folder, flushed to disk and renamed over ``<name>`` (``os.replace``, atomic within a
filesystem): a kill or an error during a save leaves the previous file intact
(``tests/test_resume.py`` checks both the interrupted save and SIGKILL-then-resume). It also
restores ``current_score`` on resume, which Lightning saves but does not read back, so a resumed
run's checkpoints carry the same callback state as the uninterrupted run's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from weakref import proxy

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

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            self.current_score = state_dict.get("current_score", self.current_score)

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        # Lightning 2.6's ModelCheckpoint._save_checkpoint, with the write made atomic (module doc);
        # remote paths (s3://, ...) keep Lightning's own write.
        if "://" in str(filepath):
            super()._save_checkpoint(trainer, filepath)
            return
        partial = f"{filepath}.partial"
        try:
            trainer.save_checkpoint(partial, self.save_weights_only)
            if trainer.is_global_zero:
                with open(partial, "rb") as written:
                    os.fsync(written.fileno())
                os.replace(partial, filepath)
        except BaseException:
            if trainer.is_global_zero:
                Path(partial).unlink(missing_ok=True)
            raise
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))

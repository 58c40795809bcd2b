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
(``tests/test_resume.py`` checks both the interrupted save and SIGKILL-then-resume).
DeepSpeed checkpoints are directories (one shard per rank): every rank writes into
``<name>.partial/``, then rank 0 swaps it with the old directory (:func:`replace_path`). It also
restores ``current_score`` on resume, which Lightning saves but does not read back, so a resumed
run's checkpoints carry the same callback state as the uninterrupted run's.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
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
        if trainer.is_global_zero:
            remove_path(partial)  # left over by a run killed mid-save
        trainer.strategy.barrier("pefthub_checkpoint_partial")
        try:
            # every rank takes part: DeepSpeed writes one shard per rank into the directory
            trainer.save_checkpoint(partial, self.save_weights_only)
            trainer.strategy.barrier("pefthub_checkpoint_written")
            if trainer.is_global_zero:
                fsync_tree(partial)
                replace_path(partial, filepath)
        except BaseException:
            if trainer.is_global_zero:
                remove_path(partial)
            raise
        trainer.strategy.barrier("pefthub_checkpoint_replaced")
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


def remove_path(path: str | Path) -> None:
    """Delete a checkpoint file or directory if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def fsync_tree(path: str | Path) -> None:
    """Flush a checkpoint file, or every file of a checkpoint directory and the directories
    themselves, to disk before it is renamed into place."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in sorted(path.rglob("*")) if p.is_file()]
    for file in files:
        with open(file, "rb") as written:
            os.fsync(written.fileno())
    if path.is_dir():
        for directory in [path, *(p for p in path.rglob("*") if p.is_dir())]:
            descriptor = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def replace_path(source: str | Path, target: str | Path) -> None:
    """Put ``source`` (a file or a directory) in ``target``'s place, atomically where the OS allows.

    A file is renamed over the old one (``os.replace``). A directory cannot be renamed over a
    non-empty one, so on Linux the two are swapped in one step (``renameat2`` with
    ``RENAME_EXCHANGE``) and the old one, now at ``source``, is deleted: a kill at any moment
    leaves either the old or the new checkpoint at ``target``. Where the swap is unavailable
    the old directory is first moved to ``<target>.old`` (a kill between the two renames leaves
    it there, and ``--ckpt_path last`` falls back to it), then deleted.
    """
    source, target = Path(source), Path(target)
    if not source.is_dir() or not target.exists():
        if source.is_dir() and target.is_symlink():
            target.unlink()
        os.replace(source, target)
        return
    if _exchange(source, target):
        remove_path(source)
        return
    old = target.with_name(target.name + ".old")
    remove_path(old)
    os.replace(target, old)
    os.replace(source, target)
    remove_path(old)


_RENAME_EXCHANGE = 2


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2``); False where that is not available."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE)
    return result == 0

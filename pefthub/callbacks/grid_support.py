"""Callbacks the experiment grid (:mod:`pefthub.grid`) adds to each run it launches.

- :class:`ProgressFile` writes the run's progress to a small JSON file the grid polls, so the
  grid can draw a per-run progress bar without parsing the child's terminal output.
- :class:`FlopOverhead` measures the adapter's extra forward FLOPs with fvcore when training
  ends (the adapter as trained: after GLoRA's reallocation, with AdaLoRA's full SVD shapes)
  and logs them as ``budget/flop_overhead``, ``budget/host_flops``, ``budget/adapted_flops``.

Both are ordinary callbacks: a grid run stays a normal ``pefthub fit`` with two more entries
under ``trainer.callbacks`` in its saved config.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from pefthub.budget import flop_overhead


class ProgressFile(Callback):
    """Keep ``path`` holding ``{"stage", "step", "total", "epoch"}`` (written atomically, at
    most every ``interval_s`` seconds, and at every stage change).

    Args:
        path: the JSON file to write.
        interval_s: minimum seconds between two writes during training.
    """

    def __init__(self, path: str, interval_s: float = 0.5) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self._last = 0.0

    def _write(self, trainer: Trainer, stage: str, force: bool = False) -> None:
        now = time.monotonic()
        if not trainer.is_global_zero or (not force and now - self._last < self.interval_s):
            return
        self._last = now
        try:
            total = int(trainer.estimated_stepping_batches) if stage == "fit" else None
        except Exception:  # noqa: BLE001 - an unsized loader has no estimate; the bar then has no total
            total = None
        state = {"stage": stage, "step": int(trainer.global_step), "total": total, "epoch": int(trainer.current_epoch)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.path)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, "fit", force=True)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        self._write(trainer, "fit")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, "fit", force=True)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, "test", force=True)


class FlopOverhead(Callback):
    """At the end of training, fvcore's FLOPs of one host forward with and without the adapter
    (:func:`pefthub.budget.flop_overhead`: ``overhead = adapted / host − 1``, eager attention,
    one sequence of ``seq_len`` tokens, inference-style), logged under ``budget/``.
    A measurement that fails (an operator fvcore cannot trace) is reported as a warning and
    leaves the run alone.

    Args:
        seq_len: tokens of the measured sequence.
    """

    def __init__(self, seq_len: int = 128) -> None:
        self.seq_len = seq_len
        self.figures: dict[str, float] = {}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        try:
            flops = flop_overhead(pl_module, seq_len=self.seq_len)
        except Exception as error:  # noqa: BLE001 - a budget figure must not fail the training run
            rank_zero_warn(f"FlopOverhead: fvcore could not measure this adapter ({type(error).__name__}: {error})")
            return
        self.figures = {
            "budget/flop_overhead": flops["overhead"],
            "budget/host_flops": flops["host_flops"],
            "budget/adapted_flops": flops["adapted_flops"],
            "budget/flop_seq_len": float(self.seq_len),
        }
        for logger in trainer.loggers:
            logger.log_metrics(self.figures, step=trainer.global_step)
            logger.save()

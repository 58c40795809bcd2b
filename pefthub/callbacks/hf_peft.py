"""When HF PEFT's AdaLoRA rank allocator runs in the reference rows (:mod:`pefthub.methods.hf_peft`):
once per optimiser step, after ``optimizer.step()`` and before ``zero_grad()``, with the 0-based
index of the step just taken — the timing :class:`~pefthub.callbacks.rank_allocation.AdaLoRARankAllocation`
uses for pefthub's AdaLoRA (its module docstring explains why ``on_train_batch_end`` is that point)."""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from pefthub.callbacks.protocols import HFRankAllocatingModule, require


class HFPEFTRankAllocation(Callback):
    """Calls ``pl_module.allocate(t)`` once per optimiser step; T is set when fit starts."""

    def __init__(self) -> None:
        self.last_global_step = 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        require(pl_module, HFRankAllocatingModule, type(self).__name__)
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("HF PEFT AdaLoRA needs the total number of optimiser steps: set trainer.max_steps or trainer.max_epochs")
        pl_module.set_total_steps(int(total))

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.last_global_step:
            return  # an accumulation micro-batch: no optimiser step happened
        self.last_global_step = trainer.global_step
        pl_module.allocate(trainer.global_step - 1)

    def state_dict(self) -> dict[str, Any]:
        return {"last_global_step": self.last_global_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_global_step = int(state_dict.get("last_global_step", 0))

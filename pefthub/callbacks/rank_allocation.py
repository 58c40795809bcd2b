"""When AdaLoRA's rank allocator runs inside Lightning's training loop.

The contract (HF PEFT's ``update_and_allocate``): update the importance statistics and mask
*after* ``optimizer.step()`` and *before* ``optimizer.zero_grad()``. Masking before the
step would let Adam's momentum revive the zeroed singular values straight away; reading
importance after ``zero_grad`` would see no gradients.

How that maps onto Lightning's automatic optimisation:

- the optimiser steps inside ``training_step``'s closure; ``zero_grad`` runs at the start
  of the *next* stepping batch's closure (``loops/optimization/automatic.py``), so
  ``on_train_batch_end`` still sees the gradients the step used and the updated weights.
  That is where the allocator runs.
- under gradient accumulation ``on_train_batch_end`` fires on every micro-batch; the
  allocator acts only when ``trainer.global_step`` has advanced since the last call (an
  optimiser step happened), and then t = ``trainer.global_step − 1`` (0-based index of
  the step just taken, 0 .. T − 1).
- under fp16 mixed precision (a loss scaler: the one setting where training goes on after a
  non-finite gradient) an importance update whose gradients are not all finite is skipped
  (counted in ``budget/importance_skipped``); the schedule still advances. That check reads a
  flag back from the device, so it is off otherwise: the allocator's step has no host sync.
- T = ``trainer.estimated_stepping_batches``, read at ``on_fit_start``.

State (``state_dict``): the allocator's importance EMAs and schedule position and the last
global step acted on; the masks themselves are buffers of the adapter layers, saved with
the module. A run resumed from a checkpoint therefore continues exactly where it stopped.

Logged on logging steps (``trainer.log_every_n_steps``; reading the ranks back is a host sync):
``budget/rank_budget`` (b(t)), ``budget/active_rank`` (kept triplets over all layers),
``budget/active_adapter_params`` and, with ``log_ranks``, ``rank/<layer>``. The regulariser is logged by the module as ``train/regularization``.
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from pefthub.callbacks.logging_step import is_logging_step
from pefthub.callbacks.protocols import RankAllocatingModule, require


class AdaLoRARankAllocation(Callback):
    """Runs ``pl_module.allocator.step(t)`` once per optimiser step (see the module doc); the
    module must be a :class:`~pefthub.callbacks.protocols.RankAllocatingModule`.

    Args:
        log_ranks: also log ``rank/<layer>`` for every adapted matrix.
    """

    def __init__(self, log_ranks: bool = True) -> None:
        self.log_ranks = log_ranks
        self.last_global_step = 0
        self._restored: dict[str, Any] | None = None
        self._allocator = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require(pl_module, RankAllocatingModule, type(self).__name__)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        allocator = pl_module.allocator
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError(
                "AdaLoRA needs the total number of optimiser steps: set trainer.max_steps or trainer.max_epochs "
                "(with a sized training dataloader)"
            )
        if self._restored is not None:
            allocator.load_state_dict(self._restored["allocator"])
            self.last_global_step = int(self._restored["last_global_step"])
            self._restored = None
        allocator.set_total_steps(int(total))
        allocator.check_finite = getattr(trainer.precision_plugin, "scaler", None) is not None
        self._allocator = allocator

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self.last_global_step:
            return  # an accumulation micro-batch: no optimiser step happened
        self.last_global_step = step
        report = pl_module.allocator.step(step - 1)
        if not is_logging_step(trainer) and step != trainer.estimated_stepping_batches:
            return
        figures = {
            "budget/rank_budget": float(report.budget),
            "budget/active_rank": float(report.active_rank),
            "budget/active_adapter_params": float(pl_module.active_adapter_parameters()),
            "budget/importance_skipped": float(pl_module.allocator.skipped_nonfinite),
        }
        if self.log_ranks:
            figures.update({f"rank/{name}": float(rank) for name, rank in pl_module.allocator.rank_pattern().items()})
        pl_module.log_dict(figures, on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"last_global_step": self.last_global_step}
        if self._allocator is not None:
            state["allocator"] = self._allocator.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied in on_fit_start, once the module's allocator is known and T can be checked.
        if "allocator" in state_dict:
            self._restored = dict(state_dict)
        else:
            self.last_global_step = int(state_dict.get("last_global_step", 0))

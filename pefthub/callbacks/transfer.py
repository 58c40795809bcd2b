"""The δθ phase of a UniHyperLoRA transfer: freeze the loaded adapter except δθ and tune it."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from pefthub.callbacks.protocols import DeltaTunableModule, require


class DeltaTuning(Callback):
    """Train only δθ (the mixer's per-type bias) — and, for a task the source never saw, a new
    task head — for ``steps`` optimiser steps, after the adapter was loaded into a new host
    (``model.init_adapter``). Everything else (atoms, generator, mixer θ, router) stays frozen.

    Whether the head trains is the module's setting alone: a head loaded from the adapter
    (``model.init_head: true``) stays frozen, a fresh one (``model.init_head: false``) trains
    (:meth:`~pefthub.methods.UniHyperLoRAModule.freeze_for_delta_phase`).

    The freeze happens in ``setup`` (before the optimiser is built, so the optimiser holds
    exactly the tuned tensors) and the run length is set to ``steps`` there too, replacing
    ``trainer.max_epochs``/``max_steps`` (said in the log), so the learning-rate schedule spans
    the phase. The trainable sizes are logged separately: ``budget/delta_params`` and
    ``budget/new_head_params`` (0 when the head is not trained).

    Args:
        steps: optimiser steps of the phase.
        train_head: optional check only: when given, it must agree with ``not model.init_head``.
    """

    def __init__(self, steps: int = 500, train_head: bool | None = None) -> None:
        if steps < 1:
            raise ValueError(f"DeltaTuning.steps must be >= 1, got {steps}")
        self.steps = steps
        self.train_head = train_head
        self.sizes: dict[str, int] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        require(pl_module, DeltaTunableModule, type(self).__name__)
        if self.train_head is not None and self.train_head == pl_module.init_head:
            raise ValueError(
                f"DeltaTuning.train_head={self.train_head} contradicts model.init_head={pl_module.init_head}: the head "
                "trains exactly when it is not loaded from the adapter; set only model.init_head"
            )
        self.sizes = pl_module.freeze_for_delta_phase()
        before = (trainer.fit_loop.max_epochs, trainer.fit_loop.epoch_loop.max_steps)
        trainer.fit_loop.max_epochs = -1
        trainer.fit_loop.epoch_loop.max_steps = self.steps
        head = self.sizes["budget/new_head_params"]
        rank_zero_info(
            f"δθ phase: run length set to {self.steps} optimiser steps (DeltaTuning.steps; trainer.max_epochs={before[0]}, "
            f"max_steps={before[1]} are overridden), training {self.sizes['budget/delta_params']} δθ values"
            + (f" and a new head of {head} parameters" if head else "")
        )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({k: float(v) for k, v in self.sizes.items()}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = int(state_dict.get("steps", self.steps))

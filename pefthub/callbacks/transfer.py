"""The δθ phase of a UniHyperLoRA transfer: freeze the loaded adapter except δθ and tune it."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class DeltaTuning(Callback):
    """Train only δθ (the mixer's per-type bias) — and, for a task the source never saw, a new
    task head — for ``steps`` optimiser steps, after the adapter was loaded into a new host
    (``model.init_adapter``). Everything else (atoms, generator, mixer θ, router) stays frozen.

    The freeze happens in ``setup`` (before the optimiser is built, so the optimiser holds
    exactly the tuned tensors) and the run length is set to ``steps`` there too, so the learning-rate
    schedule spans the phase. The trainable sizes are logged separately:
    ``budget/delta_params`` and ``budget/new_head_params`` (0 when the head is not trained).

    Args:
        steps: optimiser steps of the phase.
        train_head: also train the task head (for a new task; its size is reported separately).
    """

    def __init__(self, steps: int = 500, train_head: bool = False) -> None:
        if steps < 1:
            raise ValueError(f"DeltaTuning.steps must be >= 1, got {steps}")
        self.steps = steps
        self.train_head = train_head
        self.sizes: dict[str, int] = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        hyper = getattr(pl_module, "hyper", None)
        if hyper is None:
            raise ValueError("DeltaTuning needs a UniHyperLoRA model (model.class_path: pefthub.methods.UniHyperLoRAModule)")
        pl_module.requires_grad_(False)
        hyper.mixer.delta.requires_grad_(True)
        pl_module.head.requires_grad_(self.train_head)
        trainer.fit_loop.max_epochs = -1
        trainer.fit_loop.epoch_loop.max_steps = self.steps
        self.sizes = {
            "budget/delta_params": hyper.mixer.delta.numel(),
            "budget/new_head_params": sum(p.numel() for p in pl_module.head.parameters()) if self.train_head else 0,
        }
        rank_zero_info(
            f"δθ phase: {self.steps} steps, training {self.sizes['budget/delta_params']} δθ values"
            + (f" and a new head of {self.sizes['budget/new_head_params']} parameters" if self.train_head else "")
        )

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({k: float(v) for k, v in self.sizes.items()}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "train_head": self.train_head}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = int(state_dict.get("steps", self.steps))
        self.train_head = bool(state_dict.get("train_head", self.train_head))

"""Importance warm-up: when to observe gradients, and when to stop (FW-LoRA, IW-LoRA, GLoRA).

The *what* lives in :class:`pefthub.importance_estimator.ImportanceEstimator`, held by the
LightningModule (its penalty or rank plan reads the values). This callback decides *when*:
hooks on at the start of training (if the warm-up is not over), one observation per optimiser
step in ``on_before_optimizer_step`` (gradients of the whole accumulated step, before clipping,
before the update), and at ``trainer.global_step >= warmup_steps`` the estimator is frozen, its
hooks removed and the importances logged. The phase state (the estimator's running values, step
count and frozen flag) is this callback's ``state_dict``; it is handed back to the module at
``on_train_start`` of a resumed run (checkpoints written before kept it under the module's
``pefthub_importance`` key, which the modules still read).

The module is an :class:`~pefthub.callbacks.protocols.ImportanceWarmupModule`.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from pefthub.callbacks.logging_step import is_logging_step
from pefthub.callbacks.protocols import ImportanceWarmupModule, require

CALIBRATIONS = ("train", "frozen", "tiny_lr")


def tensorboard_writers(trainer: Trainer) -> list:
    """The SummaryWriters of the trainer's TensorBoard loggers (empty off rank zero)."""
    if not trainer.is_global_zero:
        return []
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


def markdown_table(rows: dict[str, dict[str, float]], first: str = "matrix") -> str:
    """``{name: {column: value}}`` as a Markdown table (TensorBoard's text tab renders it)."""
    columns = list(next(iter(rows.values())).keys()) if rows else []
    lines = ["| " + " | ".join([first, *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, row in rows.items():
        cells = [f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


def _grad_scale(trainer: Trainer) -> float:
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is not None and getattr(scaler, "is_enabled", lambda: False)():
        return float(scaler.get_scale())
    return 1.0


class ImportanceWarmup(Callback):
    """Observe per-matrix gradients for ``warmup_steps`` optimiser steps, then freeze.

    Args:
        warmup_steps: number of optimiser steps observed (``trainer.global_step`` counts them).
        calibration: what the adapters do meanwhile: ``train`` (plain LoRA training),
            ``frozen`` (their gradients are read, then dropped before the optimiser step, so
            they are not updated and get no optimiser state; the head still trains) or
            ``tiny_lr`` (each update of the adapters is scaled by ``calibration_lr_scale``).
        calibration_lr_scale: the factor of ``tiny_lr`` (the step taken is
            ``old + scale · (new − old)``, i.e. the learning rate times ``scale`` for SGD/Adam
            updates and decoupled weight decay).
    """

    def __init__(self, warmup_steps: int, calibration: str = "train", calibration_lr_scale: float = 0.01) -> None:
        if warmup_steps < 1:
            raise ValueError(f"model.warmup_steps must be >= 1, got {warmup_steps}")
        if calibration not in CALIBRATIONS:
            raise ValueError(f"model.calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        if not 0.0 <= calibration_lr_scale <= 1.0:
            raise ValueError(f"model.calibration_lr_scale must be in [0, 1], got {calibration_lr_scale}")
        self.warmup_steps = warmup_steps
        self.calibration = calibration
        self.calibration_lr_scale = calibration_lr_scale
        self._snapshot: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._module: ImportanceWarmupModule | None = None
        self._restored: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return f"ImportanceWarmup[{self.warmup_steps}]"

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require(pl_module, ImportanceWarmupModule, type(self).__name__)
        self._module = pl_module

    def state_dict(self) -> dict[str, Any]:
        if self._module is None:
            return {}
        return {"estimator": self._module.importance_estimator.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # handed to the module at on_train_start, once the trainer has restored everything
        self._restored = state_dict.get("estimator")

    def _adapter_parameters(self, pl_module: LightningModule) -> list[torch.nn.Parameter]:
        return [p for layer in pl_module.importance_layers().values() for p in layer.adapter_parameters().values()]

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._restored is not None:
            pl_module.load_importance_state(self._restored)
            self._restored = None
        estimator = pl_module.importance_estimator
        if estimator.frozen:
            return
        if trainer.global_step >= self.warmup_steps:  # resumed exactly at the end of warm-up
            self._finish(trainer, pl_module)
            return
        if trainer.estimated_stepping_batches <= self.warmup_steps:
            rank_zero_warn(
                f"model.warmup_steps={self.warmup_steps} >= the run's {trainer.estimated_stepping_batches} optimiser "
                "steps: the importance warm-up never ends, so the method behaves as plain LoRA"
            )
        estimator.attach(pl_module.importance_layers())

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        estimator = pl_module.importance_estimator
        if estimator.frozen or not estimator.attached:
            return
        values = estimator.observe_step(_grad_scale(trainer))
        if is_logging_step(trainer):  # a device tensor: read back when logged
            pl_module.log("importance/step_mean", values.nan_to_num(0.0).mean().float(), on_step=True, on_epoch=False)
        if self.calibration == "frozen":
            for param in self._adapter_parameters(pl_module):
                param.grad = None  # torch optimisers skip parameters without a gradient
        elif self.calibration == "tiny_lr":
            self._snapshot = [(p, p.detach().clone()) for p in self._adapter_parameters(pl_module)]

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._snapshot:
            with torch.no_grad():
                for param, old in self._snapshot:
                    param.copy_(old.lerp(param, self.calibration_lr_scale))
            self._snapshot = []
        estimator = pl_module.importance_estimator
        if not estimator.frozen and estimator.attached and trainer.global_step >= self.warmup_steps:
            self._finish(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.importance_estimator.detach()  # training ended inside the warm-up

    def _finish(self, trainer: Trainer, pl_module: LightningModule) -> None:
        estimator = pl_module.importance_estimator
        estimator.freeze()
        if trainer.world_size > 1:
            # each process saw its own micro-batches: average so every rank freezes the same
            # values (the mean of per-rank values, not the value of the global gradient)
            pl_module.reduce_importance(lambda running: trainer.strategy.reduce(running, reduce_op="mean"))
        pl_module.on_importance_frozen()
        summary = pl_module.importance_summary()
        step = trainer.global_step
        for logger in trainer.loggers:
            logger.log_metrics({f"importance/{name}": row["importance"] for name, row in summary.items()}, step=step)
        for writer in tensorboard_writers(trainer):
            values = torch.tensor([row["value"] for row in summary.values()], dtype=torch.float64)
            writer.add_histogram(f"importance/{estimator.source}", values, global_step=step)
            writer.add_histogram("importance/normalized", torch.tensor([r["importance"] for r in summary.values()]), global_step=step)
            writer.add_text("importance/table", markdown_table(summary), global_step=step)

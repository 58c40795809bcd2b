"""GLoRA's phase change: reallocate ranks once the importance warm-up has frozen.

When: at the start of the first training batch after the warm-up ended (a stepping boundary:
the estimator freezes at the end of the batch whose optimiser step reaches ``warmup_steps``).
The module decides what (``reallocation_pending()``, ``reallocate()``, ``current_ranks()``);
this callback then rebuilds the optimiser and scheduler for the new parameters and logs the
rank pattern. The pattern and the ``reallocated`` flag fix tensor shapes, so the module saves them, and a
resumed run rebuilds the shapes in ``on_load_checkpoint`` before the weights load; the
callback keeps no state.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from pefthub.callbacks.importance_warmup import markdown_table, tensorboard_writers
from pefthub.callbacks.protocols import RankReallocatingModule, require


def rebuild_optimizers(trainer: Trainer) -> None:
    """Re-run ``configure_optimizers`` for the module's current parameters, keeping the
    learning-rate schedule where it was.

    - Optimiser state (e.g. Adam moments) is carried over for every parameter object that
      survived (the head, layers whose rank did not change); resized parameters start fresh.
    - Each scheduler's state (``last_epoch``, step count, last lr) is restored and the
      param groups get the lr they had, so the schedule continues, not restarts.

    For single-device strategies: a multi-process wrapper (DDP, FSDP, DeepSpeed) holds the old
    parameter objects, so :class:`RankReallocation` refuses to run under one.
    """
    old_optimizers = list(trainer.optimizers)
    old_schedulers = [config.scheduler.state_dict() for config in trainer.lr_scheduler_configs]
    trainer.strategy.setup_optimizers(trainer)
    if len(trainer.optimizers) != len(old_optimizers) or len(trainer.lr_scheduler_configs) != len(old_schedulers):
        raise RuntimeError("configure_optimizers returned a different number of optimisers/schedulers after the rebuild")
    for new, old in zip(trainer.optimizers, old_optimizers, strict=True):
        for group in new.param_groups:
            for param in group["params"]:
                if param in old.state:
                    new.state[param] = old.state[param]
    for config, state in zip(trainer.lr_scheduler_configs, old_schedulers, strict=True):
        config.scheduler.load_state_dict(state)
        for group, lr in zip(config.scheduler.optimizer.param_groups, config.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr


def rank_image(sites: list, pattern: dict[str, int], cell: int = 12) -> np.ndarray:
    """A grey-level heat map (H×W, uint8) of ranks: rows = depth, columns = module type."""
    types = list(dict.fromkeys(site.module_type for site in sites))
    depths = sorted({site.depth for site in sites})
    grid = np.zeros((len(depths), len(types)), dtype=np.float64)
    for site in sites:
        grid[depths.index(site.depth), types.index(site.module_type)] = pattern[site.name]
    peak = grid.max() if grid.max() > 0 else 1.0
    return np.kron(np.round(255 * grid / peak).astype(np.uint8), np.ones((cell, cell), dtype=np.uint8))


def log_rank_pattern(trainer: Trainer, pl_module: LightningModule, pattern: dict[str, int], tag: str) -> None:
    """``rank/<layer>`` scalars for every logger; a table and a heat map for TensorBoard."""
    step = trainer.global_step
    for logger in trainer.loggers:
        logger.log_metrics({f"rank/{name}": float(r) for name, r in pattern.items()}, step=step)
        logger.log_metrics({"rank/total": float(sum(pattern.values()))}, step=step)
    sites = pl_module.sites
    rows = {site.name: {"depth": site.depth, "type": site.module_type, "rank": pattern[site.name]} for site in sites}
    for writer in tensorboard_writers(trainer):
        writer.add_text(f"rank/{tag}", markdown_table(rows), global_step=step)
        writer.add_image(f"rank/{tag}_heatmap", rank_image(sites, pattern), global_step=step, dataformats="HW")


class RankReallocation(Callback):
    """Reallocate once, after the importance warm-up (GLoRA; a
    :class:`~pefthub.callbacks.protocols.RankReallocatingModule`); see the module docstring."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        require(pl_module, RankReallocatingModule, type(self).__name__)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.world_size > 1 and not pl_module.reallocated:
            raise NotImplementedError(
                "GLoRA's rank reallocation replaces parameters mid-run, which a multi-process strategy's "
                "wrapper (DDP/FSDP/DeepSpeed) does not follow; train GLoRA on one device (trainer.devices: 1)"
            )
        log_rank_pattern(trainer, pl_module, pl_module.current_ranks(), "initial" if not pl_module.reallocated else "reallocated")

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if not pl_module.reallocation_pending():
            return
        before = pl_module.current_ranks()
        pattern = pl_module.reallocate()
        rebuild_optimizers(trainer)
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        for logger in trainer.loggers:
            logger.log_metrics({"budget/trainable_params": float(trainable)}, step=trainer.global_step)
        log_rank_pattern(trainer, pl_module, pattern, "reallocated")
        changed = sum(before[n] != pattern[n] for n in pattern)
        rank_zero_info(
            f"GLoRA reallocation at step {trainer.global_step}: {changed}/{len(pattern)} ranks changed, "
            f"total {sum(pattern.values())}, {sum(r == 0 for r in pattern.values())} adapters removed"
        )


__all__ = ["RankReallocation", "log_rank_pattern", "rebuild_optimizers"]

"""GLoRA: gradient-norm rank allocation for LoRA.

Train every target at a uniform rank ``r_init`` for ``warmup_steps`` optimiser steps while
recording ``g_k ← β g_k + (1 − β) ‖∂L/∂Δ_k‖_F`` (from hooks; the same matrix as ∂L/∂W_k because
Δ is added to W). Then ``s_k = g_k / Σ g`` and ``r_k = round(R_total · s_k)`` with the sum fixed
exactly to ``R_total`` (largest remainder, capped at min(d_in, d_out), never negative, r_k = 0
removes the adapter; :func:`pefthub.importance_estimator.allocate_ranks`). Each layer is rebuilt at its
new rank (:meth:`pefthub.adapters.lora.LoRALinear.resize`):

- growing keeps every learned component and adds LoRA-initialised ones (A Kaiming-uniform,
  B = 0), so the outputs do not change;
- shrinking keeps the components with the largest ``‖B[:, i]‖·‖A[i, :]‖`` (the Frobenius norm of
  the rank-1 term ``b_i a_iᵀ``) and drops the rest;
- the scaling stays ``γ = α / r_init`` for every layer (``alpha_k = γ · r_k``, saved as
  ``alpha_pattern``): each component keeps the step size it had during the warm-up, rather than
  ``α / r_k`` shrinking the update of the layers that gained rank.

The optimiser and the learning-rate scheduler are then rebuilt by
:class:`pefthub.callbacks.rank_reallocation.RankReallocation` without resetting the schedule.

Names: an unrelated 2023 method is also called GLoRA ("Generalized LoRA", Chavan et al.; HF
PEFT's ``GloraConfig``); this is not it. The closest published work is GoRA (NeurIPS 2025),
which allocates ranks from gradients before training rather than after a LoRA warm-up.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from pefthub.adapters.io import load_adapter as read_adapter_file
from pefthub.callbacks.rank_reallocation import RankReallocation
from pefthub.importance_estimator import ImportanceEstimator, allocate_ranks, normalize
from pefthub.methods.importance_lora import ImportanceWarmupMixin
from pefthub.methods.lora import LoRAModule
from pefthub.methods.settings import GLoRASettings, from_config

# the rank pattern fixes the tensor shapes, so it is module state: it must be rebuilt before
# the weights load (the importance estimator is the warm-up callback's state)
RANKS_KEY = "pefthub_rank_pattern"


class GLoRAModule(ImportanceWarmupMixin, LoRAModule):
    """LoRA whose per-matrix ranks are reallocated once, after a gradient-norm warm-up.

    Args:
        total_rank: R_total, the sum of ranks after reallocation; default
            ``(number of target matrices) × rank`` (the same adapter size as uniform LoRA
            when all targets have the same shape).
        warmup_steps: optimiser steps at the uniform rank ``rank`` (r_init) before the
            reallocation.
        ema_beta: EMA coefficient of g_k in [0, 1); ``null`` averages the warm-up equally.
        importance_source: ``grad_norm`` (‖∂L/∂Δ‖_F, GLoRA's signal), ``fisher`` or
            ``lora_grad`` (see :mod:`pefthub.importance_estimator`).
        calibration: the adapters during the warm-up: ``train``, ``frozen`` or ``tiny_lr``.
        calibration_lr_scale: learning-rate factor of ``calibration: tiny_lr``.
        fisher_impl: ``auto``, ``dense`` or ``gram`` (how ‖Σ g xᵀ‖²_F is computed).
        **kwargs: the LoRA arguments (``rank`` is r_init; ``alpha``, ``dropout``,
            ``target_modules``) and those of :class:`~pefthub.methods.base.PEFTModule`.
    """

    method_name = "glora"

    def __init__(
        self,
        total_rank: int | None = None,
        warmup_steps: int = 100,
        ema_beta: float | None = 0.9,
        importance_source: str = "grad_norm",
        calibration: str = "train",
        calibration_lr_scale: float = 0.01,
        fisher_impl: str = "auto",
        **kwargs: Any,
    ) -> None:
        glora_settings = GLoRASettings(total_rank=total_rank, importance_source=importance_source)
        # set before LoRAModule.__init__: with model.init_adapter it loads the file, and
        # load_adapter applies the file's rank pattern and reallocated flag
        self.importance_estimator = ImportanceEstimator(importance_source, ema_beta, fisher_impl)
        self.warmup_steps = warmup_steps
        self.calibration = calibration
        self.calibration_lr_scale = calibration_lr_scale
        self.reallocated = False
        super().__init__(**kwargs)
        caps = [min(site.d_in, site.d_out) for site in self.sites]
        if total_rank is None:
            glora_settings = replace(glora_settings, total_rank=len(self.sites) * self.settings.rank)
        if not 0 <= glora_settings.total_rank <= sum(caps):
            raise ValueError(
                f"model.total_rank must be in [0, {sum(caps)}] (the sum of min(d_in, d_out) over the "
                f"{len(self.sites)} targets), got {glora_settings.total_rank}"
            )
        self.glora_settings = glora_settings
        self.scaling = self.settings.alpha / self.settings.rank  # γ, fixed for every layer and rank
        for layer in self.importance_layers().values():  # a rank_pattern may start some at 0
            for param in layer.adapter_parameters().values():
                param.requires_grad_(param.numel() > 0)

    def configure_callbacks(self) -> list:
        return [*super().configure_callbacks(), self.warmup_callback(), RankReallocation()]

    @classmethod
    def method_arguments(cls, config: dict[str, Any]) -> dict[str, Any]:
        return asdict(from_config(GLoRASettings, config))

    @property
    def total_rank(self) -> int:
        """R_total, the sum of ranks after reallocation."""
        return self.glora_settings.total_rank

    # ------------------------------------------------------------------ importance protocol

    def on_importance_frozen(self) -> None:
        """Nothing to do yet: :class:`RankReallocation` rebuilds at the next batch start."""

    def importance_summary(self) -> dict[str, dict[str, float]]:
        values = self.importance_estimator.values()
        shares = normalize(values, "sum")
        planned = self.planned_rank_pattern()
        return {name: {"value": values[name], "importance": shares[name], "rank": float(planned[name])} for name in values}

    # ------------------------------------------------------------------ ranks

    def current_ranks(self) -> dict[str, int]:
        """Current rank of every target matrix (module name relative to the backbone)."""
        return {name: layer.rank for name, layer in self.importance_layers().items()}

    def planned_rank_pattern(self) -> dict[str, int]:
        """``r_k = round(R_total · g_k / Σ g)`` with the exact-sum fix, from the estimator."""
        values = self.importance_estimator.values()
        names = [site.name for site in self.sites]
        caps = [min(site.d_in, site.d_out) for site in self.sites]
        ranks = allocate_ranks([values[n] for n in names], self.total_rank, caps)
        return dict(zip(names, ranks, strict=True))

    def reallocation_pending(self) -> bool:
        return self.importance_estimator.frozen and not self.reallocated

    def reallocate(self) -> dict[str, int]:
        """Apply the planned rank pattern (after the warm-up); returns it."""
        pattern = self.planned_rank_pattern()
        self.apply_rank_pattern(pattern)
        self.reallocated = True
        return pattern

    @torch.no_grad()
    def apply_rank_pattern(self, pattern: dict[str, int]) -> None:
        """Resize each target to ``pattern[name]`` with ``alpha = γ · r`` (the scaling stays γ).

        New A rows draw from a generator seeded by ``torch.initial_seed()`` and the layer's
        index, so a resumed run initialises them exactly as the uninterrupted one did.
        Zero-size parameters (rank 0) are not trainable.
        """
        layers = self.importance_layers()
        unknown = sorted(set(pattern) - set(layers))
        if unknown:
            raise ValueError(f"rank_pattern names modules that are not targets of this model: {unknown[:3]}")
        base_seed = torch.initial_seed()
        for index, (name, layer) in enumerate(layers.items()):
            new_rank = int(pattern.get(name, layer.rank))
            generator = torch.Generator(device=layer.lora_A.device).manual_seed((base_seed + 1_000_003 * (index + 1)) % 2**63)
            layer.resize(new_rank, keep_scaling=False, generator=generator)
            layer.alpha = self.scaling * new_rank
            for param in layer.adapter_parameters().values():
                param.requires_grad_(param.numel() > 0)

    # ------------------------------------------------------------------ checkpoints and files

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[RANKS_KEY] = {"rank_pattern": self.current_ranks(), "reallocated": self.reallocated}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this before load_state_dict: rebuild the shapes first.
        if RANKS_KEY in checkpoint:
            self.apply_rank_pattern(checkpoint[RANKS_KEY]["rank_pattern"])
            self.reallocated = bool(checkpoint[RANKS_KEY]["reallocated"])
        super().on_load_checkpoint(checkpoint)

    def adapter_config(self) -> dict[str, Any]:
        """LoRA's file (the layers' rank_pattern and scaling_pattern) plus :class:`GLoRASettings`
        and the phase's results: alpha_pattern, whether the ranks were reallocated, and the
        measured importances once frozen."""
        return {
            **super().adapter_config(),
            **asdict(self.glora_settings),
            "alpha_pattern": {name: self.scaling * r for name, r in self.current_ranks().items()},
            "reallocated": self.reallocated,
            "importance": self.importance_estimator.values() if self.importance_estimator.frozen else None,
        }

    def load_adapter(self, path: str | Path) -> dict[str, Any]:
        """Load a GLoRA adapter: apply its ``rank_pattern`` first, then copy the tensors."""
        config, _ = read_adapter_file(path)
        if config.get("method") == self.method_name and "rank_pattern" in config:
            if config.get("alpha") is not None and config.get("rank"):
                self.scaling = float(config["alpha"]) / int(config["rank"])
            self.apply_rank_pattern({k: int(v) for k, v in config["rank_pattern"].items()})
            self.reallocated = bool(config.get("reallocated", True))
        return super().load_adapter(path)

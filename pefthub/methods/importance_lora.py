"""FW-LoRA and IW-LoRA: LoRA with an importance-weighted L2 penalty on each update ΔW_m.

One module, two presets (``configs/fw_lora/``, ``configs/iw_lora/``)::

    loss = task loss + λ Σ_m (1 − I_m)^β ‖ΔW_m‖²_F,      ΔW_m = (α/r) B_m A_m

- **FW-LoRA** (Fisher-weighted): ``importance_source: fisher``, ``F_m = EMA ‖∂L/∂W_m‖²_F``
  over a warm-up of plain LoRA training, ``I_m = F_m / Σ F`` (``importance_normalization:
  sum``), β = 1.
- **IW-LoRA** (importance-weighted): ``importance_source: grad_norm`` averaged over a short
  calibration (``ema_beta: null`` takes the plain mean, s_k = E‖∂L/∂W_k‖_F) with the adapters
  frozen or at a tiny learning rate (``calibration``), weights w_k, exponent β configurable.

ΔW includes the α/r scaling: the penalty is on the update actually added to W (what a merge
adds), so it does not change meaning when α or r change. ``‖ΔW‖²_F`` is computed as
``(α/r)² tr((BᵀB)(AAᵀ))`` (:func:`pefthub.importance_estimator.lora_delta_sq_norm`), never forming ΔW.
During the warm-up the penalty is off (the importances are not known yet).

Note on ``sum`` normalisation: with n target matrices the I_m average 1/n, so with n = 36
(MiniLM-L6) every weight (1 − I_m) lies near 1 − 1/36 and the penalty is close to a uniform L2
on ΔW; ``max`` normalisation (I_m = F_m / max F) spreads the weights over [0, 1].

Neighbours: EWC-LoRA (ICLR 2026) puts a Fisher penalty on ΔW = AB for continual learning; the
proposals' FW-LoRA weights by a per-matrix (not per-parameter) importance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from pefthub.callbacks.importance_warmup import ImportanceWarmup
from pefthub.callbacks.logging_step import is_logging_step
from pefthub.importance_estimator import (
    ImportanceEstimator,
    lora_delta_sq_norm,
    normalize,
    penalty_weights,
    weighted_delta_sq_norm_gradients,
)
from pefthub.methods.lora import LoRAModule
from pefthub.methods.settings import ImportanceLoRASettings, from_config

CHECKPOINT_KEY = "pefthub_importance"  # where checkpoints written before the callback kept the estimator


class ImportanceWarmupMixin:
    """The module side of :class:`~pefthub.callbacks.importance_warmup.ImportanceWarmup` shared by
    FW/IW-LoRA and GLoRA (the :class:`~pefthub.callbacks.protocols.ImportanceWarmupModule`
    contract): the layers observed, and the estimator's state going in and out."""

    importance_estimator: ImportanceEstimator

    def warmup_callback(self) -> ImportanceWarmup:
        """The warm-up phase's callback (validates ``warmup_steps`` and ``calibration*``)."""
        return ImportanceWarmup(self.warmup_steps, self.calibration, self.calibration_lr_scale)

    def importance_layers(self) -> dict[str, nn.Module]:
        return {site.name: self.backbone.get_submodule(site.name) for site in self.sites}

    def reduce_importance(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Combine the running importances across processes (``reduce`` runs on this module's device)."""
        self.importance_estimator.reduce(reduce, self.device)

    def load_importance_state(self, state: dict[str, Any]) -> None:
        """Restore the estimator (a resumed run); a frozen one fixes what depends on it."""
        self.importance_estimator.load_state_dict(state)
        if self.importance_estimator.frozen:
            self.on_importance_frozen()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_KEY in checkpoint:  # written before the callback held the estimator
            self.load_importance_state(checkpoint[CHECKPOINT_KEY])
        super().on_load_checkpoint(checkpoint)


class ImportanceLoRAModule(ImportanceWarmupMixin, LoRAModule):
    """LoRA + importance-weighted shrinkage of each ΔW (FW-LoRA / IW-LoRA).

    Args:
        importance_source: ``fisher`` (EMA of ‖∂L/∂W‖²_F from hooks), ``grad_norm``
            (‖∂L/∂W‖_F) or ``lora_grad`` (‖(∂L/∂A, ∂L/∂B)‖, the cheap proxy).
        warmup_steps: optimiser steps of the importance warm-up / calibration.
        ema_beta: EMA coefficient of the importance in [0, 1); ``null`` averages the
            warm-up's steps equally.
        calibration: the adapters during the warm-up: ``train`` (plain LoRA), ``frozen``
            (not updated; the head trains) or ``tiny_lr`` (updates scaled by
            ``calibration_lr_scale``).
        calibration_lr_scale: learning-rate factor of ``calibration: tiny_lr``.
        importance_normalization: ``sum`` (I_m = v_m / Σ v) or ``max`` (I_m = v_m / max v).
        penalty_weight: λ, the strength of the penalty.
        penalty_exponent: β in (1 − I_m)^β.
        fisher_impl: how ‖Σ g xᵀ‖²_F is computed: ``auto``, ``dense`` or ``gram``
            (see :mod:`pefthub.importance_estimator`).
        **kwargs: the LoRA arguments (``rank``, ``alpha``, ``dropout``, ``target_modules``)
            and those of :class:`~pefthub.methods.base.PEFTModule`.
    """

    method_name = "importance_lora"

    def __init__(
        self,
        importance_source: str = "fisher",
        warmup_steps: int = 100,
        ema_beta: float | None = 0.9,
        calibration: str = "train",
        calibration_lr_scale: float = 0.01,
        importance_normalization: str = "sum",
        penalty_weight: float = 0.01,
        penalty_exponent: float = 1.0,
        fisher_impl: str = "auto",
        **kwargs: Any,
    ) -> None:
        importance_settings = ImportanceLoRASettings(
            importance_source=importance_source,
            importance_normalization=importance_normalization,
            penalty_weight=penalty_weight,
            penalty_exponent=penalty_exponent,
        )
        estimator = ImportanceEstimator(importance_source, ema_beta, fisher_impl)  # checks ema_beta, fisher_impl
        super().__init__(**kwargs)
        self.importance_settings = importance_settings
        self.importance_estimator = estimator
        self.warmup_steps = warmup_steps
        self.calibration = calibration
        self.calibration_lr_scale = calibration_lr_scale
        self._weights: torch.Tensor | None = None
        self._weight_list: list[float] = []
        self._penalty_cache: dict = {}  # weighted_delta_sq_norm_gradients' device-side factors

    def configure_callbacks(self) -> list:
        return [*super().configure_callbacks(), self.warmup_callback()]

    @classmethod
    def method_arguments(cls, config: dict[str, Any]) -> dict[str, Any]:
        return asdict(from_config(ImportanceLoRASettings, config))

    @property
    def importance_normalization(self) -> str:
        return self.importance_settings.importance_normalization

    @property
    def penalty_weight(self) -> float:
        """λ, the strength of the penalty."""
        return self.importance_settings.penalty_weight

    @property
    def penalty_exponent(self) -> float:
        """β in the weights (1 − I_m)^β."""
        return self.importance_settings.penalty_exponent

    # ------------------------------------------------------------------ importance protocol

    def importances(self) -> dict[str, float]:
        return normalize(self.importance_estimator.values(), self.importance_normalization)

    def on_importance_frozen(self) -> None:
        """The penalty weights w_m = (1 − I_m)^β, fixed from here on."""
        weights = penalty_weights(self.importances(), self.penalty_exponent)
        self._weight_list = [weights[site.name] for site in self.sites]
        self._weights = torch.tensor(self._weight_list, dtype=torch.float32)

    def importance_summary(self) -> dict[str, dict[str, float]]:
        values, importance = self.importance_estimator.values(), self.importances()
        weights = penalty_weights(importance, self.penalty_exponent)
        return {
            name: {"value": values[name], "importance": importance[name], "penalty_weight": weights[name]}
            for name in values
        }

    # ------------------------------------------------------------------ penalty

    def delta_sq_norms(self) -> torch.Tensor:
        """``‖ΔW_m‖²_F`` of every target, in ``self.sites`` order (differentiable)."""
        layers = self.importance_layers().values()
        return torch.stack([lora_delta_sq_norm(layer.lora_A, layer.lora_B, layer.scaling) for layer in layers])

    def penalty(self) -> torch.Tensor | None:
        """λ Σ_m w_m ‖ΔW_m‖²_F, differentiable (``None`` during the warm-up). Training adds its
        gradient in closed form instead (:meth:`penalty_gradients`)."""
        if self._weights is None:
            return None
        sq_norms = self.delta_sq_norms()
        return self.penalty_weight * (self._weights.to(sq_norms) * sq_norms).sum()

    def penalty_gradients(self) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None:
        """The penalty and its gradient in closed form
        (:func:`~pefthub.importance_estimator.weighted_delta_sq_norm_gradients`); ``None`` during the
        warm-up. On logging steps the ‖ΔW_m‖_F are logged too (a host sync)."""
        if self._trainer is not None and is_logging_step(self.trainer):
            with torch.no_grad():
                self._log_delta_norms(self.delta_sq_norms())
        if self._weights is None:
            return None
        coefficients = [self.penalty_weight * float(w) for w in self._weight_list]
        return weighted_delta_sq_norm_gradients(list(self.importance_layers().values()), coefficients, self._penalty_cache)

    def _log_delta_norms(self, sq_norms: torch.Tensor) -> None:
        norms = sq_norms.clamp(min=0).sqrt().tolist()
        self.log_dict({f"delta_norm/{s.name}": v for s, v in zip(self.sites, norms, strict=True)}, on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ checkpoints and files

    def load_importance_state(self, state: dict[str, Any]) -> None:
        self._weights = None
        super().load_importance_state(state)

    def adapter_config(self) -> dict[str, Any]:
        """LoRA's file plus :class:`ImportanceLoRASettings` and, once measured, each target's
        importance and penalty weight (``importance``)."""
        return {
            **super().adapter_config(),
            **asdict(self.importance_settings),
            "importance": self.importance_summary() if self.importance_estimator.frozen else None,
        }

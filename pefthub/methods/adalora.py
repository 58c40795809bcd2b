"""AdaLoRA as a LightningModule (Zhang et al., ICLR 2023).

The module owns the SVD-shaped adapters and the :class:`~pefthub.adapters.rank_allocation.RankAllocator`
("what"); :class:`~pefthub.callbacks.rank_allocation.AdaLoRARankAllocation` (returned by
:meth:`AdaLoRAModule.configure_callbacks`) decides "when". The orthogonality penalty is added
by this module itself, its gradient in closed form after each backward
(:meth:`AdaLoRAModule.penalty_gradients`) — unlike HF PEFT, where
``AdaLoraModel.forward`` adds it only if the wrapped HF model returns ``.loss``, so a model
whose loss is computed outside (a custom head, as here) silently trains without it.

Conventions (both match HF PEFT, which the tests use as the reference):

- scaling: ΔW = (α / r0) P Λ Q with r0 = ``init_rank`` fixed (pruning never rescales);
- regulariser: ``orth_reg_form: mean_norm`` (default) is PEFT's and the authors' released
  code's mean of unsquared Frobenius norms; ``sum_squared`` is the paper's equation,
  Σ ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F. Both are multiplied by ``orth_reg_weight`` (γ).
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from pefthub.adapters.adalora import (
    LoRAExport,
    SVDLinear,
    export_as_lora,
    orthogonal_regularization,
    orthogonal_regularization_gradients,
    singular_values_folded,
)
from pefthub.adapters.inject import AdapterSite, inject_adapters
from pefthub.adapters.io import save_adapter
from pefthub.adapters.rank_allocation import RankAllocator
from pefthub.backbones import default_targets
from pefthub.callbacks.adapter_export import SaveAdapter
from pefthub.callbacks.rank_allocation import AdaLoRARankAllocation
from pefthub.methods.base import PEFTModule
from pefthub.methods.settings import AdaLoRASchedule, AdaLoRASettings


class AdaLoRAModule(PEFTModule):
    """AdaLoRA: ``y = W x + (alpha / init_rank) P diag(λ) Q dropout(x)``, with the number of
    non-zero λ over all layers pruned from ``init_rank × L`` to ``target_rank × L`` by a cubic
    schedule, keeping the triplets with the highest smoothed sensitivity × uncertainty.

    Schedule over the T optimiser steps of the run (T is ``trainer.estimated_stepping_batches``,
    never typed by hand): ``tinit`` warm-up steps at the full budget, budget reduction until
    step T − ``tfinal``, then ``tfinal`` steps at the final budget with the masks fixed.
    ``tinit``/``tfinal`` are an int (optimiser steps) or a float in [0, 1) (fraction of T).

    Args:
        init_rank: r0, initial rank of every targeted matrix.
        target_rank: average final rank per matrix: the final budget is
            ``target_rank × (number of targeted matrices)`` singular triplets (a LoRA of rank
            ``target_rank`` on the same matrices has the same total rank).
        alpha: scaling numerator; the update is multiplied by ``alpha / init_rank`` (fixed).
        dropout: dropout on the adapter input.
        target_modules: module-name patterns to adapt (as in :class:`~pefthub.methods.LoRAModule`);
            default: the family's attention and FFN projections.
        tinit: warm-up before any pruning (int steps or fraction of T).
        tfinal: final steps trained with the final masks fixed (>= 1 step; int or fraction).
        delta_t: optimiser steps between two re-allocations during the reduction phase.
        beta1: EMA coefficient of the smoothed sensitivity Ī.
        beta2: EMA coefficient of the uncertainty Ū.
        orth_reg_weight: γ, weight of the orthogonality regulariser (0 disables it).
        orth_reg_form: ``mean_norm`` (HF PEFT / authors' code: mean of unsquared Frobenius
            norms over all P and Q) or ``sum_squared`` (the paper's equation).
        log_ranks: log ``rank/<layer>`` (active triplets per layer) every optimiser step.
        **kwargs: the shared arguments of :class:`~pefthub.methods.base.PEFTModule`.
    """

    method_name = "adalora"

    def __init__(
        self,
        init_rank: int = 12,
        target_rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        tinit: int | float = 0.1,
        tfinal: int | float = 0.2,
        delta_t: int = 1,
        beta1: float = 0.85,
        beta2: float = 0.85,
        orth_reg_weight: float = 0.1,
        orth_reg_form: str = "mean_norm",
        log_ranks: bool = True,
        **kwargs: Any,
    ) -> None:
        settings = AdaLoRASettings(
            init_rank=init_rank,
            target_rank=target_rank,
            alpha=alpha,
            dropout=dropout,
            target_modules=target_modules,
            schedule=AdaLoRASchedule(tinit=tinit, tfinal=tfinal, delta_t=delta_t, beta1=beta1, beta2=beta2),
            orth_reg_weight=orth_reg_weight,
            orth_reg_form=orth_reg_form,
        )
        super().__init__(**kwargs)
        self.settings = replace(settings, target_modules=target_modules or list(default_targets(self.family)))
        self.log_ranks = log_ranks
        self.sites: list[AdapterSite] = inject_adapters(self.backbone, self.target_modules, self._make_layer)
        self.svd_layers: dict[str, SVDLinear] = {site.name: self.backbone.get_submodule(site.name) for site in self.sites}
        self.allocator = RankAllocator(self.svd_layers, target_rank=settings.target_rank, **asdict(settings.schedule))
        self.adapters_ready()

    @property
    def target_modules(self) -> list[str]:
        return self.settings.target_modules

    # ------------------------------------------------------------------ adapters

    def _make_layer(self, linear: torch.nn.Linear, site: AdapterSite) -> SVDLinear:
        settings = self.settings
        if settings.init_rank > min(linear.in_features, linear.out_features):
            raise ValueError(
                f"model.init_rank={settings.init_rank} exceeds min(d_in, d_out) of target {site.name!r}; "
                "lower it or exclude that module"
            )
        return SVDLinear(linear, rank=settings.init_rank, alpha=settings.alpha, dropout=settings.dropout)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        with singular_values_folded(self.svd_layers.values()):
            return super()._forward(input_ids, attention_mask, token_type_ids)

    def penalty(self) -> torch.Tensor | None:
        """γ · R(P, Q), differentiable (see :func:`~pefthub.adapters.adalora.orthogonal_regularization`).
        Training adds its gradient in closed form instead (:meth:`penalty_gradients`)."""
        if self.settings.orth_reg_weight == 0:
            return None
        return self.settings.orth_reg_weight * orthogonal_regularization(self.svd_layers, self.settings.orth_reg_form)

    def penalty_gradients(self) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None:
        """γ · R(P, Q) and its gradient in closed form (:func:`~pefthub.adapters.adalora.orthogonal_regularization_gradients`)."""
        if self.settings.orth_reg_weight == 0:
            return None
        value, params, grads = orthogonal_regularization_gradients(self.svd_layers, self.settings.orth_reg_form)
        torch._foreach_mul_(grads, self.settings.orth_reg_weight)
        return self.settings.orth_reg_weight * value, params, grads

    def configure_callbacks(self) -> list:
        # The adapter is written from the *final* weights: a checkpoint taken before step
        # T - tfinal holds more triplets than the final budget.
        inherited = [c for c in super().configure_callbacks() if not isinstance(c, SaveAdapter)]
        return [*inherited, SaveAdapter(use_best=False), AdaLoRARankAllocation(log_ranks=self.log_ranks)]

    # ------------------------------------------------------------------ reporting

    def rank_pattern(self) -> dict[str, int]:
        """Active triplets per targeted matrix (by backbone module name)."""
        return self.allocator.rank_pattern()

    def active_adapter_parameters(self) -> int:
        """Σ_m r_m (d_in + d_out + 1): parameters of the kept triplets (P column, Q row, λ)."""
        return sum(layer.active_rank * (layer.in_features + layer.out_features + 1) for layer in self.svd_layers.values())

    # ------------------------------------------------------------------ checkpoints / files

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        masks = {k: v for k, v in checkpoint["state_dict"].items() if k.endswith(".rank_mask")}
        super().on_save_checkpoint(checkpoint)
        checkpoint["state_dict"].update(masks)  # masks are buffers, not trainable: keep them too

    def adapter_config(self) -> dict[str, Any]:
        settings = asdict(self.settings)
        return {
            **settings,
            "scaling": "alpha / init_rank",
            "schedule": {**settings["schedule"], "total_steps": self.allocator.total_steps},
            "rank_pattern": self.rank_pattern(),
            "rank_mask": self.allocator.rank_masks(),
            "sites": [site.to_dict() for site in self.sites],
        }

    def save_adapter(self, directory: str | Path) -> Path:
        """Write the adapter; λ of masked triplets is zeroed first (it already is after the
        final allocation), so the file and its ``rank_mask`` agree."""
        self.allocator.apply_masks()
        return super().save_adapter(directory)

    def load_adapter(self, path: str | Path) -> dict[str, Any]:
        """Load an AdaLoRA adapter and restore its masks (``rank_mask`` in adapter_config.json)."""
        config = super().load_adapter(path)
        masks = config.get("rank_mask")
        if not isinstance(masks, dict) or set(masks) != set(self.svd_layers):
            raise ValueError(f"{path}: adapter_config.json has no rank_mask for exactly this model's AdaLoRA layers")
        for name, mask in masks.items():
            self.svd_layers[name].set_mask(torch.tensor(mask, dtype=torch.bool))
        return config

    def export_lora(self) -> LoRAExport:
        """This adapter as plain LoRA with per-matrix ranks (masked triplets dropped), keyed
        by backbone module name."""
        return export_as_lora(self.svd_layers)

    def save_lora_adapter(self, directory: str | Path) -> Path:
        """Write this adapter as a pefthub ``lora`` adapter with per-matrix ranks
        (``rank_pattern``, ``scaling_pattern``; zero rows dropped) plus the task head.

        ``LoRAModule.from_adapter(directory)`` loads it with the same outputs, and
        ``pefthub export --format peft directory out`` turns it into an HF PEFT LoRA adapter
        (``LoraConfig`` with ``rank_pattern``/``alpha_pattern``).
        """
        export = self.export_lora()
        tensors = {f"backbone.{k}": v for k, v in export.tensors.items()}
        tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        config = {
            **self.shared_file_config(),
            "method": "lora",  # keeps its first place in the JSON
            "rank": max(export.rank_pattern.values()),
            "alpha": self.settings.alpha,
            "dropout": self.settings.dropout,
            "target_modules": self.target_modules,
            "rank_pattern": export.rank_pattern,
            "scaling_pattern": export.scaling_pattern,
            "exported_from": {"method": self.method_name, "init_rank": self.settings.init_rank, "target_rank": self.settings.target_rank},
        }
        return save_adapter(directory, config, tensors)

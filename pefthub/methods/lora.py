"""LoRA as a LightningModule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from pefthub.adapters.inject import AdapterSite, inject_adapters
from pefthub.adapters.io import load_adapter
from pefthub.adapters.lora import LoRALinear
from pefthub.adapters.names import lookup
from pefthub.backbones import default_targets
from pefthub.budget import BudgetError
from pefthub.methods.base import PEFTModule


class LoRAModule(PEFTModule):
    """LoRA on the frozen backbone: ``y = W x + (alpha / r) B A dropout(x)``.

    Args:
        rank: LoRA rank r of every targeted matrix (1 <= r <= min(d_in, d_out)).
        alpha: scaling numerator; the update is multiplied by ``alpha / rank``.
        dropout: dropout on the adapter input.
        target_modules: module-name patterns to adapt (a name equal to or ending in
            ``.<pattern>``, or ``re:<regex>``); default: the family's attention and FFN
            projections (BERT: query, key, value, attention.output.dense,
            intermediate.dense, output.dense; MPNet: q, k, v, o, intermediate.dense,
            output.dense; Llama: q/k/v/o_proj, gate/up/down_proj).
        rank_pattern: per-module rank overrides ``{module-name pattern: rank}`` (as HF PEFT's
            ``rank_pattern``; the exact module name first, else the longest key that selects it as
            a target pattern would, see :mod:`pefthub.adapters.names`).
        alpha_pattern: per-module alpha overrides, same key rules.
        max_adapter_bytes: byte budget on the saved adapter files (safetensors + JSON, head
            included), checked at fit start (:class:`~pefthub.callbacks.budget.BudgetCheck`);
            null: not checked.
        fit_rank_to_budget: instead of failing the byte check, lower the rank to the largest
            ``r_cap`` (every module's rank becomes ``min(rank, r_cap)``) whose adapter files fit
            ``max_adapter_bytes``. ``alpha`` is scaled with the rank so that the update's
            scaling ``alpha / r`` is unchanged, and the adapter is initialised exactly as a
            run configured with the capped ranks would be. The cap is logged and recorded in
            ``adapter_config.json`` (``rank_cap``).
        max_flop_overhead: FLOP budget (fraction of the host forward, fvcore) checked at fit
            start; null: not checked.
        **kwargs: the shared arguments of :class:`~pefthub.methods.base.PEFTModule`.
    """

    method_name = "lora"

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        rank_pattern: dict[str, int] | None = None,
        alpha_pattern: dict[str, float] | None = None,
        max_adapter_bytes: int | None = None,
        fit_rank_to_budget: bool = False,
        max_flop_overhead: float | None = None,
        **kwargs: Any,
    ) -> None:
        if rank < 1:
            raise ValueError(f"model.rank must be >= 1, got {rank}")
        if max_adapter_bytes is not None and max_adapter_bytes < 1:
            raise ValueError(f"model.max_adapter_bytes must be >= 1 or null, got {max_adapter_bytes}")
        if fit_rank_to_budget and max_adapter_bytes is None:
            raise ValueError("model.fit_rank_to_budget needs model.max_adapter_bytes (the budget the rank is fitted to)")
        super().__init__(**kwargs)
        self.max_adapter_bytes = max_adapter_bytes
        self.fit_rank_to_budget = fit_rank_to_budget
        self.max_flop_overhead = max_flop_overhead
        self.rank_cap: int | None = None
        self.rank = rank
        self.alpha = alpha
        self.rank_pattern = dict(rank_pattern or {})
        self.alpha_pattern = dict(alpha_pattern or {})
        self.lora_dropout = dropout
        self.target_modules = list(target_modules) if target_modules else list(default_targets(self.family))
        rng_before_init = torch.get_rng_state()
        self.sites: list[AdapterSite] = inject_adapters(self.backbone, self.target_modules, self._make_layer)
        if self.fit_rank_to_budget:
            self._cap_rank_to_budget(rng_before_init)
        self.adapters_ready()

    def _make_layer(self, linear: torch.nn.Linear, site: AdapterSite) -> LoRALinear:
        rank = self.rank_for(site.name)
        if not 0 <= rank <= min(linear.in_features, linear.out_features):
            raise ValueError(
                f"model.rank={rank} for target {site.name!r} is outside [0, min(d_in, d_out)] = "
                f"[0, {min(linear.in_features, linear.out_features)}]; lower the rank or exclude that module"
            )
        return LoRALinear(linear, rank=rank, alpha=self.alpha_for(site.name), dropout=self.lora_dropout)

    def _cap_rank_to_budget(self, rng_before_init: torch.Tensor) -> None:
        """Lower every module's rank to ``min(rank, r_cap)`` for the largest ``r_cap`` whose
        adapter files fit ``max_adapter_bytes`` (sizes measured by serialising, as saved), then
        redraw the A matrices from the RNG state the injection started from: the result equals
        an adapter built directly with the capped ranks."""
        configured = {name: layer.rank for name, layer in self._lora_layers()}
        size = self.adapter_file_bytes()
        if size <= self.max_adapter_bytes:
            return
        cap = max(configured.values())
        while size > self.max_adapter_bytes and cap > 1:
            cap -= 1
            for name, layer in self._lora_layers():
                new_rank = min(configured[name], cap)
                layer.resize(new_rank, keep=list(range(new_rank)), keep_scaling=True)
            size = self.adapter_file_bytes()
        if size > self.max_adapter_bytes:
            raise BudgetError(
                f"no LoRA rank fits model.max_adapter_bytes={self.max_adapter_bytes:,}: at rank 1 the adapter "
                f"files take {size:,} bytes (raise the limit or adapt fewer modules via model.target_modules)"
            )
        torch.set_rng_state(rng_before_init)
        for _, layer in self._lora_layers():
            layer.reset_lora_parameters()
        self.rank_cap = cap
        rank_zero_info(
            f"LoRA rank capped at {cap} (configured {max(configured.values())}) to fit "
            f"max_adapter_bytes={self.max_adapter_bytes:,}: adapter files {size:,} bytes"
        )

    def configure_callbacks(self) -> list:
        callbacks = super().configure_callbacks()
        if self.max_adapter_bytes is not None or self.max_flop_overhead is not None:
            from pefthub.callbacks.budget import BudgetCheck

            callbacks.append(BudgetCheck(self.max_adapter_bytes, self.max_flop_overhead))
        return callbacks

    def rank_for(self, module_name: str) -> int:
        return int(lookup(self.rank_pattern, module_name, self.rank))

    def alpha_for(self, module_name: str) -> float:
        return float(lookup(self.alpha_pattern, module_name, self.alpha))

    @classmethod
    def from_adapter(cls, path: str, backbone: str | None = None, **kwargs: Any) -> LoRAModule:
        """A module rebuilt from an adapter directory's JSON (backbone, targets, per-module
        ranks and scalings, labels) with its tensors loaded; safetensors + JSON only."""
        config, _ = load_adapter(path)
        ranks = config.get("rank_pattern") or {}
        scalings = config.get("scaling_pattern") or {}
        module = cls(
            backbone=backbone or config["backbone"],
            rank=config.get("rank", max(ranks.values(), default=8)),
            alpha=config.get("alpha", 16.0),
            target_modules=config.get("target_modules"),
            rank_pattern=ranks,
            alpha_pattern={name: scalings[name] * r for name, r in ranks.items() if name in scalings},
            num_labels=config.get("num_labels", 2),
            label_names=config.get("label_names"),
            **{"pooling": config["pooling"], **kwargs} if "pooling" in config else kwargs,
        )
        module.load_adapter(path)
        return module

    def load_adapter(self, path: str | Path) -> dict[str, Any]:
        """Load an adapter file, with its per-module scaling (``scaling_pattern``): an adapter
        trained with another ``alpha`` gives the outputs it was trained to give."""
        config, _ = load_adapter(path)
        scalings = config.get("scaling_pattern") or {} if config.get("method") == self.method_name else {}
        for name, layer in self._lora_layers():
            if name in scalings and layer.rank > 0:
                layer.alpha = float(scalings[name]) * layer.rank
        return super().load_adapter(path)

    def adapter_config(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "rank_cap": self.rank_cap,
            "rank_pattern": {name: layer.rank for name, layer in self._lora_layers()},
            "scaling_pattern": {name: layer.scaling for name, layer in self._lora_layers()},
            "sites": [site.to_dict() for site in self.sites],
        }


    def _lora_layers(self) -> list[tuple[str, LoRALinear]]:
        return [(site.name, self.backbone.get_submodule(site.name)) for site in self.sites]

"""LoRA as a LightningModule."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from pefthub.adapters.inject import AdapterSite, inject_adapters, target_sites
from pefthub.adapters.io import config_text, load_adapter, serialized_size_of_shapes
from pefthub.adapters.lora import LoRALinear
from pefthub.adapters.names import lookup
from pefthub.backbones import default_targets
from pefthub.budget import BudgetError
from pefthub.methods.base import PEFTModule
from pefthub.methods.settings import LoRASettings, from_config


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
        settings = LoRASettings(rank=rank, alpha=alpha, dropout=dropout, target_modules=target_modules)
        if max_adapter_bytes is not None and max_adapter_bytes < 1:
            raise ValueError(f"model.max_adapter_bytes must be >= 1 or null, got {max_adapter_bytes}")
        if fit_rank_to_budget and max_adapter_bytes is None:
            raise ValueError("model.fit_rank_to_budget needs model.max_adapter_bytes (the budget the rank is fitted to)")
        super().__init__(**kwargs)
        self.max_adapter_bytes = max_adapter_bytes
        self.fit_rank_to_budget = fit_rank_to_budget
        self.max_flop_overhead = max_flop_overhead
        self.rank_cap: int | None = None
        self.settings = replace(settings, target_modules=target_modules or list(default_targets(self.family)))
        self.rank_pattern = dict(rank_pattern or {})
        self.alpha_pattern = dict(alpha_pattern or {})
        sites = target_sites(self.backbone, self.target_modules)
        for site in sites:
            self._check_rank(site, self.rank_for(site.name))
        if self.fit_rank_to_budget:
            self.rank_cap = self._rank_cap_for_budget(sites)
        self.sites: list[AdapterSite] = inject_adapters(self.backbone, self.target_modules, self._make_layer)
        self.adapters_ready()

    @staticmethod
    def _check_rank(site: AdapterSite, rank: int) -> None:
        if not 0 <= rank <= min(site.d_in, site.d_out):
            raise ValueError(
                f"model.rank={rank} for target {site.name!r} is outside [0, min(d_in, d_out)] = "
                f"[0, {min(site.d_in, site.d_out)}]; lower the rank or exclude that module"
            )

    def _rank_and_alpha(self, module_name: str, cap: int | None) -> tuple[int, float]:
        """The module's rank and alpha under the rank cap: ``min(rank, cap)``, with alpha
        scaled along so that ``alpha / rank`` stays the configured scaling."""
        rank, alpha = self.rank_for(module_name), self.alpha_for(module_name)
        if cap is None or rank <= cap:
            return rank, alpha
        return cap, alpha / rank * cap

    def _make_layer(self, linear: torch.nn.Linear, site: AdapterSite) -> LoRALinear:
        rank, alpha = self._rank_and_alpha(site.name, self.rank_cap)
        return LoRALinear(linear, rank=rank, alpha=alpha, dropout=self.settings.dropout)

    def _planned_file_bytes(self, sites: list[AdapterSite], cap: int | None) -> int:
        """Bytes of the adapter files (safetensors + JSON, head included) that a LoRA on
        ``sites`` under rank cap ``cap`` writes, computed from the shapes before any adapter exists."""
        hosts = {site.name: self.backbone.get_submodule(site.name) for site in sites}
        dtypes = {name: getattr(host, "base", host).weight.dtype for name, host in hosts.items()}  # Linear, or once wrapped
        shapes = {f"head.{k}": (tuple(v.shape), v.dtype) for k, v in self.head.state_dict().items()}
        ranks, scalings = {}, {}
        for site in sites:
            rank, alpha = self._rank_and_alpha(site.name, cap)
            ranks[site.name], scalings[site.name] = rank, alpha / rank if rank > 0 else 0.0
            shapes[f"backbone.{site.name}.lora_A"] = ((rank, site.d_in), dtypes[site.name])
            shapes[f"backbone.{site.name}.lora_B"] = ((site.d_out, rank), dtypes[site.name])
        config = {**self.shared_file_config(), **self._lora_config(sites, ranks, scalings, cap)}
        return serialized_size_of_shapes(shapes) + len(config_text(config).encode())

    def _rank_cap_for_budget(self, sites: list[AdapterSite]) -> int | None:
        """The largest ``r_cap`` (every module's rank becomes ``min(rank, r_cap)``) whose adapter
        files fit ``max_adapter_bytes``, or ``None`` when the configured ranks fit; computed
        from the shapes before injection, so the adapter is drawn once, with the capped ranks."""
        size = self._planned_file_bytes(sites, None)
        if size <= self.max_adapter_bytes:
            return None
        configured = max(self.rank_for(site.name) for site in sites)
        cap = configured
        while size > self.max_adapter_bytes and cap > 1:
            cap -= 1
            size = self._planned_file_bytes(sites, cap)
        if size > self.max_adapter_bytes:
            raise BudgetError(
                f"no LoRA rank fits model.max_adapter_bytes={self.max_adapter_bytes:,}: at rank 1 the adapter "
                f"files take {size:,} bytes (raise the limit or adapt fewer modules via model.target_modules)"
            )
        rank_zero_info(
            f"LoRA rank capped at {cap} (configured {configured}) to fit "
            f"max_adapter_bytes={self.max_adapter_bytes:,}: adapter files {size:,} bytes"
        )
        return cap

    def configure_callbacks(self) -> list:
        callbacks = super().configure_callbacks()
        if self.max_adapter_bytes is not None or self.max_flop_overhead is not None:
            from pefthub.callbacks.budget import BudgetCheck

            callbacks.append(BudgetCheck(self.max_adapter_bytes, self.max_flop_overhead))
        return callbacks

    def rank_for(self, module_name: str) -> int:
        return int(lookup(self.rank_pattern, module_name, self.settings.rank))

    def alpha_for(self, module_name: str) -> float:
        return float(lookup(self.alpha_pattern, module_name, self.settings.alpha))

    @classmethod
    def from_adapter(cls, path: str, backbone: str | None = None, **kwargs: Any) -> LoRAModule:
        """A module rebuilt from an adapter directory's JSON (backbone, targets, per-module
        ranks and scalings, labels) with its tensors loaded; safetensors + JSON only."""
        config, _ = load_adapter(path)
        ranks = config.get("rank_pattern") or {}
        scalings = config.get("scaling_pattern") or {}
        settings = from_config(LoRASettings, config, rank=max(ranks.values(), default=8))
        if config.get("method") == cls.method_name:
            kwargs = {**cls.method_arguments(config), **kwargs}
        module = cls(
            backbone=backbone or config["backbone"],
            rank=settings.rank,
            alpha=settings.alpha,
            target_modules=settings.target_modules,
            rank_pattern=ranks,
            alpha_pattern={name: scalings[name] * r for name, r in ranks.items() if name in scalings},
            num_labels=config.get("num_labels", 2),
            label_names=config.get("label_names"),
            **{"pooling": config["pooling"], **kwargs} if "pooling" in config else kwargs,
        )
        module.load_adapter(path)
        return module

    @classmethod
    def method_arguments(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments of a method built on LoRA read back from its own
        ``adapter_config.json`` (its settings dataclass); plain LoRA has none beyond
        :class:`LoRASettings`."""
        return {}

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
        layers = self._lora_layers()
        ranks = {name: layer.rank for name, layer in layers}
        scalings = {name: layer.scaling for name, layer in layers}
        return self._lora_config(self.sites, ranks, scalings, self.rank_cap)

    def _lora_config(
        self, sites: list[AdapterSite], ranks: dict[str, int], scalings: dict[str, float], rank_cap: int | None
    ) -> dict[str, Any]:
        return {
            **asdict(self.settings),
            "rank_cap": rank_cap,
            "rank_pattern": ranks,
            "scaling_pattern": scalings,
            "sites": [site.to_dict() for site in sites],
        }


    @property
    def target_modules(self) -> list[str]:
        return self.settings.target_modules

    def _lora_layers(self) -> list[tuple[str, LoRALinear]]:
        return [(site.name, self.backbone.get_submodule(site.name)) for site in self.sites]

"""LoRA as a LightningModule."""

from __future__ import annotations

from typing import Any

from pefthub.adapters.inject import AdapterSite, find_targets, inject_adapters
from pefthub.adapters.io import load_adapter
from pefthub.adapters.lora import LoRALinear
from pefthub.backbones import default_targets
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
            ``rank_pattern``; a key matches a module named like it or ending in ``.<key>``).
        alpha_pattern: per-module alpha overrides, same key rules.
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
        **kwargs: Any,
    ) -> None:
        if rank < 1:
            raise ValueError(f"model.rank must be >= 1, got {rank}")
        self.rank = rank
        self.alpha = alpha
        self.rank_pattern = dict(rank_pattern or {})
        self.alpha_pattern = dict(alpha_pattern or {})
        self.lora_dropout = dropout
        self.target_modules = list(target_modules) if target_modules else None
        self.sites: list[AdapterSite] = []
        super().__init__(**kwargs)

    def build_adapters(self) -> None:
        patterns = self.target_modules or list(default_targets(self.family))
        self.target_modules = patterns
        for name, _ in find_targets(self.backbone, patterns):
            linear = self.backbone.get_submodule(name)
            rank = self.rank_for(name)
            if not 0 <= rank <= min(linear.in_features, linear.out_features):
                raise ValueError(
                    f"model.rank={rank} for target {name!r} is outside [0, min(d_in, d_out)] = "
                    f"[0, {min(linear.in_features, linear.out_features)}]; lower the rank or exclude that module"
                )
        self.sites = inject_adapters(
            self.backbone,
            patterns,
            lambda linear, site: LoRALinear(
                linear, rank=self.rank_for(site.name), alpha=self.alpha_for(site.name), dropout=self.lora_dropout
            ),
        )

    def rank_for(self, module_name: str) -> int:
        return int(_pattern_lookup(self.rank_pattern, module_name, self.rank))

    def alpha_for(self, module_name: str) -> float:
        return float(_pattern_lookup(self.alpha_pattern, module_name, self.alpha))

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

    def adapter_config(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "rank_pattern": {name: layer.rank for name, layer in self._lora_layers()},
            "scaling_pattern": {name: layer.scaling for name, layer in self._lora_layers()},
            "sites": [site.to_dict() for site in self.sites],
        }


    def _lora_layers(self) -> list[tuple[str, LoRALinear]]:
        return [(site.name, self.backbone.get_submodule(site.name)) for site in self.sites]


def _pattern_lookup(pattern: dict[str, Any], module_name: str, default: Any) -> Any:
    """Exact module name first, then the longest key that is a dotted suffix of it."""
    if module_name in pattern:
        return pattern[module_name]
    matches = [key for key in pattern if module_name.endswith("." + key)]
    return pattern[max(matches, key=len)] if matches else default

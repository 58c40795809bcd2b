"""LoRA as a LightningModule."""

from __future__ import annotations

from typing import Any

from pefthub.adapters.inject import AdapterSite, inject_adapters
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
        **kwargs: the shared arguments of :class:`~pefthub.methods.base.PEFTModule`.
    """

    method_name = "lora"

    def __init__(
        self,
        rank: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if rank < 1:
            raise ValueError(f"model.rank must be >= 1, got {rank}")
        self.rank = rank
        self.alpha = alpha
        self.lora_dropout = dropout
        self.target_modules = list(target_modules) if target_modules else None
        self.sites: list[AdapterSite] = []
        super().__init__(**kwargs)

    def build_adapters(self) -> None:
        patterns = self.target_modules or list(default_targets(self.family))
        self.target_modules = patterns
        for name, pattern in _find_too_small(self.backbone, patterns, self.rank):
            raise ValueError(
                f"model.rank={self.rank} exceeds min(d_in, d_out) of target {name!r} ({pattern}); "
                "lower the rank or exclude that module"
            )
        self.sites = inject_adapters(
            self.backbone,
            patterns,
            lambda linear, site: LoRALinear(linear, rank=self.rank, alpha=self.alpha, dropout=self.lora_dropout),
        )

    def adapter_config(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.lora_dropout,
            "target_modules": self.target_modules,
            "rank_pattern": {site.name: self.rank for site in self.sites},
            "sites": [site.to_dict() for site in self.sites],
        }


def _find_too_small(backbone, patterns: list[str], rank: int):
    from pefthub.adapters.inject import find_targets

    for name, pattern in find_targets(backbone, patterns):
        linear = backbone.get_submodule(name)
        if rank > min(linear.in_features, linear.out_features):
            yield name, pattern

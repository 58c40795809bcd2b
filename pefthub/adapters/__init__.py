"""Adapter math in plain torch (no Lightning imports)."""

from pefthub.adapters.adalora import SVDLinear, export_as_lora
from pefthub.adapters.inject import (
    AdapterSite,
    adapter_modules,
    adapter_state,
    find_targets,
    inject_adapters,
    mark_only_adapters_trainable,
)
from pefthub.adapters.lora import LoRALinear
from pefthub.adapters.rank_allocation import RankAllocator
from pefthub.adapters.vera import VeRALinear, VeRAProjections

__all__ = [
    "AdapterSite",
    "RankAllocator",
    "SVDLinear",
    "export_as_lora",
    "LoRALinear",
    "VeRALinear",
    "VeRAProjections",
    "adapter_modules",
    "adapter_state",
    "find_targets",
    "inject_adapters",
    "mark_only_adapters_trainable",
]

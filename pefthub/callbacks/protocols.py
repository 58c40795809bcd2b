"""What each phase callback needs from the LightningModule it drives.

A phase callback (rank allocation, importance warm-up, rank reallocation, δθ tuning) talks to
its module only through one of these Protocols: the contract is written down and checked once,
in the callback's ``setup``, so a callback attached to the wrong method stops with a one-line
error naming the method it needs instead of an ``AttributeError`` deep inside training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from pefthub.adapters.inject import AdapterSite
    from pefthub.adapters.rank_allocation import RankAllocator
    from pefthub.importance_estimator import ImportanceEstimator


@runtime_checkable
class RankAllocatingModule(Protocol):
    """AdaLoRA: a :class:`~pefthub.adapters.rank_allocation.RankAllocator` stepped once per optimiser step."""

    allocator: RankAllocator

    def active_adapter_parameters(self) -> int: ...


@runtime_checkable
class ImportanceWarmupModule(Protocol):
    """FW/IW-LoRA and GLoRA: adapter layers whose gradients an estimator observes for a warm-up."""

    importance_estimator: ImportanceEstimator

    def importance_layers(self) -> dict[str, nn.Module]: ...

    def importance_summary(self) -> dict[str, dict[str, float]]: ...

    def on_importance_frozen(self) -> None: ...

    def reduce_importance(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None: ...

    def load_importance_state(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class RankReallocatingModule(Protocol):
    """GLoRA: ranks rebuilt once after the warm-up; the module decides what, the callback when."""

    sites: list[AdapterSite]
    reallocated: bool

    def reallocation_pending(self) -> bool: ...

    def reallocate(self) -> dict[str, int]: ...

    def current_ranks(self) -> dict[str, int]: ...


@runtime_checkable
class DeltaTunableModule(Protocol):
    """UniHyperLoRA: everything frozen but δθ (and a new head, when the module started one)."""

    init_head: bool

    def freeze_for_delta_phase(self) -> dict[str, int]: ...


@runtime_checkable
class HFRankAllocatingModule(Protocol):
    """The HF PEFT AdaLoRA reference: PEFT's own allocator, stepped once per optimiser step."""

    def set_total_steps(self, total: int) -> None: ...

    def allocate(self, step: int) -> None: ...


# the method each Protocol is provided by, for the error message
PROVIDERS: dict[type, str] = {
    RankAllocatingModule: "pefthub.methods.AdaLoRAModule",
    ImportanceWarmupModule: "pefthub.methods.ImportanceLoRAModule or pefthub.methods.GLoRAModule",
    RankReallocatingModule: "pefthub.methods.GLoRAModule",
    DeltaTunableModule: "pefthub.methods.UniHyperLoRAModule",
    HFRankAllocatingModule: "pefthub.methods.HFPEFTAdaLoRAModule",
}


def require(pl_module: Any, protocol: type, callback: str) -> None:
    """Raise a one-line TypeError unless ``pl_module`` provides ``protocol``."""
    if not isinstance(pl_module, protocol):
        raise TypeError(
            f"{callback} needs a {protocol.__name__} (model.class_path: {PROVIDERS[protocol]}), "
            f"got {type(pl_module).__name__}"
        )

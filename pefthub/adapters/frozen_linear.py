"""The part every adapter layer shares: a frozen ``nn.Linear`` it owns and wraps."""

from __future__ import annotations

from torch import nn


class FrozenLinearWrapper(nn.Module):
    """Base of the adapter layers (LoRA, AdaLoRA, VeRA, UniHyperLoRA): holds ``base``, the
    wrapped ``nn.Linear`` (owned, not copied, and frozen), and exposes its widths.

    Args:
        base: the linear layer to wrap; anything else is a ``TypeError`` naming the subclass.
    """

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"{type(self).__name__} wraps nn.Linear, got {type(base).__name__}")
        self.base = base
        self.base.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

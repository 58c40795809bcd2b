"""LoRA: ``y = W x + (alpha / r) * B A dropout(x)`` (Hu et al., 2021).

Plain torch, no Lightning. ``A`` (r x d_in) is Kaiming-uniform, ``B`` (d_out x r) zeros,
so a fresh adapter leaves the host's outputs unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a low-rank update of (possibly zero) rank ``rank``.

    Args:
        base: the frozen linear layer; it is owned (not copied) and kept frozen.
        rank: r; ``0`` means no adapter at this layer (forward is the base layer's).
        alpha: scaling numerator; the update is scaled by ``alpha / rank``.
        dropout: dropout probability on the adapter's input.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        max_rank = min(base.in_features, base.out_features)
        if rank < 0 or rank > max_rank:
            raise ValueError(
                f"LoRA rank must be in [0, min(d_in, d_out)] = [0, {max_rank}] for this layer, got {rank}"
            )
        self.base = base
        self.base.requires_grad_(False)
        self.alpha = float(alpha)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=weight.dtype, device=weight.device))
        self.reset_lora_parameters()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank if self.rank > 0 else 0.0

    def reset_lora_parameters(self) -> None:
        """A ~ Kaiming-uniform (as ``nn.Linear`` and HF PEFT), B = 0."""
        if self.rank > 0:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The trainable tensors of this layer, by local name (the saving/freezing protocol)."""
        return {"lora_A": self.lora_A, "lora_B": self.lora_B}

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (alpha / r) B A, shape (d_out, d_in). Only for merging and tests."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged or self.rank == 0:
            return result
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return result + update * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into the frozen weight (W ← W + ΔW); forward then costs nothing extra."""
        if not self.merged and self.rank > 0:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (W ← W − ΔW)."""
        if self.merged and self.rank > 0:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha}"

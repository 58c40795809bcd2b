"""g_θ, UniHyperLoRA's mixer: how much of each atom a layer uses, from its depth and type. Plain torch."""

from __future__ import annotations

import math

import torch
from torch import nn


class SineMixer(nn.Module):
    """g_θ: ``m(ℓ/L, type) = 1 + W₂ sin(W₁ [ℓ/L; one-hot(type)] + b₁) + b₂ + δθ[type] ∈ R^M``.

    The ``1 +`` keeps every atom usable at start and leaves only small values to quantise.
    δθ (``delta``, T×M, zeros) is the host-adaptation bias tuned alone after a transfer.
    """

    def __init__(self, num_atoms: int, num_types: int, hidden: int = 16, omega: float = 2.0) -> None:
        super().__init__()
        self.num_types = num_types
        self.inner = nn.Linear(1 + num_types, hidden)
        self.outer = nn.Linear(hidden, num_atoms)
        self.delta = nn.Parameter(torch.zeros(num_types, num_atoms))
        with torch.no_grad():
            nn.init.normal_(self.inner.weight, std=omega)
            nn.init.uniform_(self.inner.bias, -math.pi, math.pi)
            nn.init.normal_(self.outer.weight, std=0.1 / math.sqrt(hidden))
            nn.init.zeros_(self.outer.bias)

    def forward(self, depth_fraction: float, type_index: int) -> torch.Tensor:
        code = torch.zeros(1, 1 + self.num_types, device=self.delta.device, dtype=self.delta.dtype)
        code[0, 0] = depth_fraction
        code[0, 1 + type_index] = 1.0
        return 1.0 + self.outer(torch.sin(self.inner(code)))[0] + self.delta[type_index]

    def table(self, codes: torch.Tensor, type_indices: torch.Tensor) -> torch.Tensor:
        """``m`` for many sites at once: ``codes`` (n, 1 + T) rows ``[ℓ/L; one-hot(type)]``,
        ``type_indices`` (n,) → (n, M). One batched evaluation per host forward instead of one
        per adapted layer (the step is launch-bound on a GPU)."""
        return 1.0 + self.outer(torch.sin(self.inner(codes))) + self.delta[type_indices]

    def macs(self) -> int:
        """Multiply-adds of one call (the two linear layers)."""
        return self.inner.in_features * self.inner.out_features + self.outer.in_features * self.outer.out_features

    def base_parameters(self) -> dict[str, nn.Parameter]:
        """θ without δθ."""
        return {n: p for n, p in self.named_parameters() if n != "delta"}

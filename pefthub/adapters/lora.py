"""LoRA: ``y = W x + (alpha / r) * B A dropout(x)`` (Hu et al., 2021).

Plain torch, no Lightning. ``A`` (r x d_in) is Kaiming-uniform, ``B`` (d_out x r) zeros,
so a fresh adapter leaves the host's outputs unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pefthub.adapters.frozen_linear import FrozenLinearWrapper
from pefthub.adapters.lowrank_update import adapted_linear, dropout_probability


class LoRALinear(FrozenLinearWrapper):
    """A frozen ``nn.Linear`` plus a low-rank update of (possibly zero) rank ``rank``.

    Args:
        base: the frozen linear layer; it is owned (not copied) and kept frozen.
        rank: r; ``0`` means no adapter at this layer (forward is the base layer's).
        alpha: scaling numerator; the update is scaled by ``alpha / rank``.
        dropout: dropout probability on the adapter's input.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__(base)
        max_rank = min(base.in_features, base.out_features)
        if rank < 0 or rank > max_rank:
            raise ValueError(
                f"LoRA rank must be in [0, min(d_in, d_out)] = [0, {max_rank}] for this layer, got {rank}"
            )
        self.alpha = float(alpha)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.fast_cpu_kernels = True  # see pefthub.adapters.lowrank_update; PEFTModule sets it from model.fast_cpu_kernels
        self._transposed: dict[str, torch.Tensor] = {}  # adapted_linear's cache of transposed views
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=weight.dtype, device=weight.device))
        self.reset_lora_parameters()

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

    def column_magnitudes(self) -> torch.Tensor:
        """``‖B[:, i]‖ · ‖A[i, :]‖`` per rank-1 component: the Frobenius norm of ``b_i a_iᵀ``."""
        return self.lora_B.detach().norm(dim=0) * self.lora_A.detach().norm(dim=1)

    @torch.no_grad()
    def resize(
        self,
        new_rank: int,
        keep: list[int] | None = None,
        keep_scaling: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        """Change the rank in place, keeping learned rank-1 components ``(B[:, i], A[i, :])``.

        Kept components come first (in their old order); new ones are LoRA-initialised
        (A rows Kaiming-uniform, B columns zero), so growing the rank changes no output when
        ``keep_scaling`` holds the scaling fixed. Shrinking drops the components not in
        ``keep`` (default: keep the ``new_rank`` largest ``‖B[:, i]‖·‖A[i, :]‖``), which changes
        the output by exactly their sum. Rank 0 removes the adapter. New ``nn.Parameter``
        objects replace ``lora_A``/``lora_B`` when the rank changes: rebuild the optimiser.

        Args:
            new_rank: the new r, in [0, min(d_in, d_out)].
            keep: old component indices to keep (at most ``new_rank``, no duplicates).
            keep_scaling: set ``alpha`` so that ``alpha / rank`` stays what it was (ΔW of the
                kept components is then unchanged); otherwise keep ``alpha``.
            generator: random source for the new A rows (reproducible reallocation).
        """
        max_rank = min(self.in_features, self.out_features)
        if not 0 <= new_rank <= max_rank:
            raise ValueError(f"LoRA rank must be in [0, {max_rank}] for this layer, got {new_rank}")
        if self.merged:
            raise RuntimeError("unmerge() the adapter before resizing it")
        old_rank = self.rank
        if keep is None:
            order = torch.argsort(self.column_magnitudes(), descending=True, stable=True)
            keep = sorted(order[: min(old_rank, new_rank)].tolist())
        keep = list(keep)
        if len(keep) > new_rank or len(set(keep)) != len(keep) or any(not 0 <= i < old_rank for i in keep):
            raise ValueError(f"keep must list at most {new_rank} distinct indices in [0, {old_rank}), got {keep}")
        if new_rank == old_rank and keep == list(range(old_rank)):
            return
        old_scaling = self.scaling
        weight = self.lora_A
        new_A = torch.empty(new_rank, self.in_features, dtype=weight.dtype, device=weight.device)
        new_B = torch.zeros(self.out_features, new_rank, dtype=weight.dtype, device=weight.device)
        if new_rank > len(keep):
            nn.init.kaiming_uniform_(new_A[len(keep):], a=math.sqrt(5), generator=generator)
        if keep:
            index = torch.tensor(keep, device=weight.device)
            new_A[: len(keep)] = self.lora_A.index_select(0, index)
            new_B[:, : len(keep)] = self.lora_B.index_select(1, index)
        self.lora_A = nn.Parameter(new_A, requires_grad=self.lora_A.requires_grad)
        self.lora_B = nn.Parameter(new_B, requires_grad=self.lora_B.requires_grad)
        if keep_scaling and old_rank > 0:
            self.alpha = old_scaling * new_rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or self.rank == 0:
            return self.base(x)
        return adapted_linear(
            x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scaling,
            dropout=dropout_probability(self.dropout), training=self.training, fast_cpu_kernels=self.fast_cpu_kernels, cache=self._transposed,
        )

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

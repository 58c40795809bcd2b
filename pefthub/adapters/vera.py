"""VeRA: vector-based random matrix adaptation (Kopiczko et al., ICLR 2024).

Plain torch, no Lightning. One frozen random pair ``A ∈ R^{r×d_in_max}``,
``B ∈ R^{d_out_max×r}`` is shared by every adapted layer; a layer of shape
``(d_out, d_in)`` uses the slices ``A[:, :d_in]`` and ``B[:d_out, :]``. Each layer trains
only two vectors, ``d ∈ R^r`` and ``b ∈ R^{d_out}``::

    y = W x + Λ_b B Λ_d A x = W x + b ⊙ (B[:d_out] (d ⊙ (A[:, :d_in] dropout(x))))

so a layer costs ``r + d_out`` trainable numbers whatever its width. Conventions follow
HF PEFT's ``VeraConfig`` (the reference): A and B are Kaiming-uniform (ReLU gain,
fan-in mode) drawn from a CPU ``torch.Generator`` seeded with ``projection_prng_key``,
A first, then B; ``d`` starts at ``d_initial`` (0.1) and ``b`` at zero (so a fresh adapter
leaves the host unchanged); there is no extra scaling factor. With the same key and
shapes the projections are bit-identical to PEFT's.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from pefthub.adapters.frozen_linear import FrozenLinearWrapper


def random_projection(shape: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """A float32 CPU tensor of ``shape`` drawn Kaiming-uniform (fan-in = ``shape[1]``,
    ReLU gain, i.e. U(−√(6/fan_in), √(6/fan_in))) from ``generator``."""
    tensor = torch.empty(shape, dtype=torch.float32)
    with torch.no_grad():
        nn.init.kaiming_uniform_(tensor, a=0.0, mode="fan_in", nonlinearity="relu", generator=generator)
    return tensor


class VeRAProjections(nn.Module):
    """The shared frozen pair (A, B), regenerated from a seed (non-persistent buffers).

    Args:
        rank: r, the shared inner dimension (may exceed a layer's width).
        d_in: largest input width over the adapted layers (A has this many columns).
        d_out: largest output width over the adapted layers (B has this many rows).
        seed: ``projection_prng_key``; the generator draws A first, then B.
    """

    def __init__(self, rank: int, d_in: int, d_out: int, seed: int = 0) -> None:
        super().__init__()
        if rank < 1 or d_in < 1 or d_out < 1:
            raise ValueError(f"VeRA projections need rank, d_in, d_out >= 1, got rank={rank}, d_in={d_in}, d_out={d_out}")
        self.seed = int(seed)
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        self.register_buffer("vera_A", random_projection((rank, d_in), generator), persistent=False)
        self.register_buffer("vera_B", random_projection((d_out, rank), generator), persistent=False)

    @property
    def rank(self) -> int:
        return self.vera_A.shape[0]

    @property
    def d_in(self) -> int:
        return self.vera_A.shape[1]

    @property
    def d_out(self) -> int:
        return self.vera_B.shape[0]

    def fingerprint(self) -> str:
        """SHA-256 of A and B (float32, C order): lets a loader prove that regenerating
        the projections from the seed gave the same matrices that were trained with."""
        digest = hashlib.sha256()
        for tensor in (self.vera_A, self.vera_B):
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def extra_repr(self) -> str:
        return f"rank={self.rank}, d_in={self.d_in}, d_out={self.d_out}, seed={self.seed}"


class VeRALinear(FrozenLinearWrapper):
    """A frozen ``nn.Linear`` plus ``Λ_b B Λ_d A`` with shared frozen A, B.

    Args:
        base: the frozen linear layer; owned (not copied) and kept frozen.
        projections: the shared :class:`VeRAProjections`; registered as a submodule of
            every layer that uses it (one object, so ``.to()`` moves it once and the
            buffers stay out of state dicts).
        d_initial: initial value of every entry of ``d`` (PEFT default 0.1).
        dropout: dropout probability on the adapter's input.
    """

    def __init__(self, base: nn.Linear, projections: VeRAProjections, d_initial: float = 0.1, dropout: float = 0.0) -> None:
        super().__init__(base)
        if projections.d_in < base.in_features or projections.d_out < base.out_features:
            raise ValueError(
                f"shared VeRA projections are {projections.d_out}x{projections.d_in} (d_out x d_in) but this layer is "
                f"{base.out_features}x{base.in_features}; size them to the largest adapted layer"
            )
        self.projections = projections
        self.d_initial = float(d_initial)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        weight = base.weight
        self.vera_lambda_d = nn.Parameter(torch.empty(projections.rank, dtype=weight.dtype, device=weight.device))
        self.vera_lambda_b = nn.Parameter(torch.empty(base.out_features, dtype=weight.dtype, device=weight.device))
        self.reset_vera_parameters()

    @property
    def rank(self) -> int:
        return self.projections.rank

    def reset_vera_parameters(self) -> None:
        """d = d_initial (every entry), b = 0: the update starts at exactly zero."""
        with torch.no_grad():
            self.vera_lambda_d.fill_(self.d_initial)
            self.vera_lambda_b.zero_()

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The trainable tensors of this layer, by local name (the saving/freezing protocol)."""
        return {"vera_lambda_d": self.vera_lambda_d, "vera_lambda_b": self.vera_lambda_b}

    def sliced_projections(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A[:, :d_in], B[:d_out, :])`` of the shared pair, cast to ``dtype`` when given."""
        A = self.projections.vera_A[:, : self.in_features]
        B = self.projections.vera_B[: self.out_features, :]
        if dtype is not None and A.dtype != dtype:
            A, B = A.to(dtype), B.to(dtype)
        return A, B

    def delta_weight(self) -> torch.Tensor:
        """ΔW = diag(b) B diag(d) A, shape (d_out, d_in). Only for merging and tests."""
        A, B = self.sliced_projections(self.vera_lambda_d.dtype)
        return (self.vera_lambda_b.unsqueeze(1) * B) @ (self.vera_lambda_d.unsqueeze(1) * A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.base(x)
        if self.merged:
            return result
        A, B = self.sliced_projections(x.dtype)
        update = F.linear(self.vera_lambda_d.to(x.dtype) * F.linear(self.dropout(x), A), B)
        return result + self.vera_lambda_b.to(x.dtype) * update

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into the frozen weight (W ← W + ΔW); forward then costs nothing extra."""
        if not self.merged:
            self.base.weight += self.delta_weight().to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (W ← W − ΔW)."""
        if self.merged:
            self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, d_initial={self.d_initial}"

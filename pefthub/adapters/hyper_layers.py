"""UniHyperLoRA's per-layer modules: :class:`HyperLinear` (a frozen linear plus the routed
update) and :class:`PortableHead` (a task head any host can use). They own no adapter tensors:
both read the one :class:`~pefthub.adapters.hyper_shared.HyperShared`. Plain torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from pefthub.adapters.frozen_linear import FrozenLinearWrapper
from pefthub.adapters.hyper_shared import HyperShared
from pefthub.adapters.hyper_types import CANONICAL_TYPES
from pefthub.adapters.lowrank_update import (
    adapter_dropout,
    adapter_dropout_backward,
    cached_transpose,
    dropout_probability,
)


class _DenseGatedUpdate(torch.autograd.Function):
    """``y = W x + b + s · ((x̃ Ṽᵀ) ⊙ Gm) Ũ`` for one layer, Gm = G ⊙ m (tokens × M, k non-zeros
    per row): the routed update written as one rank-M product, with the backward written out
    (about 20 aten ops a layer; autograd's composition takes ~50 with the top-k gathers). With
    g = ∂L/∂y, a = x̃ Ṽᵀ, c = a ⊙ Gm:

        ∂L/∂c = s g Ũᵀ,  ∂L/∂Ũ = s cᵀ g,  ∂L/∂a = ∂L/∂c ⊙ Gm,  ∂L/∂Ṽ = (∂L/∂a)ᵀ x̃,
        ∂L/∂Gm = ∂L/∂c ⊙ a,  ∂L/∂x = g W + drop'((∂L/∂a) Ṽ)
    """

    @staticmethod
    def forward(ctx, x, weight, bias, folded_in, folded_out, gated, scale: float, p: float, fast_cpu: bool, transposed):  # noqa: ANN001, ANN205
        weight_t, folded_in_t, folded_out_t = transposed if transposed is not None else (weight.t(), folded_in.t(), folded_out.t())
        x2 = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        xd, mask, inverse_keep, fast = adapter_dropout(x2, p, fast_cpu)
        out = torch.addmm(bias, x2, weight_t) if bias is not None else torch.mm(x2, weight_t)
        responses = torch.mm(xd, folded_in_t)  # a = x̃ Ṽᵀ, (N, M)
        if inverse_keep != 1.0:
            responses.mul_(inverse_keep)
        coefficients = responses * gated
        out.addmm_(coefficients, folded_out, alpha=scale)
        ctx.save_for_backward(weight, folded_in, folded_out_t, gated, xd, mask, responses, coefficients)
        ctx.scale, ctx.p, ctx.inverse_keep, ctx.fast_cpu = scale, p, inverse_keep, fast
        ctx.x_shape = x.shape
        if mask is not None:
            ctx.mark_non_differentiable(mask)
        return out if x.dim() == 2 else out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        weight, folded_in, folded_out_t, gated, xd, mask, responses, coefficients = ctx.saved_tensors
        need_x, _, _, need_in, need_out, need_gated = ctx.needs_input_grad[:6]
        g = grad_out if grad_out.dim() == 2 else grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_in = grad_out_folded = grad_gated = None
        grad_c = torch.addmm(coefficients, g, folded_out_t, beta=0, alpha=ctx.scale)  # s g Ũᵀ
        if need_out:
            grad_out_folded = torch.mm(coefficients.t(), g).mul_(ctx.scale) if ctx.scale != 1.0 else torch.mm(coefficients.t(), g)
        if need_gated:
            grad_gated = grad_c * responses
        if need_x or need_in:
            grad_a = grad_c * gated
            if ctx.inverse_keep != 1.0:
                grad_a.mul_(ctx.inverse_keep)
            if need_in:
                grad_in = torch.mm(grad_a.t(), xd)
            if need_x:
                grad_x = adapter_dropout_backward(torch.mm(grad_a, folded_in), mask, ctx.p, ctx.fast_cpu)
                grad_x = torch.addmm(grad_x, g, weight)
                if len(ctx.x_shape) != 2:
                    grad_x = grad_x.view(ctx.x_shape)
        return grad_x, None, None, grad_in, grad_out_folded, grad_gated, None, None, None, None


class HyperLinear(FrozenLinearWrapper):
    """A frozen ``nn.Linear`` plus the UniHyperLoRA update at one site.

    It owns no parameters: ``adapter_parameters()`` is empty and the shared
    :class:`HyperShared` is held by an unregistered reference (so it is saved once, by its owner).

    Args:
        base: the frozen linear layer (owned, kept frozen).
        shared: the shared components.
        depth: transformer block index ℓ (-1: none).
        type_index: index of the canonical module type in :data:`CANONICAL_TYPES`.
        dropout: dropout on the adapter's input.
    """

    def __init__(self, base: nn.Linear, shared: HyperShared, depth: int, type_index: int, dropout: float = 0.0) -> None:
        super().__init__(base)
        self.depth = depth
        self.type_index = type_index
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fast_cpu_kernels = True  # see pefthub.adapters.lowrank_update; PEFTModule sets it from model.fast_cpu_kernels
        self._transposed: dict[str, torch.Tensor] = {}  # cached transposed view of the frozen weight
        object.__setattr__(self, "_shared", shared)  # not a submodule
        self.site_index = shared.register_site(depth, type_index, base.in_features, base.out_features)

    @property
    def shared(self) -> HyperShared:
        return self._shared

    @property
    def depth_fraction(self) -> float:
        return max(self.depth, 0) / self.shared.num_layers

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """None of its own: every UniHyperLoRA parameter is shared (see :class:`HyperShared`)."""
        return {}

    def mixer_weights(self) -> torch.Tensor:
        """``m(ℓ/L, type) ∈ R^M`` (this site's row of the shared per-forward mixer table)."""
        return self.shared.mixer_row(self.site_index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared
        if shared.bypass:
            return self.base(x)
        if shared.use_dense(x):
            return self._dense_forward(x)
        result = self.base(x)
        indices, gates = shared.routing_for(self.depth, x)
        weights = gates * self.mixer_weights()[indices]  # g_j = π_j m_j, (..., k)
        v_rows = shared.folded_in(self.in_features)[indices]  # (..., k, d_in)
        u_rows = shared.folded_out(self.out_features)[indices]  # (..., k, d_out)
        k = indices.shape[-1]
        flat_x = self.dropout(x).reshape(-1, self.in_features, 1)
        # a_j = ṽ_j · x for the k selected atoms only: (N, k, d_in) @ (N, d_in, 1)
        responses = torch.bmm(v_rows.reshape(-1, k, self.in_features).to(x.dtype), flat_x)
        coefficients = weights.reshape(-1, 1, k).to(x.dtype) * responses.transpose(1, 2)  # (N, 1, k)
        # Σ_j g_j a_j ũ_j: (N, 1, k) @ (N, k, d_out)
        update = torch.bmm(coefficients, u_rows.reshape(-1, k, self.out_features).to(x.dtype))
        return result + shared.scaling * update.reshape(result.shape)

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self.shared
        gated = shared.gated_mixer(self.depth, self.site_index, x)
        weight, bias = self.base.weight, self.base.bias
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            folded_in, folded_out = shared.folded_in(self.in_features), shared.folded_out(self.out_features)
            x, weight, folded_in, folded_out, gated = (t.to(dtype) for t in (x, weight, folded_in, folded_out, gated))
            bias = bias.to(dtype) if bias is not None else None
            with torch.autocast(device_type, enabled=False):
                return _DenseGatedUpdate.apply(x, weight, bias, folded_in, folded_out, gated, float(shared.scaling),
                                               dropout_probability(self.dropout) if self.training else 0.0, self.fast_cpu_kernels, None)
        folded_in, folded_out, folded_in_t, folded_out_t = shared.folded_for_site(self.site_index)
        transposed = (cached_transpose(self._transposed, "weight", weight), folded_in_t, folded_out_t)
        return _DenseGatedUpdate.apply(x, weight, bias, folded_in, folded_out, gated, float(shared.scaling),
                                       dropout_probability(self.dropout) if self.training else 0.0, self.fast_cpu_kernels,
                                       transposed)

    def delta_weight(self, indices: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """ΔW of ONE token with atoms ``indices`` (k,) and gates (k,): ``s Σ_j π_j m_j P_out u_j v_jᵀ P_in``.
        Only for tests (the forward never forms it)."""
        shared = self.shared
        p_out, _ = shared.projectors(self.out_features)
        _, p_in = shared.projectors(self.in_features)
        weights = gates * self.mixer_weights()[indices]
        core = (shared.atoms_U[indices].t() * weights) @ shared.atoms_V[indices]  # (d0, d0)
        return shared.scaling * p_out @ core @ p_in

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, depth={self.depth}, "
            f"type={CANONICAL_TYPES[self.type_index]}"
        )


class PortableHead(nn.Module):
    """A task head any host can use: ``logits = W_h LN(P_in(d) h) + b`` on the pooled hidden state
    (LN without affine parameters, so hosts with differently scaled states land on one scale)."""

    def __init__(self, shared: HyperShared, num_labels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(shared.d0, num_labels)
        object.__setattr__(self, "_shared", shared)

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        _, p_in = self._shared.projectors(pooled.shape[-1])
        canonical = F.linear(pooled, p_in.to(pooled.dtype))
        return self.linear(F.layer_norm(canonical, (canonical.shape[-1],)))

"""AdaLoRA (Zhang et al., ICLR 2023): an SVD-shaped update whose rank moves between layers.

Plain torch, no Lightning.

``SVDLinear``:  y = W x + (α / r0) · P Λ Q dropout(x),   P ∈ R^{d_out×r0}, Λ = diag(λ), Q ∈ R^{r0×d_in}

The scale is α / r0 with r0 the *initial* rank, fixed for the whole run (the authors'
``loralib`` and HF PEFT do the same, PEFT as ``α / (r0 + 1e-5)``); pruning a triplet then
does not rescale the others. λ starts at zero and P, Q at N(0, 0.02²), so a fresh adapter
leaves the host's outputs unchanged.

``RankAllocator`` (:mod:`pefthub.adapters.rank_allocation`) owns the importance statistics and decides which triplets survive;
``orthogonal_regularization`` is the penalty that keeps P and Q near-orthogonal, so that
zeroing λ_i removes one direction and P Λ Q stays SVD-like.

Masking is *soft*, as in the paper and PEFT: a pruned triplet has λ_i set to zero but keeps
P_{:,i}, Q_{i,:} and its gradient, so during the budget-reduction phase it can come back at
the next allocation; from step T − t_f on the final mask is re-applied after every step.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from pefthub.adapters.frozen_linear import FrozenLinearWrapper
from pefthub.adapters.lowrank_update import adapted_linear, dropout_probability

ORTH_REG_FORMS = ("mean_norm", "sum_squared")


class SVDLinear(FrozenLinearWrapper):
    """A frozen ``nn.Linear`` plus AdaLoRA's update ``(α / r0) · P diag(λ) Q``.

    Args:
        base: the frozen linear layer (owned, kept frozen).
        rank: r0, the initial number of singular triplets (1 <= r0 <= min(d_in, d_out)).
        alpha: scaling numerator; the update is multiplied by ``alpha / rank`` (fixed).
        dropout: dropout probability on the adapter's input.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__(base)
        max_rank = min(base.in_features, base.out_features)
        if not 1 <= rank <= max_rank:
            raise ValueError(f"AdaLoRA initial rank must be in [1, min(d_in, d_out)] = [1, {max_rank}] for this layer, got {rank}")
        self.alpha = float(alpha)
        self.init_rank = int(rank)
        self.scaling = self.alpha / self.init_rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fast_cpu_kernels = True  # see pefthub.adapters.lowrank_update; PEFTModule sets it from model.fast_cpu_kernels
        self._transposed: dict[str, torch.Tensor] = {}  # adapted_linear's cache of transposed views
        self.folded_P: torch.Tensor | None = None  # P diag(λ) for the current forward (singular_values_folded)
        weight = base.weight
        kwargs = {"dtype": weight.dtype, "device": weight.device}
        self.lora_P = nn.Parameter(torch.empty(base.out_features, rank, **kwargs))  # left singular vectors
        self.lora_lambda = nn.Parameter(torch.zeros(rank, **kwargs))  # singular values
        self.lora_Q = nn.Parameter(torch.empty(rank, base.in_features, **kwargs))  # right singular vectors
        # Which triplets the last allocation kept. Persistent: it is saved in checkpoints and
        # adapter files; λ is *not* multiplied by it in forward (masking zeroes λ in place).
        self.register_buffer("rank_mask", torch.ones(rank, dtype=torch.bool, device=weight.device))
        self.reset_parameters()

    @property
    def active_rank(self) -> int:
        """Number of triplets kept by the last allocation."""
        return int(self.rank_mask.sum())

    def reset_parameters(self) -> None:
        """λ = 0; P, Q ~ N(0, 0.02²) (the paper's and PEFT's initialisation)."""
        nn.init.zeros_(self.lora_lambda)
        nn.init.normal_(self.lora_P, mean=0.0, std=0.02)
        nn.init.normal_(self.lora_Q, mean=0.0, std=0.02)
        self.rank_mask.fill_(True)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        return {"lora_P": self.lora_P, "lora_lambda": self.lora_lambda, "lora_Q": self.lora_Q}

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Record ``mask`` (bool, shape (r0,)) and zero λ where it is False."""
        mask = mask.to(device=self.rank_mask.device, dtype=torch.bool).reshape(-1)
        if mask.shape != self.rank_mask.shape:
            raise ValueError(f"rank mask has {mask.numel()} entries, this layer has {self.init_rank} triplets")
        self.rank_mask.copy_(mask)
        self.apply_mask()

    @torch.no_grad()
    def apply_mask(self) -> None:
        """Zero λ_i for every triplet the current mask drops (P and Q are kept)."""
        self.lora_lambda.masked_fill_(~self.rank_mask, 0.0)

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α / r0) P diag(λ) Q, shape (d_out, d_in). For merging, export and tests."""
        return (self.lora_P * self.lora_lambda) @ self.lora_Q * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # P diag(λ) of this forward when the owner made it for all layers at once
        # (:func:`singular_values_folded`), else λ enters the layer's own function
        if self.folded_P is not None:
            B, lam = self.folded_P, None  # noqa: N806
        else:
            B, lam = self.lora_P, self.lora_lambda  # noqa: N806
        return adapted_linear(
            x, self.base.weight, self.base.bias, self.lora_Q, B, self.scaling, lam=lam,
            dropout=dropout_probability(self.dropout), training=self.training, fast_cpu_kernels=self.fast_cpu_kernels, cache=self._transposed,
        )

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, init_rank={self.init_rank}, active_rank={self.active_rank}, alpha={self.alpha}"


class _FoldSingularValues(torch.autograd.Function):
    """``B_m = P_m diag(λ_m)`` for every layer m in one multi-tensor op, and its backward:

        ∂L/∂P_m = ∂L/∂B_m diag(λ_m),    ∂L/∂λ_m = Σ_k (∂L/∂B_m ⊙ P_m)_k,:

    (column sums batched per shape). With λ folded into B, each layer runs LoRA's fused
    function unchanged; λ in the layer itself costs ~4 aten ops per layer and step."""

    @staticmethod
    def forward(ctx, count: int, *tensors: torch.Tensor):  # noqa: ANN205
        ps, lams = tensors[:count], tensors[count:]
        ctx.save_for_backward(*tensors)
        ctx.count = count
        return tuple(torch._foreach_mul(ps, lams))

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: torch.Tensor):  # noqa: ANN205
        saved = ctx.saved_tensors
        ps, lams = saved[: ctx.count], saved[ctx.count :]
        grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, ps, strict=True)]
        grad_ps = torch._foreach_mul(grads, lams)
        products = torch._foreach_mul(grads, ps)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, product in enumerate(products):
            groups.setdefault(tuple(product.shape), []).append(index)
        grad_lams: list[torch.Tensor | None] = [None] * len(products)
        for indices in groups.values():
            sums = torch.stack([products[i] for i in indices]).sum(1).unbind(0)
            for i, column_sum in zip(indices, sums, strict=True):
                grad_lams[i] = column_sum
        return (None, *grad_ps, *grad_lams)


@contextmanager
def singular_values_folded(layers: Iterable[SVDLinear]):
    """Within the block, every layer's forward uses ``P diag(λ)`` computed for all layers at once
    (:class:`_FoldSingularValues`). Not while tracing or compiling (the layers then use their
    plain composition)."""
    layers = list(layers)
    if not layers or torch.jit.is_tracing() or torch.compiler.is_compiling():
        yield
        return
    folded = _FoldSingularValues.apply(len(layers), *(layer.lora_P for layer in layers), *(layer.lora_lambda for layer in layers))
    for layer, tensor in zip(layers, folded, strict=True):
        layer.folded_P = tensor
    try:
        yield
    finally:
        for layer in layers:
            layer.folded_P = None


def _orthogonality_deviations(
    layers: Mapping[str, SVDLinear] | list[SVDLinear], form: str
) -> list[tuple[str, list[torch.Tensor], torch.Tensor, torch.Tensor]]:
    """Per kind and shape of matrix: ``(kind, matrices, stacked, QQᵀ − I or PᵀP − I)``.

    Matrices of one shape are stacked and handled by one batched product (``bmm``): a handful
    of ops per shape instead of about ten per matrix (the step is launch-bound on a GPU)."""
    if form not in ORTH_REG_FORMS:
        raise ValueError(f"model.orth_reg_form must be one of {ORTH_REG_FORMS}, got {form!r}")
    modules = list(layers.values()) if isinstance(layers, Mapping) else list(layers)
    if not modules:
        raise ValueError("orthogonal_regularization needs at least one SVDLinear layer")
    groups: dict[tuple[str, tuple[int, ...]], list[torch.Tensor]] = {}
    for layer in modules:
        groups.setdefault(("Q", tuple(layer.lora_Q.shape)), []).append(layer.lora_Q)
        groups.setdefault(("P", tuple(layer.lora_P.shape)), []).append(layer.lora_P)
    result = []
    for (kind, _), matrices in groups.items():
        stacked = torch.stack(matrices)
        # Q Qᵀ for the rows of Q, Pᵀ P for the columns of P: both r × r
        cov = torch.bmm(stacked, stacked.transpose(1, 2)) if kind == "Q" else torch.bmm(stacked.transpose(1, 2), stacked)
        result.append((kind, matrices, stacked, cov - torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)))
    return result


def _orthogonality_total(terms: list[torch.Tensor], form: str) -> torch.Tensor:
    values = torch.cat(terms) if len(terms) > 1 else terms[0]
    return values.mean() if form == "mean_norm" else values.sum()


def orthogonal_regularization(layers: Mapping[str, SVDLinear] | list[SVDLinear], form: str = "mean_norm") -> torch.Tensor:
    """R(P, Q) over all AdaLoRA layers; the loss adds γ · R.

    - ``"mean_norm"`` (HF PEFT's ``AdaLoraModel.forward`` and the authors' released
      ``compute_orth_regu``): the mean, over the 2L matrices, of the *unsquared* norms
      ``‖QQᵀ − I‖_F`` and ``‖PᵀP − I‖_F``;
    - ``"sum_squared"`` (the paper's equation): Σ_layers ‖PᵀP − I‖²_F + ‖QQᵀ − I‖²_F.

    Every triplet counts, masked ones included (as in PEFT). Matrices of one shape are handled
    together (:func:`_orthogonality_deviations`).
    """
    deviations = _orthogonality_deviations(layers, form)
    norm = torch.linalg.matrix_norm if form == "mean_norm" else (lambda d: d.pow(2).sum((1, 2)))
    return _orthogonality_total([norm(deviation) for _, _, _, deviation in deviations], form)


@torch.no_grad()
def orthogonal_regularization_gradients(
    layers: Mapping[str, SVDLinear] | list[SVDLinear], form: str = "mean_norm"
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """R(P, Q) and its gradient, in closed form: ``(R, [params], [∂R/∂param])``.

    With D = QQᵀ − I (symmetric) and K the number of matrices:

    - ``mean_norm``:   ∂R/∂Q = 2 D Q / (K ‖D‖_F),   ∂R/∂P = 2 P D / (K ‖D‖_F)   (D = PᵀP − I)
    - ``sum_squared``: ∂R/∂Q = 4 D Q,               ∂R/∂P = 4 P D

    Same value as :func:`orthogonal_regularization` and, to rounding, the same gradient as
    autograd gives for it; computed per shape with batched products and no autograd graph, so
    it adds no backward ops and no second gradient path into P and Q (a GPU step is
    launch-bound). A zero ‖D‖ gives a zero gradient, as autograd's norm does.
    """
    deviations = _orthogonality_deviations(layers, form)
    count = sum(len(matrices) for _, matrices, _, _ in deviations)
    values, params, grads = [], [], []
    for kind, matrices, stacked, deviation in deviations:
        if form == "mean_norm":
            norms = torch.linalg.matrix_norm(deviation)
            values.append(norms)
            deviation.mul_((2.0 / count) / norms.clamp_min(torch.finfo(norms.dtype).tiny).view(-1, 1, 1))
        else:
            values.append(deviation.pow(2).sum((1, 2)))
            deviation.mul_(4.0)
        grad = torch.bmm(deviation, stacked) if kind == "Q" else torch.bmm(stacked, deviation)
        params.extend(matrices)
        grads.extend(grad.unbind(0))
    return _orthogonality_total(values, form), params, grads


# --------------------------------------------------------------------------- export to LoRA


@dataclass
class LoRAExport:
    """An AdaLoRA adapter rewritten as plain LoRA with one rank per matrix.

    For each layer m with kept triplets I_m (|I_m| = r_m):
    A_m = Q[I_m, :]  (r_m × d_in),  B_m = P[:, I_m] diag(λ[I_m])  (d_out × r_m),  scaling α / r0,
    so (α / r0) B_m A_m = ΔW_m (masked triplets have λ_i = 0 and contribute nothing). A LoRA
    with per-matrix rank r_m and alpha_m = (α / r0) · r_m reproduces the AdaLoRA outputs.
    Layers where every triplet was pruned get rank 0 (no update).
    """

    tensors: dict[str, torch.Tensor]  # "<module>.lora_A" (r_m × d_in) / "<module>.lora_B" (d_out × r_m)
    rank_pattern: dict[str, int]
    scaling_pattern: dict[str, float]

    def parameter_count(self) -> int:
        """Σ_m r_m (d_in + d_out): the exported LoRA's parameters."""
        return sum(t.numel() for t in self.tensors.values())


@torch.no_grad()
def export_as_lora(layers: Mapping[str, SVDLinear]) -> LoRAExport:
    """Rewrite AdaLoRA layers as LoRA with per-matrix ranks, dropping the triplets the
    current masks prune (see :class:`LoRAExport` for the algebra)."""
    tensors, ranks, scalings = {}, {}, {}
    for name in sorted(layers):
        layer = layers[name]
        keep = layer.rank_mask.nonzero().view(-1)
        tensors[f"{name}.lora_A"] = layer.lora_Q[keep].detach().clone()
        tensors[f"{name}.lora_B"] = (layer.lora_P[:, keep] * layer.lora_lambda[keep]).detach().clone()
        ranks[name], scalings[name] = int(keep.numel()), layer.scaling
    return LoRAExport(tensors, ranks, scalings)

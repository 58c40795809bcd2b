"""SAT-LoRA: UniHyperLoRA's atoms, mixer, router and head with projectors learned per host.

Not a published method: docs/design.md (section 3) defines it as the baseline the
UniHyperLoRA proposal compares against, and it is also the projector ablation. The only
difference from :class:`~pefthub.methods.unihyperlora.UniHyperLoRAModule` is where
``P_out(d)`` and ``P_in(d)`` come from: free matrices for each distinct width d of the host
(:class:`~pefthub.adapters.hyper.LearnedProjectors`) instead of the generator h_ψ. So the
parameter count and the adapter file grow with the host's widths, and an adapter runs only on
hosts whose widths it has projectors for: it is retrained for each host.
"""

from __future__ import annotations

from typing import Any

from pefthub.methods.unihyperlora import LEARNED_STRUCTURAL_KEYS, UniHyperLoRAModule


class SATLoRAModule(UniHyperLoRAModule):
    """SAT-LoRA on the frozen backbone:
    ``y = W x + s Σ_{j∈top-k} π_j m_j(ℓ/L, type) · P_out(d_out) u_j (v_jᵀ P_in(d_in) x)`` with
    ``P_out(d) ∈ R^{d×d0}``, ``P_in(d) ∈ R^{d0×d}`` trained directly, one pair per width d in
    {hidden size, every adapted layer's d_in and d_out}. Router input and task head read the
    hidden state through ``P_in(hidden)`` as in UniHyperLoRA.

    Adapter file: the projectors are stored int8 with one float16 scale per row, so it holds
    ``Σ_d 2·d·d0`` bytes more than UniHyperLoRA's atoms/mixer/router/head (and no generator);
    its JSON records ``"projector": "learned"`` and the widths. At the UniHyperLoRA defaults
    (M=128, d0=256) on MiniLM-L6 (widths 384, 1536) that is over the 1 MB budget;
    ``configs/satlora/sst2.yaml`` uses the largest d0 that fits (see there).

    Args:
        num_atoms: M, canonical rank-one atoms (u_j, v_j ∈ R^{d0}).
        d0: canonical width (the projectors' column/row count).
        top_k: atoms per token, 1 or 2 (chosen by the router once per block).
        mixer_hidden: hidden width of the sine mixer g_θ.
        mixer_omega: std of the mixer's first-layer weights (sine frequency scale).
        num_tasks: rows of the router's task-embedding table.
        task_dim: size of a task embedding.
        task_id: the task embedding this run uses.
        threshold: router gates σ(logit) below it are zeroed.
        scale: s, multiplies the update.
        update_impl: how each layer computes its update: ``sparse`` (gather the k routed atoms
            per token: the fewest multiply-adds, what the FLOP figures count), ``dense`` (the
            same value as one rank-M product with the gates as a token × atom matrix: M/k times
            the multiply-adds, ~20 instead of ~50 aten ops per layer, faster where a step is
            launch-bound) or ``auto`` (dense on CUDA, sparse elsewhere).
        dropout: dropout on the adapter input.
        target_modules: module-name patterns to adapt (default: the family's attention and FFN projections).
        module_types: extra ``pattern -> canonical type`` entries (types: q, k, v, o, ffn_gate, ffn_in, ffn_out).
        lambda_flops: λ_F of the budget loss ``λ_F E[k] + λ_Q ‖δθ‖²``.
        lambda_delta: λ_Q of the budget loss.
        quantize: store U, V, router and projectors int8 and the mixer int4 (``false``: float32).
        init_adapter: a SAT-LoRA adapter directory to start from; it must have projectors for
            every width of this host (otherwise a ValueError: retrain on this host).
        init_head: also load the adapter file's task head.
        max_adapter_bytes: budget on the adapter files' size, checked at fit start (null: none).
        max_flop_overhead: budget on the host forward's extra FLOPs as a fraction, fvcore at fit start.
        budget_seq_len: sequence length of the FLOP measurement.
        **kwargs: the shared arguments of :class:`~pefthub.methods.base.PEFTModule`.
    """

    method_name = "satlora"
    projector = "learned"
    structural_keys = LEARNED_STRUCTURAL_KEYS

    def __init__(
        self,
        num_atoms: int = 128,
        d0: int = 256,
        top_k: int = 2,
        mixer_hidden: int = 16,
        mixer_omega: float = 2.0,
        num_tasks: int = 1,
        task_dim: int = 16,
        task_id: int = 0,
        threshold: float = 0.0,
        scale: float = 1.0,
        update_impl: str = "auto",
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        module_types: dict[str, str] | None = None,
        lambda_flops: float = 0.0,
        lambda_delta: float = 0.0,
        quantize: bool = True,
        init_adapter: str | None = None,
        init_head: bool = True,
        max_adapter_bytes: int | None = 1_000_000,
        max_flop_overhead: float | None = 0.10,
        budget_seq_len: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_atoms=num_atoms,
            d0=d0,
            top_k=top_k,
            # there is no generator; its settings are passed (unused) so that the CLI, which
            # follows **kwargs into the parent's signature, does not offer them as SAT-LoRA keys
            num_frequencies=16,
            max_frequency=64.0,
            generator_hidden=256,
            width_feature=True,
            mixer_hidden=mixer_hidden,
            mixer_omega=mixer_omega,
            num_tasks=num_tasks,
            task_dim=task_dim,
            task_id=task_id,
            threshold=threshold,
            scale=scale,
            update_impl=update_impl,
            dropout=dropout,
            target_modules=target_modules,
            module_types=module_types,
            lambda_flops=lambda_flops,
            lambda_delta=lambda_delta,
            quantize=quantize,
            init_adapter=init_adapter,
            init_head=init_head,
            max_adapter_bytes=max_adapter_bytes,
            max_flop_overhead=max_flop_overhead,
            budget_seq_len=budget_seq_len,
            **kwargs,
        )

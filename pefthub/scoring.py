"""Pure scoring functions: importance EMAs, budget schedules, top-k masks.

No Lightning, no module state: every function maps tensors/numbers to tensors/numbers, so
allocators (which own the state) and tests (which check values by hand) share one
definition. Functions are grouped by method and named after it (``adalora_*``); methods
that share a building block (e.g. :func:`global_topk_mask`) use the generic name.
"""

from __future__ import annotations

import torch

# --------------------------------------------------------------------------- generic


def resolve_step_count(value: int | float, total_steps: int, key: str) -> int:
    """A step count given either as an ``int`` (optimiser steps) or as a ``float`` in
    ``[0, 1)`` (a fraction of ``total_steps``, rounded down).

    Raises a ``ValueError`` naming ``key`` for negative counts or fractions >= 1.
    """
    if isinstance(value, bool):  # bool is an int subclass; reject it explicitly
        raise ValueError(f"{key} must be an int (steps) or a float in [0, 1) (fraction of all steps), got {value!r}")
    if isinstance(value, float):
        if not 0.0 <= value < 1.0:
            raise ValueError(
                f"{key}={value}: a float is a fraction of the total optimiser steps and must be in [0, 1); "
                "give an int for a number of steps"
            )
        return int(value * total_steps)
    if value < 0:
        raise ValueError(f"{key} must be >= 0 optimiser steps, got {value}")
    return int(value)


def global_topk_mask(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask keeping the ``keep`` highest of ``scores`` (a 1-D tensor).

    The threshold is the ``(n - keep)``-th smallest score and an entry survives only when
    it is strictly above it, so ties at the threshold are all dropped and *at most*
    ``keep`` entries survive (HF PEFT's AdaLoRA ``mask_to_budget`` uses the same rule; with
    continuous scores ties do not happen in practice). ``keep >= n`` keeps everything,
    ``keep <= 0`` nothing.
    """
    if scores.dim() != 1:
        raise ValueError(f"global_topk_mask expects a 1-D tensor of scores, got shape {tuple(scores.shape)}")
    n = scores.numel()
    if keep >= n:
        return torch.ones_like(scores, dtype=torch.bool)
    if keep <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    threshold = torch.kthvalue(scores, k=n - keep).values  # stays on the device: no host sync
    return scores > threshold


# --------------------------------------------------------------------------- AdaLoRA
#
# Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning", ICLR 2023.
# The expressions below are written in the same operation order as HF PEFT's
# ``peft.tuners.adalora.layer.RankAllocator`` so that, fed the same tensors, both give
# bit-identical scores (tests/test_adalora_peft.py checks masks for exact equality).


def adalora_importance_update(
    weight: torch.Tensor,
    grad: torch.Tensor,
    sensitivity_ema: torch.Tensor,
    uncertainty_ema: torch.Tensor,
    beta1: float,
    beta2: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of AdaLoRA's smoothed sensitivity and uncertainty, element-wise.

    I = |w · ∂L/∂w|                       (first-order sensitivity of the loss to zeroing w)
    Ī ← β1 Ī + (1 − β1) I                 (smoothed sensitivity)
    Ū ← β2 Ū + (1 − β2) |I − Ī|           (uncertainty, against the *updated* Ī)

    Returns the new ``(Ī, Ū)``; the inputs are not modified.
    """
    importance = (weight * grad).abs()
    sensitivity = beta1 * sensitivity_ema + (1 - beta1) * importance
    uncertainty = beta2 * uncertainty_ema + (1 - beta2) * (importance - sensitivity).abs()
    return sensitivity, uncertainty


def adalora_element_score(sensitivity_ema: torch.Tensor, uncertainty_ema: torch.Tensor) -> torch.Tensor:
    """s = Ī · Ū (element-wise)."""
    return sensitivity_ema * uncertainty_ema


def adalora_triplet_scores(score_P: torch.Tensor, score_lambda: torch.Tensor, score_Q: torch.Tensor) -> torch.Tensor:
    """Importance of each singular triplet (P_{:,i}, λ_i, Q_{i,:}) of one layer.

    S_i = s(λ_i) + (mean_k s(Q_{i,k}) + mean_k s(P_{k,i}))

    Args:
        score_P: element scores of P, shape (d_out, r).
        score_lambda: element scores of λ, shape (r,).
        score_Q: element scores of Q, shape (r, d_in).

    Returns:
        shape (r,).
    """
    return score_lambda.reshape(-1) + (score_Q.mean(dim=1) + score_P.mean(dim=0))


def adalora_phase(step: int, tinit: int, tfinal: int, total_steps: int) -> str:
    """Which phase optimiser step ``step`` (0-based) is in.

    - ``"warmup"``: ``step <= tinit`` (budget b0, no masking);
    - ``"reduce"``: ``tinit < step < T - tfinal`` (cubic budget, mask every ΔT steps);
    - ``"final"``: ``step >= T - tfinal`` (budget b_T; the final masks are chosen at
      ``step == T - tfinal`` and re-applied after every later step).
    """
    if step <= tinit:
        return "warmup"
    if step < total_steps - tfinal:
        return "reduce"
    return "final"


def adalora_budget(
    step: int,
    *,
    init_budget: int,
    target_budget: int,
    tinit: int,
    tfinal: int,
    total_steps: int,
) -> int:
    """AdaLoRA's cubic budget schedule b(t): the number of singular triplets kept, over all layers.

    b(t) = b0                                              for t <= t_i
    b(t) = b_T + (b0 − b_T) (1 − (t − t_i) / (T − t_i − t_f))³   for t_i < t < T − t_f  (rounded down)
    b(t) = b_T                                             for t >= T − t_f (the last t_f steps)

    ``step`` is the 0-based index of the optimiser step just taken (0 .. T − 1). The paper
    writes ``t < t_i`` for the first phase; at ``t = t_i`` the cubic term equals b0, so
    both readings give the same values. Rounding down (``int``) matches HF PEFT.
    """
    if total_steps - tfinal <= tinit:
        raise ValueError(
            f"AdaLoRA schedule has no budget-reduction phase: tinit={tinit}, tfinal={tfinal}, "
            f"total steps={total_steps}; need tinit < total_steps - tfinal"
        )
    if step <= tinit:
        return init_budget
    if step >= total_steps - tfinal:
        return target_budget
    mul_coeff = 1 - (step - tinit) / (total_steps - tfinal - tinit)
    return int((init_budget - target_budget) * (mul_coeff**3) + target_budget)

"""AdaLoRA's rank allocation (Zhang et al., ICLR 2023): importance statistics of every
singular triplet and the global top-b(t) choice of which triplets keep a non-zero λ.

Plain torch, no Lightning. The layers are :class:`~pefthub.adapters.adalora.SVDLinear`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from pefthub.scoring import (
    adalora_budget,
    adalora_phase,
    adalora_triplet_scores,
    global_topk_mask,
    resolve_step_count,
)

if TYPE_CHECKING:
    from pefthub.adapters.adalora import SVDLinear


@dataclass
class AllocationReport:
    """What one call of :meth:`RankAllocator.step` did.

    ``active_rank`` (triplets kept after this step, over all layers) is read from the device
    only when asked for: a host sync, so callers ask on logging steps only.
    """

    step: int
    phase: str  # warmup | reduce | final
    budget: int  # b(t), triplets allowed over all layers
    updated_importance: bool  # False when skipped (a non-finite gradient, with check_finite)
    masked: bool  # a new allocation (top-b) was computed at this step
    allocator: RankAllocator = field(repr=False)

    @property
    def active_rank(self) -> int:
        return self.allocator.active_rank()


class RankAllocator:
    """Sensitivity × uncertainty importance and the global top-b(t) allocation of AdaLoRA.

    Call :meth:`step` once per optimiser step, *after* ``optimizer.step()`` and *before*
    ``optimizer.zero_grad()``: it reads ``p.grad`` (the gradients that step used) and the
    updated parameters, like HF PEFT's ``update_and_allocate``. Masking before the
    optimiser step would let Adam's momentum revive the zeroed singular values at once.

    Per step t (0-based index of the optimiser step just taken, T total steps):

    - ``t < T − t_f``: update Ī, Ū of every P, λ, Q entry (skipped when any gradient is
      not finite); in the reduction phase, every ``delta_t`` steps, keep the top-b(t)
      triplets by S_i over all layers and zero the λ of the rest;
    - ``t == T − t_f``: final allocation to b_T triplets; the statistics are dropped;
    - ``t > T − t_f``: re-apply the final masks (the optimiser moves zeroed λ otherwise).

    Args:
        layers: the AdaLoRA layers by name (names are used in rank patterns and logs).
        target_rank: average final rank per layer; the final budget is
            b_T = target_rank × number of layers (b0 is the sum of initial ranks).
        tinit: warm-up steps before any pruning (int), or a fraction of T (float in [0, 1)).
        tfinal: steps at the end trained with the final masks fixed (int >= 1, or fraction).
        delta_t: steps between two allocations in the reduction phase.
        beta1: EMA coefficient of the sensitivity Ī.
        beta2: EMA coefficient of the uncertainty Ū.
        check_finite: skip the importance update when a gradient is not finite (fp16 overflow
            steps). The check reads one flag back from the device, a host sync per step, so
            :class:`~pefthub.callbacks.rank_allocation.AdaLoRARankAllocation` turns it on only
            when the run scales its loss (fp16 mixed precision), the one case where training
            goes on after a non-finite gradient.

    Every per-step computation runs as multi-tensor (``torch._foreach_*``) or batched ops over
    all layers, with the same element-wise expressions (and rounding) as HF PEFT, and no host
    sync: the budget threshold stays on the device.
    """

    def __init__(
        self,
        layers: Mapping[str, SVDLinear],
        target_rank: int,
        tinit: int | float = 0,
        tfinal: int | float = 1,
        delta_t: int = 1,
        beta1: float = 0.85,
        beta2: float = 0.85,
        check_finite: bool = True,
    ) -> None:
        if not layers:
            raise ValueError("RankAllocator needs at least one SVDLinear layer")
        for key, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 < beta < 1.0:
                raise ValueError(f"model.{key} must be in (0, 1), got {beta}")
        if delta_t < 1:
            raise ValueError(f"model.delta_t must be >= 1 optimiser step, got {delta_t}")
        self.layers = dict(layers)
        self.names = sorted(self.layers)
        self.init_budget = sum(layer.init_rank for layer in self.layers.values())
        self.target_budget = int(target_rank) * len(self.layers)
        if not 0 <= self.target_budget <= self.init_budget:
            raise ValueError(
                f"model.target_rank={target_rank} gives a final budget of {self.target_budget} triplets, "
                f"but the layers start with {self.init_budget}; need 0 <= target_rank <= init_rank"
            )
        self.tinit_config, self.tfinal_config = tinit, tfinal
        self.delta_t = int(delta_t)
        self.beta1, self.beta2 = float(beta1), float(beta2)
        self.total_steps: int | None = None
        self.tinit: int | None = None
        self.tfinal: int | None = None
        self.last_step = -1
        self.budget = self.init_budget
        self.skipped_nonfinite = 0
        self.final_done = False
        self.check_finite = bool(check_finite)
        # keys "<layer>.<lora_P|lora_lambda|lora_Q>" in a fixed order; the EMAs Ī, Ū in that order
        self.keys = [f"{name}.{local}" for name in self.names for local in ("lora_P", "lora_lambda", "lora_Q")]
        self._sensitivity: list[torch.Tensor] = []
        self._uncertainty: list[torch.Tensor] = []
        self._mean_orders: dict = {}  # _grouped_mean's inverse permutations, by (order, device)

    # ------------------------------------------------------------------ schedule

    def set_total_steps(self, total_steps: int) -> None:
        """Fix T (from ``trainer.estimated_stepping_batches``) and resolve t_i, t_f."""
        total_steps = int(total_steps)
        if total_steps < 1:
            raise ValueError(f"AdaLoRA needs a finite number of optimiser steps T >= 1, got {total_steps}")
        if self.total_steps is not None and self.last_step >= 0 and total_steps != self.total_steps:
            raise ValueError(
                f"this AdaLoRA run was scheduled for T={self.total_steps} optimiser steps, but the trainer now "
                f"plans {total_steps}; resume with the same trainer.max_epochs/max_steps, batch size, "
                "accumulate_grad_batches and data.train_limit"
            )
        tinit = resolve_step_count(self.tinit_config, total_steps, "model.tinit")
        tfinal = resolve_step_count(self.tfinal_config, total_steps, "model.tfinal")
        if tfinal < 1:
            raise ValueError(
                f"model.tfinal resolves to {tfinal} steps; it must be >= 1 so that the final budget is "
                "allocated at step T - tfinal (an int of steps, or a fraction of T in [0, 1))"
            )
        if tinit >= total_steps - tfinal:
            raise ValueError(
                f"AdaLoRA schedule has no budget-reduction phase: model.tinit={tinit} steps, model.tfinal={tfinal} "
                f"steps, total optimiser steps T={total_steps}; need tinit < T - tfinal (train longer or shrink them)"
            )
        self.total_steps, self.tinit, self.tfinal = total_steps, tinit, tfinal

    def budget_at(self, step: int) -> int:
        """b(t) at optimiser step ``step`` (0-based)."""
        self._require_schedule()
        return adalora_budget(
            step,
            init_budget=self.init_budget,
            target_budget=self.target_budget,
            tinit=self.tinit,
            tfinal=self.tfinal,
            total_steps=self.total_steps,
        )

    def _require_schedule(self) -> None:
        if self.total_steps is None:
            raise RuntimeError("RankAllocator.set_total_steps(T) must be called before the first step")

    # ------------------------------------------------------------------ importance

    def parameters(self) -> list[torch.Tensor]:
        """P, λ, Q of every layer, in the order of :attr:`keys`."""
        return [param for name in self.names for param in (self.layers[name].lora_P, self.layers[name].lora_lambda, self.layers[name].lora_Q)]

    def gradients_finite(self, grads: list[torch.Tensor | None] | None = None) -> bool:
        """True when every present adapter gradient is finite (one host sync in all)."""
        present = [g for g in (grads if grads is not None else [p.grad for p in self.parameters()]) if g is not None]
        if not present:
            return True
        found = torch.zeros((), device=present[0].device)
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for grad in present:
            by_dtype.setdefault(grad.dtype, []).append(grad.detach())
        for tensors in by_dtype.values():
            # multiplies by 1.0 (no change) and sets `found` when any entry is inf or nan
            torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, torch.ones((), device=found.device))
        return not bool(found)

    @torch.no_grad()
    def update_importance(self, grads: list[torch.Tensor | None] | None = None) -> bool:
        """Update Ī, Ū from the current parameters and gradients; ``False`` (and no
        update) when ``check_finite`` is on and a gradient is not finite. A missing gradient
        counts as zero.

        Args:
            grads: the gradients in the order of :meth:`parameters` (default: each ``p.grad``);
                a caller that reads them elsewhere (e.g. gathered from a sharded optimiser)
                passes them here.
        """
        params = self.parameters()
        grads = [p.grad for p in params] if grads is None else list(grads)
        if len(grads) != len(params):
            raise ValueError(f"update_importance got {len(grads)} gradients for {len(params)} parameters")
        if self.check_finite and not self.gradients_finite(grads):
            self.skipped_nonfinite += 1
            return False
        # statistics in fp32 for half-precision adapters, else in the parameter's dtype
        weights = [p.float() if p.dtype in (torch.float16, torch.bfloat16) else p for p in params]
        grads = [torch.zeros_like(w) if g is None else (g if g.dtype == w.dtype else g.to(w.dtype)) for w, g in zip(weights, grads, strict=True)]
        if not self._sensitivity:
            self._sensitivity = [torch.zeros_like(w) for w in weights]
            self._uncertainty = [torch.zeros_like(w) for w in weights]
        # I = |w ∂L/∂w|;  Ī ← β1 Ī + (1 − β1) I;  Ū ← β2 Ū + (1 − β2) |I − Ī|  (scoring.adalora_importance_update)
        importance = torch._foreach_mul(weights, grads)
        torch._foreach_abs_(importance)
        share = torch._foreach_mul(importance, 1 - self.beta1)
        torch._foreach_mul_(self._sensitivity, self.beta1)
        torch._foreach_add_(self._sensitivity, share)
        deviation = torch._foreach_sub(importance, self._sensitivity)
        torch._foreach_abs_(deviation)
        torch._foreach_mul_(deviation, 1 - self.beta2)
        torch._foreach_mul_(self._uncertainty, self.beta2)
        torch._foreach_add_(self._uncertainty, deviation)
        return True

    def _score_matrix(self) -> torch.Tensor:
        """S_i of every triplet, shape (layers, r0) in :attr:`names` order (equal ranks), or a
        flat vector of the layers' scores one after the other (unequal ranks).

        S_i = s(λ_i) + (mean_k s(Q_ik) + mean_k s(P_ki)),  s = Ī · Ū  (scoring.adalora_triplet_scores)
        """
        if not self._sensitivity:
            raise RuntimeError("no importance statistics yet: call update_importance() first")
        element = torch._foreach_mul(self._sensitivity, self._uncertainty)
        score_P, score_lam, score_Q = element[0::3], element[1::3], element[2::3]  # noqa: N806
        if len({t.shape for t in score_lam}) > 1:
            return torch.cat([adalora_triplet_scores(p, lam, q) for p, lam, q in zip(score_P, score_lam, score_Q, strict=True)])
        return torch.stack(score_lam) + (self._grouped_mean(score_Q, 1) + self._grouped_mean(score_P, 0))

    def _grouped_mean(self, tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
        """``torch.stack([t.mean(dim) for t in tensors])`` with one stacked mean per shape."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, tensor in enumerate(tensors):
            groups.setdefault(tuple(tensor.shape), []).append(index)
        if len(groups) == 1:
            return torch.stack(tensors).mean(dim + 1)
        means = torch.cat([torch.stack([tensors[i] for i in idx]).mean(dim + 1) for idx in groups.values()])
        order = tuple(i for idx in groups.values() for i in idx)
        key = (order, means.device)
        if key not in self._mean_orders:  # built once: no host-to-device copy per allocation
            inverse = [0] * len(order)
            for position, index in enumerate(order):
                inverse[index] = position
            self._mean_orders[key] = torch.tensor(inverse, dtype=torch.long, device=means.device)
        return means.index_select(0, self._mean_orders[key])

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """S_i per layer (shape (r0,)), from the current statistics."""
        scores = self._score_matrix()
        sizes = [self.layers[name].init_rank for name in self.names]
        rows = scores.unbind(0) if scores.dim() == 2 else scores.split(sizes)
        return dict(zip(self.names, rows, strict=True))

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> list[torch.Tensor]:
        """Keep the ``budget`` most important triplets over all layers; zero λ of the rest.

        Returns the new masks in :attr:`names` order. The threshold stays on the device.
        """
        scores = self._score_matrix()
        keep = global_topk_mask(scores.reshape(-1), budget)
        sizes = [self.layers[name].init_rank for name in self.names]
        masks = list(keep.view(scores.shape).unbind(0)) if scores.dim() == 2 else list(keep.split(sizes))
        torch._foreach_copy_([self.layers[name].rank_mask for name in self.names], masks)
        self.apply_masks()
        return masks

    @torch.no_grad()
    def apply_masks(self) -> None:
        """λ ← λ · mask for every layer, as one multi-tensor op."""
        torch._foreach_mul_([self.layers[n].lora_lambda for n in self.names], [self.layers[n].rank_mask for n in self.names])

    def step(self, step: int, grads: list[torch.Tensor | None] | None = None) -> AllocationReport:
        """Everything AdaLoRA does after optimiser step ``step`` (0-based); see the class doc.
        ``grads``: as in :meth:`update_importance` (default: each parameter's ``.grad``)."""
        self._require_schedule()
        if step <= self.last_step:
            raise ValueError(f"RankAllocator.step got step {step} after step {self.last_step}; steps must increase")
        phase = adalora_phase(step, self.tinit, self.tfinal, self.total_steps)
        updated = masked = False
        final_start = self.total_steps - self.tfinal
        if step < final_start:
            updated = self.update_importance(grads)
            self.budget = self.budget_at(step)
            if phase == "reduce" and step % self.delta_t == 0 and self._sensitivity:
                self.mask_to_budget(self.budget)
                masked = True
        elif step == final_start or (not self.final_done and step > final_start):
            # the final allocation; also taken late when a run starts past T - t_f
            self.budget = self.target_budget
            if self._sensitivity:
                self.mask_to_budget(self.budget)
                masked = True
            self.final_done = True
            self._sensitivity, self._uncertainty = [], []  # no longer needed: free the memory (PEFT does the same)
        else:
            self.budget = self.target_budget
            self.apply_masks()
        self.last_step = step
        return AllocationReport(step, phase, self.budget, updated, masked, self)

    # ------------------------------------------------------------------ reporting

    def active_rank(self) -> int:
        return sum(layer.active_rank for layer in self.layers.values())

    def rank_pattern(self) -> dict[str, int]:
        """Triplets kept per layer, by layer name."""
        return {name: self.layers[name].active_rank for name in self.names}

    def rank_masks(self) -> dict[str, list[bool]]:
        return {name: self.layers[name].rank_mask.tolist() for name in self.names}

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Importance statistics and schedule position (the masks live in the layers' buffers)."""
        return {
            "sensitivity": {k: v.detach().clone() for k, v in zip(self.keys, self._sensitivity, strict=False)},
            "uncertainty": {k: v.detach().clone() for k, v in zip(self.keys, self._uncertainty, strict=False)},
            "total_steps": self.total_steps,
            "last_step": self.last_step,
            "budget": self.budget,
            "final_done": self.final_done,
            "skipped_nonfinite": self.skipped_nonfinite,
            "init_budget": self.init_budget,
            "target_budget": self.target_budget,
            "names": list(self.names),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["names"]) != self.names or state["init_budget"] != self.init_budget or state["target_budget"] != self.target_budget:
            raise ValueError(
                "AdaLoRA allocator state does not fit this model (different target layers, init_rank or target_rank)"
            )
        device = {
            f"{name}.{local}": param.device
            for name in self.names
            for local, param in self.layers[name].adapter_parameters().items()
        }
        sensitivity, uncertainty = state["sensitivity"], state["uncertainty"]
        if sensitivity and (set(sensitivity) != set(self.keys) or set(uncertainty) != set(self.keys)):
            raise ValueError("AdaLoRA allocator state holds statistics for other tensors than this model's adapters")
        self._sensitivity = [sensitivity[k].to(device[k]) for k in self.keys] if sensitivity else []
        self._uncertainty = [uncertainty[k].to(device[k]) for k in self.keys] if uncertainty else []
        self.total_steps = state["total_steps"]
        self.last_step = int(state["last_step"])
        self.budget = int(state["budget"])
        self.final_done = bool(state["final_done"])
        self.skipped_nonfinite = int(state["skipped_nonfinite"])
        if self.total_steps is not None:
            self.set_total_steps(self.total_steps)

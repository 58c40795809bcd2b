"""Importance of each adapted weight matrix, and what FW-LoRA, IW-LoRA and GLoRA do with it.

Plain torch, no Lightning: the :class:`ImportanceEstimator` owns the forward/backward hooks and
the running averages and carries ``state_dict()``; Lightning callbacks decide *when* it runs
(``pefthub.callbacks.importance_warmup``). The pure functions below turn importances into penalty
weights (:func:`penalty_weights`), compute the penalty without materialising ΔW
(:func:`lora_delta_sq_norm`) and turn scores into a rank pattern (:func:`allocate_ranks`).

Sources (``source``), for an adapted frozen layer ``y = W x (+ ΔW x)``, W ∈ R^{d_out×d_in}:

- ``fisher``: the squared Frobenius norm of the step's weight gradient,
  ``f_m = ‖∂L/∂W_m‖²_F`` with ``∂L/∂W_m = Σ_t g_t x_tᵀ`` (t runs over every token of every
  micro-batch of the optimiser step, g_t = ∂L/∂y_t, x_t the layer input). W stays frozen:
  x_t is read by a forward hook, g_t by a hook on the layer's output tensor, in the step's
  own forward/backward pass (no extra pass).
- ``grad_norm``: ``‖∂L/∂Δ_m‖_F`` (GLoRA's signal). Since the update is added to W, ∂L/∂ΔW is
  the same matrix as ∂L/∂W, so this is ``sqrt(f_m)``. (With LoRA dropout p > 0 the adapter
  sees a dropped-out input; we use the host weight's gradient, i.e. the undropped x.)
- ``lora_grad``: ``sqrt(‖∂L/∂A_m‖²_F + ‖∂L/∂B_m‖²_F)`` read from ``.grad`` before the
  optimiser step: the cheap proxy (no hooks, no extra matmul). Note that at LoRA's
  initialisation B = 0, so ∂L/∂A = 0 and ∂L/∂B = (α/r) (∂L/∂W) Aᵀ: a random projection of
  the full gradient.

How ``‖Σ_t g_t x_tᵀ‖²_F`` is computed (``fisher_impl``):

- ``dense``: accumulate the d_out×d_in matrix Gᵀ X (one matmul per call, the same cost as
  the weight-gradient matmul autograd would do if W were trainable; memory one copy of the
  adapted weights, during warm-up only). Exact under gradient accumulation and when a layer
  runs several times per step (the contributions add before the norm is taken).
- ``gram``: ``‖Gᵀ X‖²_F = Σ_{t,s} (g_t·g_s)(x_t·x_s) = sum((G Gᵀ) ⊙ (X Xᵀ))``, cost
  N²(d_in + d_out) instead of N·d_in·d_out, memory N². Cheaper when the number of tokens N is
  below d_in·d_out/(d_in + d_out) (192 for a 384×384 matrix).
- ``auto`` (default): per layer and step, keep the first call's (G, X) and take the Gram route
  when it is the cheaper one; a second call in the same step (accumulation, weight sharing)
  switches that layer to the dense accumulator, so the result is always the exact norm of the
  summed gradient.

The EMA is ``v ← β v + (1 − β) value`` with Adam-style bias correction ``v / (1 − β^t)``
(a common factor, so normalised importances do not depend on it); ``beta=None`` takes the
plain mean over the warm-up (the expectation E‖∂L/∂W‖_F of IW-LoRA's calibration).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

SOURCES = ("fisher", "grad_norm", "lora_grad")
FISHER_IMPLS = ("auto", "dense", "gram")
NORMALIZATIONS = ("sum", "max")


class _StepGradient:
    """The current step's ``Σ_t g_t x_tᵀ`` of one layer, as Gram factors or a dense matrix."""

    def __init__(self, impl: str) -> None:
        self.impl = impl
        self.factors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.dense: torch.Tensor | None = None

    def add(self, grad_out: torch.Tensor, inputs: torch.Tensor) -> None:
        g = grad_out.detach().reshape(-1, grad_out.shape[-1]).float()
        x = inputs.detach().reshape(-1, inputs.shape[-1]).float()
        n, d_out, d_in = x.shape[0], g.shape[1], x.shape[1]
        gram_cheaper = n * (d_in + d_out) < d_in * d_out
        if self.dense is None and self.factors is None and (
            self.impl == "gram" or (self.impl == "auto" and gram_cheaper)
        ):
            self.factors = (g, x)
            return
        if self.factors is not None and self.impl == "gram":
            # stay on the Gram route: concatenating tokens is the same as summing gradients
            self.factors = (torch.cat([self.factors[0], g]), torch.cat([self.factors[1], x]))
            return
        if self.dense is None:
            self.dense = torch.zeros(d_out, d_in, dtype=torch.float32, device=g.device)
        if self.factors is not None:
            self.dense.addmm_(self.factors[0].T, self.factors[1])
            self.factors = None
        self.dense.addmm_(g.T, x)

    def squared_norm(self) -> torch.Tensor | None:
        """‖Σ g xᵀ‖²_F of the step (a float64 0-dim tensor on the layer's device, not read back
        to the host), or None when the layer saw no backward pass."""
        if self.factors is not None:
            g, x = self.factors
            return ((g @ g.T) * (x @ x.T)).sum(dtype=torch.float64).clamp(min=0.0)
        if self.dense is not None:
            return self.dense.double().square().sum()
        return None


def check_source(source: str) -> None:
    """Raise the one-line error for an importance source that is not one of :data:`SOURCES`
    (shared by the estimator and the methods' settings, which check it before building one)."""
    if source not in SOURCES:
        raise ValueError(f"importance source must be one of {SOURCES}, got {source!r}")


class ImportanceEstimator:
    """Running importance of each adapted matrix (see the module docstring for the sources).

    Lifecycle: :meth:`attach` (hooks on) → per optimiser step :meth:`observe_step` →
    :meth:`freeze` (hooks off, values fixed). The state (names, running values, step count,
    frozen flag) round-trips through :meth:`state_dict` / :meth:`load_state_dict`.

    Args:
        source: ``fisher``, ``grad_norm`` or ``lora_grad``.
        beta: EMA coefficient in [0, 1); ``None`` averages all observed steps equally.
        fisher_impl: ``auto``, ``dense`` or ``gram`` (how ‖Σ g xᵀ‖²_F is computed).
    """

    def __init__(self, source: str = "fisher", beta: float | None = 0.9, fisher_impl: str = "auto") -> None:
        check_source(source)
        if beta is not None and not 0.0 <= beta < 1.0:
            raise ValueError(f"importance EMA beta must be in [0, 1) or null (plain mean), got {beta}")
        if fisher_impl not in FISHER_IMPLS:
            raise ValueError(f"fisher_impl must be one of {FISHER_IMPLS}, got {fisher_impl!r}")
        self.source = source
        self.beta = beta
        self.fisher_impl = fisher_impl
        self.names: list[str] = []
        self.running: torch.Tensor = torch.zeros(0, dtype=torch.float64)
        self.steps = 0
        self.frozen = False
        self._layers: dict[str, nn.Module] = {}
        self._handles: list[RemovableHandle] = []
        self._pending: dict[str, _StepGradient] = {}

    # ------------------------------------------------------------------ hooks

    @property
    def attached(self) -> bool:
        return bool(self._layers)

    def attach(self, layers: Mapping[str, nn.Module]) -> None:
        """Start observing ``layers`` (name → adapter layer with ``lora_A``/``lora_B``)."""
        if self.frozen:
            raise RuntimeError("the importance estimator is frozen; it no longer observes gradients")
        self.detach()
        names = list(layers)
        if self.names and names != self.names:
            raise ValueError(f"estimator was built for {len(self.names)} layers {self.names[:3]}..., got {names[:3]}...")
        if not self.names:
            self.names = names
            self.running = torch.zeros(len(names), dtype=torch.float64)
        self._layers = dict(layers)
        if self.source == "lora_grad":
            return
        for name, layer in self._layers.items():
            self._pending[name] = _StepGradient(self.fisher_impl)
            self._handles.append(layer.register_forward_hook(self._forward_hook(name)))

    def _forward_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad):
                return  # evaluation, or no backward will come
            inputs = args[0].detach()
            output.register_hook(lambda grad: self._pending[name].add(grad, inputs))

        return hook

    def detach(self) -> None:
        """Remove every hook and drop the current step's buffers."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending.clear()
        self._layers = {}

    # ------------------------------------------------------------------ accumulation

    def step_values(self, grad_scale: float = 1.0) -> torch.Tensor:
        """This step's raw value per layer (NaN where a layer saw no backward), then reset.

        Args:
            grad_scale: the loss scale of mixed-precision training; hook-read output gradients
                are divided by it (``lora_grad`` reads ``.grad``, which Lightning has unscaled).
        """
        per_layer: list[torch.Tensor | None] = []
        for name in self.names:
            if self.source == "lora_grad":
                layer = self._layers[name]
                grads = [p.grad for p in (layer.lora_A, layer.lora_B) if p.grad is not None]
                # parameter .grad: already unscaled when Lightning's hook runs
                per_layer.append(torch.stack([g.detach().double().square().sum() for g in grads]).sum().sqrt() if grads else None)
                continue
            pending = self._pending[name]
            sq = pending.squared_norm()
            self._pending[name] = _StepGradient(self.fisher_impl)
            if sq is None:
                per_layer.append(None)
                continue
            sq = sq / grad_scale**2
            per_layer.append(sq if self.source == "fisher" else sq.sqrt())
        # kept on the device: no host sync per layer and step (the values are read back once, at freeze)
        present = next((v for v in per_layer if v is not None), None)
        if present is None:
            return torch.full((len(self.names),), float("nan"), dtype=torch.float64)
        missing = torch.full((), float("nan"), dtype=torch.float64, device=present.device)
        return torch.stack([v if v is not None else missing for v in per_layer])

    def observe_step(self, grad_scale: float = 1.0) -> torch.Tensor:
        """Fold this optimiser step's values into the running average; returns the step's values.

        Call once per optimiser step, after backward and before the gradients are cleared.
        A layer without a gradient this step (NaN) counts as 0.
        """
        if self.frozen:
            raise RuntimeError("the importance estimator is frozen")
        if not self.attached:
            raise RuntimeError("attach() the estimator to its layers before observe_step()")
        values = self.step_values(grad_scale)
        update = torch.nan_to_num(values, nan=0.0)
        if self.running.device != update.device:
            self.running = self.running.to(update.device)
        self.steps += 1
        if self.beta is None:
            self.running += (update - self.running) / self.steps
        else:
            self.running.mul_(self.beta).add_((1.0 - self.beta) * update)
        return values

    def freeze(self) -> None:
        """Stop observing: hooks removed, values fixed for the rest of the run."""
        self.detach()
        self.frozen = True

    def reduce(self, reduce: Callable[[torch.Tensor], torch.Tensor], device: torch.device | str = "cpu") -> None:
        """Replace the running values by ``reduce(running)`` (computed on ``device``), e.g. the
        mean over the processes of a multi-device run, so every process freezes the same values."""
        self.running = reduce(self.running.to(device)).cpu().double()

    # ------------------------------------------------------------------ results

    def values(self) -> dict[str, float]:
        """Bias-corrected running value per layer name (zeros before the first step)."""
        if self.steps == 0:
            return dict.fromkeys(self.names, 0.0)
        correction = 1.0 if self.beta is None else 1.0 - self.beta**self.steps
        return {name: v / correction for name, v in zip(self.names, self.running.tolist(), strict=True)}

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "beta": self.beta,
            "names": list(self.names),
            "running": self.running.tolist(),
            "steps": self.steps,
            "frozen": self.frozen,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["source"] != self.source:
            raise ValueError(f"checkpoint importance source is {state['source']!r}, this run uses {self.source!r}")
        was_attached = dict(self._layers)
        self.detach()
        self.names = list(state["names"])
        self.running = torch.tensor(state["running"], dtype=torch.float64)
        self.steps = int(state["steps"])
        self.frozen = bool(state["frozen"])
        if was_attached and not self.frozen:
            self.attach(was_attached)


def normalize(values: Mapping[str, float], how: str = "sum") -> dict[str, float]:
    """Importances in [0, 1] from non-negative values: ``v / Σ v`` (``sum``) or ``v / max v``
    (``max``); all-zero values give the uniform ``1/n`` (``sum``) or ``1`` (``max``)."""
    if how not in NORMALIZATIONS:
        raise ValueError(f"importance normalization must be one of {NORMALIZATIONS}, got {how!r}")
    if not values:
        return {}
    total = sum(values.values()) if how == "sum" else max(values.values())
    if not total > 0:
        fill = 1.0 / len(values) if how == "sum" else 1.0
        return dict.fromkeys(values, fill)
    return {name: v / total for name, v in values.items()}


def penalty_weights(importance: Mapping[str, float], exponent: float = 1.0) -> dict[str, float]:
    """FW-/IW-LoRA's per-matrix weights ``(1 − I_m)^β`` (importances clipped to [0, 1])."""
    return {name: (1.0 - min(max(i, 0.0), 1.0)) ** exponent for name, i in importance.items()}


def lora_delta_sq_norm(lora_A: torch.Tensor, lora_B: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """``‖s · B A‖²_F = s² tr((BᵀB)(AAᵀ))`` without forming the d_out×d_in product.

    Both Gram matrices are r×r and symmetric, so the trace of their product is the sum of their
    elementwise product: O(r²(d_in + d_out)) work instead of O(r·d_in·d_out).
    """
    if lora_A.shape[0] == 0:
        return lora_A.new_zeros(())
    return (scaling**2) * ((lora_B.T @ lora_B) * (lora_A @ lora_A.T)).sum()


@torch.no_grad()
def weighted_delta_sq_norm_gradients(
    layers: Sequence[nn.Module], coefficients: Sequence[float], cache: dict | None = None
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``Σ_m c_m ‖ΔW_m‖²_F`` over LoRA layers and its gradient in closed form.

    With ΔW = s B A, ``‖ΔW‖²_F = s² Σ (BᵀB ⊙ AAᵀ)`` (:func:`lora_delta_sq_norm`) and

        ∂/∂A = 2 c s² (BᵀB) A,      ∂/∂B = 2 c s² B (AAᵀ).

    Layers of one (A, B) shape are stacked and handled by batched products, without an
    autograd graph: a few dozen ops per step in all, and no second gradient path into A and B
    (autograd through the per-layer penalty costs ~25 ops per layer; a GPU step is
    launch-bound). Layers of rank 0 are skipped.

    Args:
        layers: LoRA layers (``lora_A``, ``lora_B``, ``scaling``).
        coefficients: c_m per layer.
        cache: a dict the caller keeps between steps; it holds the per-group factors
            c_m s_m² on the device, so they are not copied from the host every step.

    Returns:
        ``(value, [A_1, B_1, ...], [∂/∂A_1, ∂/∂B_1, ...])``.
    """
    groups: dict[tuple, list[int]] = {}
    for index, layer in enumerate(layers):
        if layer.lora_A.shape[0] > 0:
            groups.setdefault((tuple(layer.lora_A.shape), tuple(layer.lora_B.shape)), []).append(index)
    values, params, grads = [], [], []
    for indices in groups.values():
        A = torch.stack([layers[i].lora_A for i in indices])  # noqa: N806
        B = torch.stack([layers[i].lora_B for i in indices])  # noqa: N806
        numbers = tuple(float(coefficients[i]) * layers[i].scaling**2 for i in indices)
        cached = cache.get(tuple(indices)) if cache is not None else None
        if cached is None or cached[0] != numbers or cached[1].device != A.device or cached[1].dtype != A.dtype:
            cached = (numbers, torch.tensor(numbers, dtype=A.dtype, device=A.device))
            if cache is not None:
                cache[tuple(indices)] = cached
        factor = cached[1]
        gram_A = torch.bmm(A, A.transpose(1, 2))  # noqa: N806
        gram_B = torch.bmm(B.transpose(1, 2), B)  # noqa: N806
        values.append((factor * (gram_A * gram_B).sum((1, 2))).sum())
        twice = (2 * factor).view(-1, 1, 1)
        grad_A = torch.bmm(gram_B * twice, A)  # noqa: N806
        grad_B = torch.bmm(B, gram_A * twice)  # noqa: N806
        for i, ga, gb in zip(indices, grad_A.unbind(0), grad_B.unbind(0), strict=True):
            params.extend((layers[i].lora_A, layers[i].lora_B))
            grads.extend((ga, gb))
    if not values:
        return torch.zeros(()), params, grads
    return torch.stack(values).sum() if len(values) > 1 else values[0], params, grads


def allocate_ranks(
    scores: Sequence[float],
    total: int,
    caps: Sequence[int],
) -> list[int]:
    """Integer ranks proportional to ``scores`` that sum exactly to ``total``.

    ``r_k ≈ total · s_k / Σ s`` by the largest-remainder (Hamilton) method, with caps:
    a matrix whose quota exceeds its cap ``min(d_in, d_out)`` gets the cap and the rest is
    shared again among the others in proportion to their scores (water-filling), so no rank
    is negative or above its cap and ``Σ r_k == total``. Ties in the remainders go to the
    higher score, then to the earlier matrix. All-zero scores share ``total`` uniformly.

    Raises:
        ValueError: negative/non-finite scores, or ``total`` outside ``[0, Σ caps]``.
    """
    n = len(scores)
    if len(caps) != n:
        raise ValueError(f"got {n} scores but {len(caps)} caps")
    scores = [float(s) for s in scores]
    if any(not math.isfinite(s) or s < 0 for s in scores):
        raise ValueError(f"rank-allocation scores must be finite and >= 0, got {scores}")
    caps = [int(c) for c in caps]
    if any(c < 0 for c in caps):
        raise ValueError(f"rank caps must be >= 0, got {caps}")
    if not 0 <= total <= sum(caps):
        raise ValueError(f"total_rank must be in [0, sum of min(d_in, d_out)] = [0, {sum(caps)}], got {total}")
    if n == 0:
        return []
    if sum(scores) <= 0:
        scores = [1.0] * n

    # water-filling: fix capped matrices at their cap, share the rest proportionally
    quota = [0.0] * n
    free = [k for k in range(n) if caps[k] > 0]
    remaining = float(total)
    while free:
        weight = sum(scores[k] for k in free)
        if weight <= 0:  # only zero-score matrices left: share uniformly among them
            share = {k: remaining / len(free) for k in free}
        else:
            share = {k: remaining * scores[k] / weight for k in free}
        over = [k for k in free if share[k] > caps[k]]
        if not over:
            for k in free:
                quota[k] = share[k]
            break
        for k in over:
            quota[k] = float(caps[k])
            remaining -= caps[k]
        free = [k for k in free if k not in over]

    ranks = [min(int(math.floor(q)), caps[k]) for k, q in enumerate(quota)]
    deficit = total - sum(ranks)
    order = sorted(
        (k for k in range(n) if ranks[k] < caps[k]),
        key=lambda k: (-(quota[k] - ranks[k]), -scores[k], k),
    )
    for k in order[:deficit]:
        ranks[k] += 1
    if deficit < 0:  # floating-point overshoot of a floor: take back from the smallest remainders
        for k in sorted((k for k in range(n) if ranks[k] > 0), key=lambda k: (quota[k] - ranks[k], scores[k], -k))[:-deficit]:
            ranks[k] -= 1
    if sum(ranks) != total:  # pragma: no cover - internal invariant
        raise AssertionError(f"rank allocation sums to {sum(ranks)}, expected {total}")
    return ranks

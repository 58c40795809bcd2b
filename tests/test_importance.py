"""Importance estimation (hooks vs the true weight gradient), the penalty identity and rank
allocation: exact checks against reference computations."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from pefthub.adapters import LoRALinear
from pefthub.importance_estimator import (
    ImportanceEstimator,
    allocate_ranks,
    lora_delta_sq_norm,
    normalize,
    penalty_weights,
)
from pefthub.methods import ImportanceLoRAModule


def _module(seed: int = 0) -> ImportanceLoRAModule:
    torch.manual_seed(seed)
    module = ImportanceLoRAModule(backbone="tiny-bert", rank=4, alpha=8, head_dropout=0.0).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-zero B so every path of the graph carries gradient
        for layer in module.importance_layers().values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)
    return module


def _loss(module, batch, labels) -> torch.Tensor:
    return F.cross_entropy(module(batch["input_ids"], batch["attention_mask"]), labels)


def _reference_weight_grads(module, micro_batches) -> dict[str, torch.Tensor]:
    """‖∂L/∂W‖²_F with W made trainable (the reference computation), no hooks."""
    layers = module.importance_layers()
    for layer in layers.values():
        layer.base.weight.requires_grad_(True)
        layer.base.weight.grad = None
    for batch, labels in micro_batches:
        _loss(module, batch, labels).backward()
    result = {name: layer.base.weight.grad.double().square().sum() for name, layer in layers.items()}
    for layer in layers.values():
        layer.base.weight.requires_grad_(False)
        layer.base.weight.grad = None
    return result


@pytest.mark.parametrize("impl", ["auto", "dense", "gram"])
@pytest.mark.parametrize("micro", [1, 2], ids=["one_batch", "accumulated"])
def test_fisher_from_hooks_equals_the_true_weight_gradient(batch, impl, micro):
    module = _module()
    labels = torch.tensor([1, 0, 1, 1])
    # one-sentence micro-batches: few tokens, so `auto` starts on the Gram route and must
    # switch to the dense accumulator when the next micro-batch arrives
    singles = [({k: v[i : i + 1] for k, v in batch.items()}, labels[i : i + 1]) for i in range(4)]
    micro_batches = [(batch, labels)] if micro == 1 else singles
    layers = module.importance_layers()
    assert all(not layer.base.weight.requires_grad for layer in layers.values())

    estimator = ImportanceEstimator("fisher", beta=0.0, fisher_impl=impl)
    estimator.attach(layers)
    for b, y in micro_batches:
        _loss(module, b, y).backward()
    estimator.observe_step()
    estimator.freeze()
    assert all(not layer._forward_hooks for layer in layers.values()), "hooks must be gone after freeze()"
    assert all(layer.base.weight.grad is None for layer in layers.values()), "W must stay frozen"

    module.zero_grad()
    reference = _reference_weight_grads(module, micro_batches)
    values = estimator.values()
    assert min(reference.values()) > 0
    for name in layers:
        torch.testing.assert_close(torch.tensor(values[name], dtype=torch.float64), reference[name], rtol=1e-5, atol=0)


def test_grad_norm_is_the_root_and_lora_grad_reads_a_and_b(batch):
    module = _module(3)
    labels = torch.tensor([0, 1, 1, 0])
    layers = module.importance_layers()
    grad_norm = ImportanceEstimator("grad_norm", beta=0.0)
    lora_grad = ImportanceEstimator("lora_grad", beta=0.0)
    grad_norm.attach(layers)
    lora_grad.attach(layers)
    _loss(module, batch, labels).backward()
    grad_norm.observe_step()
    lora_grad.observe_step()
    expected_lora = {
        name: math.sqrt(float(layer.lora_A.grad.double().square().sum() + layer.lora_B.grad.double().square().sum()))
        for name, layer in layers.items()
    }
    module.zero_grad()
    reference = _reference_weight_grads(module, [(batch, labels)])
    for name in layers:
        assert grad_norm.values()[name] == pytest.approx(math.sqrt(float(reference[name])), rel=1e-5)
        assert lora_grad.values()[name] == pytest.approx(expected_lora[name], rel=1e-12)


def test_ema_bias_correction_plain_mean_and_state_round_trip():
    layer = LoRALinear(torch.nn.Linear(3, 2), rank=1)
    estimator = ImportanceEstimator("lora_grad", beta=0.5)
    estimator.attach({"m": layer})
    for value in (4.0, 2.0):
        layer.lora_A.grad = torch.zeros_like(layer.lora_A)
        layer.lora_B.grad = torch.full_like(layer.lora_B, value / math.sqrt(2))  # ‖grad‖ = value
        estimator.observe_step()
    # raw EMA: 0.5·(0.5·4) + 0.5·2 = 2; bias correction 1 − 0.5² = 0.75
    assert estimator.values()["m"] == pytest.approx(2.0 / 0.75)
    restored = ImportanceEstimator("lora_grad", beta=0.5)
    restored.load_state_dict(estimator.state_dict())
    assert restored.values() == estimator.values() and restored.steps == 2

    mean = ImportanceEstimator("lora_grad", beta=None)
    mean.attach({"m": layer})
    for value in (4.0, 2.0, 3.0):
        layer.lora_B.grad = torch.full_like(layer.lora_B, value / math.sqrt(2))
        mean.observe_step()
    assert mean.values()["m"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="source"):
        restored.load_state_dict({**estimator.state_dict(), "source": "fisher"})


def test_normalisation_and_penalty_weights():
    assert normalize({"a": 1.0, "b": 3.0}, "sum") == {"a": 0.25, "b": 0.75}
    assert normalize({"a": 1.0, "b": 4.0}, "max") == {"a": 0.25, "b": 1.0}
    assert normalize({"a": 0.0, "b": 0.0}, "sum") == {"a": 0.5, "b": 0.5}
    assert penalty_weights({"a": 0.25, "b": 1.0}, exponent=2.0) == {"a": 0.5625, "b": 0.0}


@pytest.mark.parametrize("shape", [(7, 5, 3), (64, 32, 8), (5, 9, 0)])
def test_trace_identity_equals_the_materialised_norm(shape):
    d_out, d_in, r = shape
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(r, d_in, generator=generator, dtype=torch.float64)
    B = torch.randn(d_out, r, generator=generator, dtype=torch.float64)
    expected = ((2.5 * B @ A) ** 2).sum()
    torch.testing.assert_close(lora_delta_sq_norm(A, B, scaling=2.5), expected, rtol=1e-12, atol=1e-12)


def test_penalty_in_the_loss_is_lambda_weighted_sum_of_delta_norms():
    module = _module(5)
    layers = module.importance_layers()
    module.importance_estimator.attach(layers)
    module.importance_estimator.freeze()  # zero values → uniform 1/n importances
    module.on_importance_frozen()
    n = len(layers)
    expected = module.penalty_weight * (1 - 1 / n) * sum(
        float((layer.delta_weight().detach().double() ** 2).sum()) for layer in layers.values()
    )
    assert float(module.penalty()) == pytest.approx(expected, rel=1e-5)


def test_closed_form_penalty_gradient_equals_autograd_of_the_penalty():
    """Training adds the penalty's gradient in closed form after backward (no autograd graph);
    it must be autograd's gradient of the differentiable penalty (float64: rounding only)."""
    module = _module(5).double()
    layers = module.importance_layers()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator, dtype=torch.float64))
    module.importance_estimator.attach(layers)
    module.importance_estimator.running = torch.rand(len(layers), generator=generator, dtype=torch.float64)
    module.importance_estimator.steps = 1
    module.importance_estimator.freeze()
    module.on_importance_frozen()
    value, params, grads = module.penalty_gradients()
    torch.testing.assert_close(value, module.penalty().detach(), rtol=1e-7, atol=0)  # w_m held in float32
    expected = torch.autograd.grad(module.penalty(), params)
    assert len(params) == 2 * len(layers)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------------------- rank allocation


def _check(ranks, scores, total, caps):
    assert sum(ranks) == total
    assert all(0 <= r <= c for r, c in zip(ranks, caps, strict=True))


@pytest.mark.parametrize(
    ("scores", "total", "caps", "expected"),
    [
        ([1, 1, 1], 4, [8, 8, 8], [2, 1, 1]),  # a tie in the remainders goes to the first
        ([1, 1, 1, 1], 6, [8] * 4, [2, 2, 1, 1]),
        ([0, 0, 0, 0], 6, [8] * 4, [2, 2, 1, 1]),  # all-zero scores: uniform
        ([1e12, 1, 1], 10, [4, 8, 8], [4, 3, 3]),  # one dominant matrix, capped; rest shared
        ([1e12, 0, 0], 10, [4, 8, 8], [4, 3, 3]),  # dominant capped, zero scores share the rest
        ([5, 0, 0], 3, [8, 8, 8], [3, 0, 0]),  # zero score → rank 0 (adapter removed)
        ([3, 1], 0, [8, 8], [0, 0]),
        ([3, 1], 16, [8, 8], [8, 8]),  # total = Σ caps
        ([2, 1, 1], 4, [2, 2, 0], [2, 2, 0]),  # a zero cap (cannot hold an adapter)
    ],
)
def test_allocation_on_adversarial_scores(scores, total, caps, expected):
    ranks = allocate_ranks(scores, total, caps)
    _check(ranks, scores, total, caps)
    assert ranks == expected


def test_allocation_random_sweep_sums_exactly_and_respects_quotas():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 12)
        scores = [rng.choice([0.0, 1.0, rng.random(), rng.random() * 1e-9, rng.random() * 1e9]) for _ in range(n)]
        caps = [rng.randint(0, 16) for _ in range(n)]
        total = rng.randint(0, sum(caps))
        ranks = allocate_ranks(scores, total, caps)
        _check(ranks, scores, total, caps)
        if sum(scores) > 0 and all(total * s / sum(scores) <= c for s, c in zip(scores, caps, strict=True)) and all(c > 0 for c in caps):
            # no cap binds: Hamilton's quota property |r_k − total·s_k/Σs| < 1
            assert all(abs(r - total * s / sum(scores)) < 1 for r, s in zip(ranks, scores, strict=True))


@pytest.mark.parametrize(
    ("scores", "total", "caps", "match"),
    [([1, -1], 2, [4, 4], "scores"), ([1, float("nan")], 2, [4, 4], "scores"), ([1, 1], 9, [4, 4], "total_rank")],
)
def test_allocation_rejects_bad_input(scores, total, caps, match):
    with pytest.raises(ValueError, match=match):
        allocate_ranks(scores, total, caps)

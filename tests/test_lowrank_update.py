"""The fused adapted linear layer has the plain composition's value and gradients, uses one
dropout mask in forward and backward, and follows in-place and replaced parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pefthub.adapters.adalora import SVDLinear
from pefthub.adapters.lora import LoRALinear
from pefthub.adapters.lowrank_update import adapted_linear


def _plain(x, weight, bias, A, B, scaling, lam=None):  # noqa: N803
    A = A if lam is None else A * lam.unsqueeze(1)  # noqa: N806
    return F.linear(x, weight, bias) + F.linear(F.linear(x, A), B) * scaling


@pytest.mark.parametrize("cpu_kernels", [True, False])  # CPU layouts / the layouts a GPU uses
@pytest.mark.parametrize("with_lambda", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("x_requires_grad", [True, False])
def test_value_and_every_gradient_equal_the_plain_composition(x_requires_grad, with_bias, with_lambda, cpu_kernels):
    generator = torch.Generator().manual_seed(0)

    def leaf(*size, grad=True):
        return torch.randn(*size, generator=generator, dtype=torch.float64).requires_grad_(grad)

    x = leaf(3, 5, 7, grad=x_requires_grad)  # (batch, tokens, d_in): any leading shape
    weight, bias = leaf(4, 7, grad=False), (leaf(4, grad=False) if with_bias else None)
    A, B, lam = leaf(2, 7), leaf(4, 2), (leaf(2) if with_lambda else None)  # noqa: N806
    grad_out = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)
    inputs = [A, B] + ([lam] if with_lambda else []) + ([x] if x_requires_grad else [])

    fused = adapted_linear(x, weight, bias, A, B, 1.75, lam=lam, cache={}, fast_cpu_kernels=cpu_kernels)
    assert fused.grad_fn.name() == "_AdaptedLinearBackward"
    fused_grads = torch.autograd.grad(fused, inputs, grad_out)
    plain = _plain(x, weight, bias, A, B, 1.75, lam)
    plain_grads = torch.autograd.grad(plain, inputs, grad_out)
    torch.testing.assert_close(fused, plain, atol=1e-12, rtol=0)
    for got, expected in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_gradcheck():
    generator = torch.Generator().manual_seed(1)
    x, A, B, lam = (torch.randn(*s, generator=generator, dtype=torch.float64, requires_grad=True)  # noqa: N806
                    for s in [(6, 4), (2, 4), (3, 2), (2,)])
    weight, bias = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, a, b, lam: adapted_linear(x, weight, bias, a, b, 0.5, lam=lam), (x, A, B, lam))


@pytest.mark.parametrize("fast_cpu_kernels", [True, False])
def test_dropout_uses_one_mask_and_one_scale_in_forward_and_backward(fast_cpu_kernels):
    """With A = B = I and s = 1 the update *is* drop(x), so forward shows the mask and scale;
    ∂L/∂x for L = Σ y must then be Wᵀ1 + mask · scale elementwise — the same mask and scale."""
    torch.manual_seed(0)
    d, p = 64, 0.25
    x = (torch.rand(512, d) + 0.5).requires_grad_(True)  # no zeros: a zero output means dropped
    weight = torch.randn(d, d)
    eye = torch.eye(d)
    A, B = eye.clone().requires_grad_(True), eye.clone().requires_grad_(True)  # noqa: N806
    y = adapted_linear(x, weight, None, A, B, 1.0, dropout=p, training=True, fast_cpu_kernels=fast_cpu_kernels)
    dropped = y - x.detach() @ weight.t()
    scale = dropped / x.detach()
    kept = dropped.abs() > 1e-4
    assert 0.70 < kept.float().mean() < 0.80  # P(keep) = 1 - p
    torch.testing.assert_close(scale[kept], torch.full_like(scale[kept], 1 / (1 - p)), atol=1e-3, rtol=1e-3)
    y.sum().backward()
    from_update = x.grad - torch.ones(512, d) @ weight
    torch.testing.assert_close(from_update, kept.float() * (1 / (1 - p)), atol=1e-3, rtol=1e-3)
    assert y.grad_fn is not None and A.grad is not None and B.grad is not None


def test_fast_cpu_kernels_keep_rate_is_unbiased():
    from pefthub.adapters.lowrank_update import fast_cpu_dropout_mask

    torch.manual_seed(0)
    mask, inverse_keep = fast_cpu_dropout_mask(torch.empty(1001, 999), 0.05)  # numel not a multiple of 4
    assert mask.shape == (1001, 999) and mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - 0.95) < 1e-3
    assert abs(inverse_keep - 1 / 0.95) < 1e-4


def test_cached_transposes_follow_in_place_updates_and_replaced_parameters():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(8, 6), rank=3, alpha=6.0)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(4, 8)
    layer(x)
    with torch.no_grad():
        layer.lora_A.mul_(2.0)  # what an optimiser step does
    torch.testing.assert_close(layer(x), _plain(x, layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B, layer.scaling))
    layer.resize(5)  # new Parameter objects
    torch.nn.init.normal_(layer.lora_B)
    torch.testing.assert_close(layer(x), _plain(x, layer.base.weight, layer.base.bias, layer.lora_A, layer.lora_B, layer.scaling))


def test_lora_and_adalora_layers_train_like_the_plain_update():
    """One SGD step through LoRALinear / SVDLinear moves the adapter exactly as the plain math."""
    torch.manual_seed(0)
    for layer in (LoRALinear(torch.nn.Linear(8, 6), rank=3, alpha=6.0), SVDLinear(torch.nn.Linear(8, 6), rank=3, alpha=6.0)):
        for parameter in layer.parameters():
            if parameter.requires_grad:
                torch.nn.init.normal_(parameter)
        x = torch.randn(4, 8, requires_grad=True)
        names = [n for n, p in layer.named_parameters() if p.requires_grad]
        params = [p for p in layer.parameters() if p.requires_grad]
        fused_grads = torch.autograd.grad(layer(x).square().sum(), [x, *params])
        if isinstance(layer, LoRALinear):
            A, B = layer.lora_A, layer.lora_B  # noqa: N806
        else:
            A, B = layer.lora_Q * layer.lora_lambda.unsqueeze(1), layer.lora_P  # noqa: N806
        plain = layer.base(x) + F.linear(F.linear(x, A), B) * layer.scaling
        plain_grads = torch.autograd.grad(plain.square().sum(), [x, *params])
        for name, got, expected in zip(["x", *names], fused_grads, plain_grads, strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=name)


def test_autocast_runs_in_the_autocast_dtype_and_reaches_fp32_parameters():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(16, 12), rank=4, alpha=8.0)
    torch.nn.init.normal_(layer.lora_B)
    x = torch.randn(5, 16)
    reference = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)
    out.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and layer.lora_B.grad.dtype == torch.float32
    assert layer.lora_B.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_fvcore_counts_the_update_multiply_adds(method):
    """fvcore traces the model: the update must stay visible to it (the fused autograd function
    would be one opaque op). Extra multiply-adds per token = Σ_targets r (d_in + d_out)."""
    from pefthub.budget import flop_overhead
    from pefthub.methods import AdaLoRAModule, LoRAModule

    if method == "lora":
        module = LoRAModule(backbone="tiny-bert", rank=4, alpha=8)
        layers = [m for m in module.backbone.modules() if isinstance(m, LoRALinear)]
    else:
        module = AdaLoRAModule(backbone="tiny-bert", init_rank=4, target_rank=2)
        layers = [m for m in module.backbone.modules() if isinstance(m, SVDLinear)]
    seq_len = 16
    measured = flop_overhead(module, seq_len=seq_len)
    rank = 4
    expected = seq_len * sum(rank * (layer.in_features + layer.out_features) for layer in layers)
    assert layers and measured["adapted_flops"] - measured["host_flops"] == expected

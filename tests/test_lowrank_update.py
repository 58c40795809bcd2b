"""The fused low-rank update has the plain composition's value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pefthub.adapters.adalora import SVDLinear
from pefthub.adapters.lora import LoRALinear
from pefthub.adapters.lowrank_update import low_rank_update


def _plain(result, x, A, B, scaling):  # noqa: N803
    return result + F.linear(F.linear(x, A), B) * scaling


@pytest.mark.parametrize("x_requires_grad", [True, False])
def test_value_and_every_gradient_equal_the_plain_composition(x_requires_grad):
    generator = torch.Generator().manual_seed(0)
    shape = (3, 5, 7)  # (batch, tokens, d_in): the update works on any leading shape

    def leaf(*size):
        return torch.randn(*size, generator=generator, dtype=torch.float64).requires_grad_()

    x = torch.randn(*shape, generator=generator, dtype=torch.float64).requires_grad_(x_requires_grad)
    result, A, B = leaf(3, 5, 4), leaf(2, 7), leaf(4, 2)  # noqa: N806
    grad_out = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)

    inputs = [result, A, B] + ([x] if x_requires_grad else [])
    fused = low_rank_update(result, x, A, B, 1.75)
    fused_grads = torch.autograd.grad(fused, inputs, grad_out)
    plain = _plain(result, x, A, B, 1.75)
    plain_grads = torch.autograd.grad(plain, inputs, grad_out)

    torch.testing.assert_close(fused, plain, atol=1e-12, rtol=0)
    for got, expected in zip(fused_grads, plain_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_gradcheck():
    generator = torch.Generator().manual_seed(1)
    tensors = [torch.randn(*s, generator=generator, dtype=torch.float64, requires_grad=True)
               for s in [(6, 3), (6, 4), (2, 4), (3, 2)]]
    assert torch.autograd.gradcheck(lambda r, x, a, b: low_rank_update(r, x, a, b, 0.5), tensors)


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
        plain = _plain(layer.base(x), x, A, B, layer.scaling)
        plain_grads = torch.autograd.grad(plain.square().sum(), [x, *params])
        for name, got, expected in zip(["x", *names], fused_grads, plain_grads, strict=True):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=name)


def test_autocast_uses_the_plain_composition():
    x, result = torch.randn(4, 8), torch.randn(4, 6)
    A, B = torch.randn(2, 8, requires_grad=True), torch.randn(6, 2, requires_grad=True)  # noqa: N806
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = low_rank_update(result, x, A, B, 2.0)
    assert out.grad_fn.name() != "_LowRankUpdateBackward"
    out.float().sum().backward()
    assert A.grad is not None and B.grad is not None


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

"""LoRALinear and injection: identities that must hold exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pefthub.adapters import LoRALinear, adapter_modules, find_targets
from pefthub.backbones import build_tiny_model
from pefthub.methods import LoRAModule


def _randomise_lora(module: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_modules(module):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)


def test_fresh_lora_gives_exactly_the_base_output(batch):
    base = build_tiny_model("tiny-bert").eval()
    model = LoRAModule(backbone="tiny-bert", rank=4).eval()
    expected = base(**batch).last_hidden_state
    actual = model.backbone(**batch).last_hidden_state
    assert torch.equal(actual, expected)


def test_merge_and_unmerge_reproduce_unmerged_outputs(batch):
    model = LoRAModule(backbone="tiny-bert", rank=4, alpha=8).eval()
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=0.05)
    labels = torch.tensor([1, 0, 1, 1])
    for _ in range(3):  # real training steps make B non-zero
        loss = nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert any(layer.lora_B.abs().sum() > 0 for _, layer in adapter_modules(model))
    with torch.no_grad():
        unmerged = model(batch["input_ids"], batch["attention_mask"])
        weights_before = {name: layer.base.weight.clone() for name, layer in adapter_modules(model)}
        for _, layer in adapter_modules(model):
            layer.merge()
        merged = model(batch["input_ids"], batch["attention_mask"])
        for name, layer in adapter_modules(model):
            torch.testing.assert_close(layer.base.weight, weights_before[name] + layer.delta_weight())
            layer.unmerge()
        restored = model(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(restored, unmerged, atol=1e-5, rtol=0)


def test_only_lora_and_head_are_trainable():
    model = LoRAModule(backbone="tiny-bert", rank=2)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing is trainable"
    assert all(name.startswith("head.") or name.endswith((".lora_A", ".lora_B")) for name in trainable)
    # every targeted layer contributes A and B; 2 layers x 6 targets in tiny-bert
    assert sum(name.endswith(".lora_A") for name in trainable) == 12
    assert {"head.weight", "head.bias"} <= trainable
    expected = sum(2 * (layer.in_features + layer.out_features) for _, layer in adapter_modules(model)) + 32 * 2 + 2
    assert sum(p.numel() for p in model.trainable_parameters()) == expected


def test_lora_forward_matches_the_equation():
    torch.manual_seed(0)
    linear = nn.Linear(6, 5)
    layer = LoRALinear(linear, rank=3, alpha=6.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 6)
    expected = x @ linear.weight.T + linear.bias + (6.0 / 3) * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("rank", [0, -1, 33])
def test_rank_out_of_range_is_a_clear_error(rank):
    with pytest.raises(ValueError, match="rank"):
        LoRAModule(backbone="tiny-bert", rank=rank)


def test_pattern_matching_nothing_lists_existing_linears():
    with pytest.raises(ValueError, match=r"no_such_proj.*Linear layers present: .*attention\.self\.query"):
        LoRAModule(backbone="tiny-bert", target_modules=["query", "no_such_proj"])


def test_family_defaults_cover_bert_and_llama():
    bert = find_targets(build_tiny_model("tiny-bert"), LoRAModule(backbone="tiny-bert").target_modules)
    assert {pattern for _, pattern in bert} == {
        "attention.self.query", "attention.self.key", "attention.self.value",
        "attention.output.dense", "intermediate.dense", "output.dense",
    }
    llama = LoRAModule(backbone="tiny-llama", rank=2)
    assert len(llama.sites) == 2 * 7
    assert {s.depth for s in llama.sites} == {0, 1}

"""pefthub LoRA against HF PEFT's LoRA (the reference implementation)."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from pefthub.adapters import adapter_modules
from pefthub.backbones import build_tiny_model
from pefthub.methods import LoRAModule


def test_same_A_B_give_the_same_logits_as_hf_peft(batch):
    ours = LoRAModule(backbone="tiny-bert", rank=4, alpha=8).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in adapter_modules(ours):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator))

    reference = get_peft_model(
        build_tiny_model("tiny-bert"),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(ours.target_modules)),
    ).eval()
    peft_layers = {
        name.removeprefix("base_model.model."): module
        for name, module in reference.named_modules()
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})
    }
    assert set(peft_layers) == {name.removeprefix("backbone.") for name, _ in adapter_modules(ours)}
    with torch.no_grad():
        for name, layer in adapter_modules(ours):
            peft_layer = peft_layers[name.removeprefix("backbone.")]
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
        ours_logits = ours(batch["input_ids"], batch["attention_mask"])
        hidden = reference(**batch).last_hidden_state
        reference_logits = ours.head(ours.pool(hidden, batch["attention_mask"]))
        without_adapter = ours.head(ours.pool(build_tiny_model("tiny-bert")(**batch).last_hidden_state, batch["attention_mask"]))
    assert not torch.allclose(ours_logits, without_adapter, atol=1e-3), "the adapter must change the logits"
    torch.testing.assert_close(ours_logits, reference_logits, atol=1e-5, rtol=0)

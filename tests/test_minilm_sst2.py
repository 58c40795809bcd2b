"""The real packaged MiniLM-L6 on the real builtin sst2 data (a few steps, default run)."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from pefthub.backbones import PACKAGED_MODELS
from pefthub.data import SentenceClassificationDataModule
from pefthub.methods import LoRAModule

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(PACKAGED_MODELS["minilm-l6"].module) is None and not os.environ.get("CI"),
    reason="minilm-l6 not installed (CI installs it and never skips)",
)


def test_a_few_real_steps_change_only_adapter_and_head_weights():
    torch.manual_seed(0)
    data = SentenceClassificationDataModule(task="sst2", backbone="minilm-l6", max_length=32, batch_size=8, train_limit=24, eval_limit=8)
    data.setup("fit")
    model = LoRAModule(backbone="minilm-l6", rank=4, alpha=8, num_labels=data.num_labels, label_names=data.label_names)
    assert len(model.sites) == 6 * 6
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    model.train()
    for batch in data.train_dataloader():
        logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        assert logits.shape == (batch["input_ids"].shape[0], 2)
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert changed == trainable
    assert all(n.startswith("head.") or n.endswith((".lora_A", ".lora_B")) for n in changed)
    test_batch = next(iter(data.test_dataloader()))
    assert set(test_batch["labels"].tolist()) <= {0, 1}


"""Full fine-tuning baseline: every weight trains, and its "adapter" file is the whole model."""

from __future__ import annotations

import torch
from lightning.pytorch import Trainer, seed_everything

from pefthub.budget import adapter_file_bytes
from pefthub.data import SentenceClassificationDataModule
from pefthub.methods import FullFineTuneModule


def _logits(module, batch):
    module.eval()
    with torch.no_grad():
        return module(batch["input_ids"], batch["attention_mask"])


def test_every_backbone_weight_trains_and_the_file_reloads_identically(tmp_path, batch):
    seed_everything(0)
    module = FullFineTuneModule(backbone="tiny-bert")
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable == {name for name, _ in module.named_parameters()}
    before = {k: v.detach().clone() for k, v in module.backbone.named_parameters()}

    data = SentenceClassificationDataModule(backbone="tiny-bert", task="sst2", max_length=16, batch_size=4, train_limit=16, eval_limit=4)
    trainer = Trainer(accelerator="cpu", max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    changed = [k for k, v in module.backbone.named_parameters() if not torch.equal(before[k], v)]
    assert "encoder.layer.0.attention.self.query.weight" in changed and len(changed) > len(before) // 2

    module.save_adapter(tmp_path / "full")
    assert adapter_file_bytes(tmp_path / "full") == module.adapter_file_bytes()
    assert module.adapter_file_bytes() > 4 * sum(p.numel() for p in module.parameters())
    fresh = FullFineTuneModule(backbone="tiny-bert")
    assert not torch.allclose(_logits(fresh, batch), _logits(module, batch))
    fresh.load_adapter(tmp_path / "full")
    torch.testing.assert_close(_logits(fresh, batch), _logits(module, batch), atol=0, rtol=0)

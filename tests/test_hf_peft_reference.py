"""The HF PEFT reference rows: PEFT's own LoRA / AdaLoRA inside pefthub's training loop."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from pefthub.data import SentenceClassificationDataModule
from pefthub.methods import HFPEFTAdaLoRAModule, HFPEFTLoRAModule, LoRAModule


def _trainer(tmp_path, **overrides) -> Trainer:
    kwargs = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path), max_steps=8)
    kwargs.update(overrides)
    return Trainer(**kwargs)


def _data() -> SentenceClassificationDataModule:
    return SentenceClassificationDataModule(task="sst2", backbone="tiny-bert", max_length=32, batch_size=8, train_limit=64, eval_limit=16)


def test_reference_lora_trains_what_pefthub_lora_trains_and_its_adapter_round_trips(tmp_path, batch):
    torch.manual_seed(0)
    reference = HFPEFTLoRAModule(backbone="tiny-bert", rank=4, alpha=8, optimizer=lambda p: torch.optim.AdamW(p, lr=0.02))
    ours = LoRAModule(backbone="tiny-bert", rank=4, alpha=8)
    trainable = {n: p.numel() for n, p in reference.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == sum(p.numel() for p in ours.parameters() if p.requires_grad)
    assert all("lora_" in n or n.startswith("head.") for n in trainable)
    _trainer(tmp_path).fit(reference, datamodule=_data())
    assert any(p.abs().sum() > 0 for n, p in reference.named_parameters() if "lora_B" in n)  # B left zero
    reference.save_adapter(tmp_path / "adapter")
    loaded = HFPEFTLoRAModule(backbone="tiny-bert", rank=4, alpha=8, init_adapter=str(tmp_path / "adapter"))
    reference.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), reference(**batch))


def test_reference_adalora_prunes_to_the_target_budget_with_peft_s_allocator(tmp_path, batch):
    torch.manual_seed(0)
    module = HFPEFTAdaLoRAModule(backbone="tiny-bert", init_rank=4, target_rank=2, alpha=8, tinit=2, tfinal=2,
                                 optimizer=lambda p: torch.optim.AdamW(p, lr=0.02))
    matrices = [m for n, m in module.named_parameters() if n.endswith("lora_E.default")]
    assert all(m.numel() == 4 for m in matrices)
    assert module.regularization() > 0  # PEFT's orthogonality penalty on the random P, Q
    _trainer(tmp_path, max_steps=12).fit(module, datamodule=_data())
    config = module.backbone.peft_config["default"]
    assert (config.total_step, config.tinit, config.tfinal) == (12, 2, 2)
    kept = sum(int((m != 0).sum()) for m in matrices)
    assert kept == 2 * len(matrices)  # PEFT's budget b_T = target_rank × matrices, reached and held
    module.save_adapter(tmp_path / "adapter")
    loaded = HFPEFTAdaLoRAModule(backbone="tiny-bert", init_rank=4, target_rank=2, alpha=8, init_adapter=str(tmp_path / "adapter"))
    module.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch), module(**batch))


def test_wrong_settings_fail_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"model.target_rank must be in \[1, model.init_rank=4\]"):
        HFPEFTAdaLoRAModule(backbone="tiny-bert", init_rank=4, target_rank=5)
    module = HFPEFTAdaLoRAModule(backbone="tiny-bert", init_rank=4, target_rank=2, tinit=0.5, tfinal=0.5)
    with pytest.raises(ValueError, match="leave no budget schedule in 4 optimiser steps"):
        _trainer(tmp_path, max_steps=4).fit(module, datamodule=_data())

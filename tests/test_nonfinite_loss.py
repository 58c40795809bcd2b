"""A NaN loss stops training with the step named, and the last good checkpoint stays intact."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from pefthub.callbacks.checkpoint import BestAndLastCheckpoint
from pefthub.data import SentenceClassificationDataModule
from pefthub.methods import LoRAModule
from pefthub.methods.base import NonFiniteLossError


class _NaNAtStep3(LoRAModule):
    def task_loss(self, logits, labels):
        loss = super().task_loss(logits, labels)
        return loss * float("nan") if self.global_step == 3 else loss


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    pl.seed_everything(0)
    data = SentenceClassificationDataModule(task="sst2", backbone="tiny-bert", max_length=16, batch_size=4, train_limit=40, eval_limit=4)
    model = _NaNAtStep3(backbone="tiny-bert", rank=2, num_labels=2)
    checkpoint = BestAndLastCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True, save_top_k=0)
    trainer = pl.Trainer(max_steps=8, callbacks=[checkpoint], logger=False, enable_progress_bar=False,
                         num_sanity_val_steps=0, limit_val_batches=0)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 3 .*Last good checkpoint: .*last\.ckpt"):
        trainer.fit(model, datamodule=data)
    state = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 3
    assert all(torch.isfinite(t).all() for t in state["state_dict"].values())
    assert all(torch.isfinite(p).all() for p in model.trainable_parameters()), "no optimiser step after the NaN"

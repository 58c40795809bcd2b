"""No host sync in a Lightning training step, for every method, except on logging steps.

A host sync (a value read back to the CPU: ``.item()``, ``float(t)``, ``.tolist()``, ``nonzero``)
makes the host wait for the GPU's whole launch queue. This test runs ``Trainer.fit`` on tiny-bert
and counts the syncs of each training batch — forward, loss, backward, penalties, every
callback's per-step work (rank allocation, importance warm-up) — leaving out the optimiser's
own step (AdamW reads its CPU-side step counters). On the CPU the NaN-loss check is free and
runs every step; here it is switched to what it does on a GPU (logging steps only).

Allowed everywhere: the host model's own read (transformers' ``padding_mask.all()`` when it
prepares the attention mask: one per forward); on logging steps and at phase changes
(GLoRA's reallocation, the end of a warm-up) anything.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer

from pefthub.methods import (
    AdaLoRAModule,
    FullFineTuneModule,
    GLoRAModule,
    ImportanceLoRAModule,
    LoRAModule,
    SATLoRAModule,
    UniHyperLoRAModule,
    VeRAModule,
)
from pefthub.methods.base import PEFTModule
from pefthub.opcount import OpCounter

LOG_EVERY = 4
STEPS = 12
WARMUP = 3  # FW/IW/GLoRA: importance warm-up steps (GLoRA reallocates at its end)


class SyncsPerStep(Callback):
    """Counts host syncs from ``on_train_batch_start`` to the next one, minus the optimiser step."""

    def __init__(self) -> None:
        self.syncs: dict[int, int] = {}
        self.logging: dict[int, bool] = {}
        self._counter: OpCounter | None = None
        self._step = 0

    def _open(self) -> None:
        self._counter = OpCounter()
        self._counter.__enter__()

    def _close(self) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.syncs[self._step] = self.syncs.get(self._step, 0) + self._counter.result.host_syncs
            self._counter = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from pefthub.callbacks.logging_step import is_logging_step

        self._close()
        self._step = trainer.global_step
        self.logging[self._step] = is_logging_step(trainer)
        self._open()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._close()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._open()  # what the other callbacks do after the step is counted too

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()


def _module(name: str) -> PEFTModule:
    common = {"backbone": "tiny-bert", "head_dropout": 0.1}
    if name == "lora":
        return LoRAModule(dropout=0.1, **common)
    if name == "adalora":
        return AdaLoRAModule(init_rank=4, target_rank=2, tinit=2, tfinal=3, dropout=0.1, **common)
    if name == "fw_lora":
        return ImportanceLoRAModule(importance_source="fisher", warmup_steps=WARMUP, **common)
    if name == "iw_lora":
        return ImportanceLoRAModule(importance_source="grad_norm", ema_beta=None, warmup_steps=WARMUP, **common)
    if name == "glora":
        return GLoRAModule(warmup_steps=WARMUP, **common)
    if name == "unihyperlora":
        return UniHyperLoRAModule(max_flop_overhead=None, lambda_flops=0.01, lambda_delta=1e-3, **common)
    if name == "satlora":
        return SATLoRAModule(max_flop_overhead=None, **common)
    if name == "vera":
        return VeRAModule(**common)
    return FullFineTuneModule(**common)


@pytest.mark.parametrize("name", ["lora", "adalora", "fw_lora", "iw_lora", "glora", "unihyperlora", "satlora", "vera", "full"])
def test_training_steps_read_nothing_back_except_on_logging_steps(name, tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger

    from pefthub.callbacks.logging_step import is_logging_step
    from pefthub.data import SentenceClassificationDataModule

    monkeypatch.setattr(PEFTModule, "_check_loss_now", lambda self: is_logging_step(self._trainer))
    torch.manual_seed(0)
    module = _module(name)
    data = SentenceClassificationDataModule(task="sst2", backbone="tiny-bert", max_length=32, batch_size=4,
                                            train_limit=4 * STEPS, eval_limit=4)
    counter = SyncsPerStep()
    trainer = Trainer(accelerator="cpu", max_epochs=1, log_every_n_steps=LOG_EVERY, limit_val_batches=0,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      logger=CSVLogger(tmp_path), callbacks=[counter], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert len(counter.syncs) == STEPS
    assert any(counter.logging.values()) and not all(counter.logging.values())
    phase_change = {WARMUP - 1, WARMUP} if name in ("fw_lora", "iw_lora", "glora") else set()
    quiet = {step: n for step, n in counter.syncs.items() if not counter.logging[step] and step not in phase_change}
    assert quiet, "no step to check"
    assert all(n <= 1 for n in quiet.values()), f"host syncs per non-logging step (1 allowed: the host model's): {quiet}"

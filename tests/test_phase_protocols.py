"""The method ↔ phase-callback contract: each phase callback checks its module's Protocol at
setup and names the method it needs; the methods that provide a phase satisfy its Protocol."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer

from pefthub.callbacks.importance_warmup import ImportanceWarmup
from pefthub.callbacks.protocols import (
    DeltaTunableModule,
    ImportanceWarmupModule,
    RankAllocatingModule,
    RankReallocatingModule,
)
from pefthub.callbacks.rank_allocation import AdaLoRARankAllocation
from pefthub.callbacks.rank_reallocation import RankReallocation
from pefthub.callbacks.transfer import DeltaTuning
from pefthub.methods import (
    AdaLoRAModule,
    GLoRAModule,
    ImportanceLoRAModule,
    LoRAModule,
    UniHyperLoRAModule,
)


@pytest.fixture(scope="module")
def lora() -> LoRAModule:
    return LoRAModule(backbone="tiny-bert", rank=2)


@pytest.mark.parametrize(
    ("callback", "message"),
    [
        (AdaLoRARankAllocation(), r"^AdaLoRARankAllocation needs a RankAllocatingModule \(model.class_path: pefthub.methods.AdaLoRAModule\), got LoRAModule$"),
        (ImportanceWarmup(warmup_steps=2), r"^ImportanceWarmup needs a ImportanceWarmupModule \(model.class_path: pefthub.methods.ImportanceLoRAModule or pefthub.methods.GLoRAModule\), got LoRAModule$"),
        (RankReallocation(), r"^RankReallocation needs a RankReallocatingModule \(model.class_path: pefthub.methods.GLoRAModule\), got LoRAModule$"),
        (DeltaTuning(steps=2), r"^DeltaTuning needs a DeltaTunableModule \(model.class_path: pefthub.methods.UniHyperLoRAModule\), got LoRAModule$"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else "",
)
def test_a_phase_callback_on_the_wrong_method_is_a_one_line_error(lora, callback, message):
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(TypeError, match=message):
        callback.setup(trainer, lora, "fit")


def test_each_phase_method_provides_its_protocol(lora):
    torch.manual_seed(0)
    assert isinstance(AdaLoRAModule(backbone="tiny-bert", init_rank=4, target_rank=2), RankAllocatingModule)
    fw = ImportanceLoRAModule(backbone="tiny-bert", rank=2, warmup_steps=2)
    assert isinstance(fw, ImportanceWarmupModule) and not isinstance(fw, RankReallocatingModule)
    glora = GLoRAModule(backbone="tiny-bert", rank=2, warmup_steps=2)
    assert isinstance(glora, ImportanceWarmupModule) and isinstance(glora, RankReallocatingModule)
    assert isinstance(UniHyperLoRAModule(backbone="tiny-bert", max_flop_overhead=None), DeltaTunableModule)
    assert not any(isinstance(lora, p) for p in (RankAllocatingModule, ImportanceWarmupModule, RankReallocatingModule, DeltaTunableModule))


def test_phase_callbacks_come_from_configure_callbacks_only():
    """A method builds its phase callbacks when the trainer asks, fresh each time (no callback
    objects created in ``__init__`` and shared between fits)."""
    glora = GLoRAModule(backbone="tiny-bert", rank=2, warmup_steps=3, calibration="frozen")
    first, second = glora.configure_callbacks(), glora.configure_callbacks()
    (warmup,) = [c for c in first if isinstance(c, ImportanceWarmup)]
    assert (warmup.warmup_steps, warmup.calibration) == (3, "frozen")
    assert any(isinstance(c, RankReallocation) for c in first)
    assert not {id(c) for c in first} & {id(c) for c in second}
    assert not any(isinstance(v, ImportanceWarmup) for v in vars(glora).values())


def test_delta_tuning_refuses_a_train_head_that_contradicts_init_head():
    module = UniHyperLoRAModule(backbone="tiny-bert", max_flop_overhead=None)  # init_head: true
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"^DeltaTuning.train_head=True contradicts model.init_head=True: .*set only model.init_head$"):
        DeltaTuning(steps=2, train_head=True).setup(trainer, module, "fit")
    callback = DeltaTuning(steps=2)
    callback.setup(trainer, module, "fit")
    assert callback.sizes == {"budget/delta_params": module.hyper.mixer.delta.numel(), "budget/new_head_params": 0}
    assert {n for n, p in module.named_parameters() if p.requires_grad} == {"hyper.mixer.delta"}
    assert trainer.fit_loop.epoch_loop.max_steps == 2 and trainer.fit_loop.max_epochs == -1

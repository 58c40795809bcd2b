"""GLoRA rank reallocation, the warm-up phase change and resume across it (tiny-bert, Trainer)."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from pefthub.adapters import LoRALinear
from pefthub.adapters.peft_format import export_to_peft
from pefthub.backbones import tiny_tokenizer
from pefthub.methods import GLoRAModule, ImportanceLoRAModule, LoRAModule

TEXTS = [
    "a good movie , really good", "the worst film of the year", "fun", "never boring, always new!",
    "dull and slow", "a delight from start to end", "i want my money back", "smart, warm and funny",
    "a mess", "beautifully acted", "painfully long", "the best thing this year",
]


class FixedBatches(LightningDataModule):
    """Three fixed batches of four sentences, same order every epoch (resume-safe)."""

    def __init__(self) -> None:
        super().__init__()
        tokenizer = tiny_tokenizer()
        self.batches = []
        for start in range(0, len(TEXTS), 4):
            encoded = dict(tokenizer(TEXTS[start : start + 4], padding=True, return_tensors="pt"))
            encoded.pop("token_type_ids", None)
            encoded["labels"] = torch.tensor([(start + i) % 2 for i in range(4)])
            self.batches.append(encoded)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.batches, batch_size=None, shuffle=False)


class ReseedEachEpoch(Callback):
    """Same dropout noise in an uninterrupted and a resumed run (Lightning does not restore RNG)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        torch.manual_seed(1000 + trainer.current_epoch)


class Probe(Callback):
    """Records, at every optimiser step, the lr and whether the optimiser holds exactly the
    trainable parameters."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.exact: list[bool] = []
        self.ranks: list[dict[str, int]] = []
        self.head_steps: list[int] = []  # Adam steps the head's state has seen so far
        self.fresh: list[int] = []  # parameters without optimiser state

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
        trainable = [p for p in pl_module.parameters() if p.requires_grad]
        self.exact.append(len(in_optimizer) == len(trainable) and {id(p) for p in in_optimizer} == {id(p) for p in trainable})
        self.lrs.append(optimizer.param_groups[0]["lr"])
        head_state = optimizer.state.get(pl_module.head.weight, {})
        self.head_steps.append(int(head_state["step"]) if "step" in head_state else 0)
        self.fresh.append(sum(1 for p in in_optimizer if p.numel() and p not in optimizer.state))
        if hasattr(pl_module, "current_ranks"):
            self.ranks.append(pl_module.current_ranks())


def _trainer(tmp_path, epochs: int, callbacks: list, checkpoint: bool = False) -> Trainer:
    callbacks = [ReseedEachEpoch(), *callbacks]
    if checkpoint:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True))
    return Trainer(
        accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=checkpoint, limit_val_batches=0, callbacks=callbacks, default_root_dir=tmp_path,
    )


def _glora(**kwargs) -> GLoRAModule:
    torch.manual_seed(0)
    defaults = {"backbone": "tiny-bert", "rank": 4, "alpha": 8, "warmup_steps": 4, "head_dropout": 0.0,
                "optimizer": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01)}
    return GLoRAModule(**{**defaults, **kwargs})


def _trainable(module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------------- LoRALinear.resize


def test_growing_the_rank_keeps_the_outputs_and_shrinking_keeps_the_largest_components():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(12, 10), rank=4, alpha=8.0)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_B[:, 1] *= 10  # component 1 largest, component 3 smallest
        layer.lora_B[:, 3] *= 0.01
    x = torch.randn(5, 12)
    before, delta = layer(x), layer.delta_weight()
    layer.resize(7)
    torch.testing.assert_close(layer(x), before, rtol=1e-6, atol=1e-6)
    assert layer.rank == 7 and layer.scaling == pytest.approx(2.0)
    assert torch.equal(layer.lora_B[:, 4:], torch.zeros(10, 3)) and layer.lora_A[4:].abs().sum() > 0

    old_A, old_B = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    layer.resize(2)  # keeps components 0 and 1 (the two largest ‖b_i‖·‖a_i‖), in order
    expected = 2.0 * old_B[:, [0, 1]] @ old_A[[0, 1]]
    torch.testing.assert_close(layer.delta_weight(), expected)
    assert not torch.allclose(layer.delta_weight(), delta)
    layer.resize(0)
    torch.testing.assert_close(layer(x), layer.base(x))
    with pytest.raises(ValueError, match="rank"):
        layer.resize(11)


def test_glora_rebuild_with_only_added_columns_leaves_the_logits_unchanged(batch):
    module = _glora().eval()
    with torch.no_grad():
        for layer in module.importance_layers().values():
            layer.lora_B.normal_()
        before = module(batch["input_ids"], batch["attention_mask"])
        pattern = {name: 4 + i % 3 for i, name in enumerate(module.current_ranks())}
        module.apply_rank_pattern(pattern)
        after = module(batch["input_ids"], batch["attention_mask"])
    assert module.current_ranks() == pattern
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------- phase change in a Trainer


def test_reallocation_in_a_trainer_rebuilds_the_optimiser_and_keeps_the_lr_schedule(tmp_path):
    module, probe = _glora(), Probe()
    _trainer(tmp_path / "glora", 3, [probe]).fit(module, datamodule=FixedBatches())
    assert all(probe.exact), f"optimiser != trainable parameters at steps {[i for i, e in enumerate(probe.exact) if not e]}"
    assert all(ranks == {n: 4 for n in ranks} for ranks in probe.ranks[:4])
    final = probe.ranks[4]
    assert final != probe.ranks[0] and sum(final.values()) == 12 * 4 == module.total_rank
    assert all(ranks == final for ranks in probe.ranks[4:])
    assert any(r == 0 for r in final.values()), "tiny-bert's query/key get ~zero gradient: expected removed adapters"
    zero_size = [p for layer in module.importance_layers().values() for p in layer.adapter_parameters().values() if p.numel() == 0]
    assert zero_size and not any(p.requires_grad for p in zero_size)

    reference = LoRAModule(backbone="tiny-bert", rank=4, alpha=8, head_dropout=0.0,
                           optimizer=lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01))
    lora_probe = Probe()
    _trainer(tmp_path / "lora", 3, [lora_probe]).fit(reference, datamodule=FixedBatches())
    assert probe.lrs == lora_probe.lrs  # the schedule neither restarted nor skipped
    assert probe.head_steps == list(range(9)), "the head's Adam state must survive the rebuild"
    resized = sum(2 for n, r in final.items() if r not in (0, 4))
    assert probe.fresh[4] == resized and probe.fresh[5] == 0, "resized parameters start with fresh optimiser state"


@pytest.mark.parametrize("resume_epoch", [0, 1], ids=["during_warmup", "after_reallocation"])
def test_resume_across_the_reallocation_equals_the_uninterrupted_run(tmp_path, resume_epoch):
    # 3 steps per epoch, warm-up 4 steps: epoch 0 ends inside the warm-up (EMA half-filled),
    # the reallocation happens at the start of step 5, epoch 1 ends after it.
    full = _glora()
    _trainer(tmp_path / "full", 3, [], checkpoint=True).fit(full, datamodule=FixedBatches())
    checkpoints = sorted((tmp_path / "full" / "ckpt").glob("*.ckpt"))
    assert len(checkpoints) == 3
    stored = torch.load(checkpoints[resume_epoch], weights_only=True)
    (estimator,) = [state["estimator"] for key, state in stored["callbacks"].items() if key.startswith("ImportanceWarmup")]
    assert "pefthub_importance" not in stored, "the warm-up callback owns the estimator's state"
    assert estimator["frozen"] is bool(resume_epoch)
    assert estimator["steps"] == (3 if resume_epoch == 0 else 4)

    resumed, probe = _glora(), Probe()
    _trainer(tmp_path / "resumed", 3, [probe]).fit(resumed, datamodule=FixedBatches(), ckpt_path=checkpoints[resume_epoch])
    assert all(probe.exact)
    assert resumed.current_ranks() == full.current_ranks()
    assert resumed.importance_estimator.state_dict() == full.importance_estimator.state_dict()
    expected, actual = _trainable(full), _trainable(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("layout", ["callback_state", "legacy_module_key"])
def test_fw_lora_resumes_its_fisher_ema_mid_warmup(tmp_path, layout):
    """The warm-up callback's state holds the estimator; a checkpoint written before that kept
    it under the module's ``pefthub_importance`` key, and still resumes to the same run."""

    def make():
        torch.manual_seed(0)
        return ImportanceLoRAModule(backbone="tiny-bert", rank=4, alpha=8, warmup_steps=4, head_dropout=0.0,
                                    penalty_weight=0.1, optimizer=lambda p: torch.optim.AdamW(p, lr=0.01))

    full = make()
    _trainer(tmp_path / "full", 3, [], checkpoint=True).fit(full, datamodule=FixedBatches())
    first = sorted((tmp_path / "full" / "ckpt").glob("*.ckpt"))[0]
    if layout == "legacy_module_key":
        stored = torch.load(first, weights_only=True)
        (key,) = [k for k in stored["callbacks"] if k.startswith("ImportanceWarmup")]
        stored["pefthub_importance"] = stored["callbacks"].pop(key)["estimator"]
        first = tmp_path / "legacy.ckpt"
        torch.save(stored, first)
    resumed = make()
    _trainer(tmp_path / "resumed", 3, []).fit(resumed, datamodule=FixedBatches(), ckpt_path=first)
    assert full.importance_estimator.frozen and full.importance_estimator.steps == 4
    assert resumed.importance_estimator.state_dict() == full.importance_estimator.state_dict()
    for name, value in _trainable(full).items():
        torch.testing.assert_close(_trainable(resumed)[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("mode", ["frozen", "tiny_lr"])
def test_calibration_modes_hold_the_adapters_still_or_scale_their_step(tmp_path, mode):
    def run(calibration: str) -> tuple[dict, dict]:
        torch.manual_seed(0)
        module = ImportanceLoRAModule(backbone="tiny-bert", rank=4, alpha=8, warmup_steps=10, calibration=calibration,
                                      calibration_lr_scale=0.1, head_dropout=0.0,
                                      optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
        with torch.no_grad():  # B ≠ 0 so A gets gradients too
            for layer in module.importance_layers().values():
                layer.lora_B.normal_(std=0.1)
        before = _trainable(module)
        trainer = _trainer(tmp_path / calibration, 1, [])
        trainer.fit_loop.epoch_loop.max_steps = 1
        trainer.fit(module, datamodule=FixedBatches())
        return before, _trainable(module)

    before, trained = run("train")
    _, calibrated = run(mode)
    adapter_names = [n for n in before if n.endswith((".lora_A", ".lora_B"))]
    for name in adapter_names:
        step = trained[name] - before[name]
        expected = torch.zeros_like(step) if mode == "frozen" else 0.1 * step
        torch.testing.assert_close(calibrated[name] - before[name], expected, rtol=1e-4, atol=1e-7, msg=name)
    assert not torch.equal(calibrated["head.weight"], before["head.weight"]), "the head trains during calibration"


# ---------------------------------------------------------------------------- adapter files


def test_glora_adapter_records_ranks_and_loads_into_a_fresh_module(tmp_path, batch):
    module = _glora()
    _trainer(tmp_path, 2, []).fit(module, datamodule=FixedBatches())
    assert module.reallocated
    saved = tmp_path / "adapter"
    module.save_adapter(saved)
    config = json.loads((saved / "adapter_config.json").read_text())
    assert config["rank_pattern"] == module.current_ranks()
    assert config["method"] == "glora" and config["importance"] is not None

    fresh = _glora().eval()
    fresh.load_adapter(saved)
    rebuilt = GLoRAModule.from_adapter(str(saved), warmup_steps=4).eval()
    module.eval()
    with torch.no_grad():
        expected = module(batch["input_ids"], batch["attention_mask"])
        torch.testing.assert_close(fresh(batch["input_ids"], batch["attention_mask"]), expected, rtol=0, atol=0)
        torch.testing.assert_close(rebuilt(batch["input_ids"], batch["attention_mask"]), expected, rtol=0, atol=0)
    peft_config = json.loads((export_to_peft(saved, tmp_path / "peft") / "adapter_config.json").read_text())
    exported = {n: r for n, r in module.current_ranks().items() if r > 0}
    assert sorted(peft_config["target_modules"]) == sorted(exported)
    assert {n: peft_config["rank_pattern"].get(n, peft_config["r"]) for n in exported} == exported

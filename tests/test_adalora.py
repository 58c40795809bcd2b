"""AdaLoRA: schedule values, SVDLinear identities, the allocator contract inside Lightning,
adapter files, export to plain LoRA, and checkpoint/resume equivalence."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from pefthub.adapters import SVDLinear
from pefthub.adapters.rank_allocation import RankAllocator
from pefthub.backbones import build_tiny_model
from pefthub.data import SentenceClassificationDataModule
from pefthub.methods import AdaLoRAModule
from pefthub.scoring import adalora_budget, adalora_phase, global_topk_mask, resolve_step_count

# --------------------------------------------------------------------------- schedule (pure)


def test_budget_schedule_at_hand_computed_steps():
    kw = dict(init_budget=100, target_budget=20, tinit=10, tfinal=10, total_steps=110)  # reduction over 90 steps
    # t <= t_i: b0
    assert [adalora_budget(t, **kw) for t in (0, 5, 10)] == [100, 100, 100]
    # t = 40: 20 + 80 (1 - 30/90)^3 = 20 + 80 * 8/27 = 43.70 -> 43
    assert adalora_budget(40, **kw) == 43
    # t = 55: 20 + 80 (1/2)^3 = 30 exactly
    assert adalora_budget(55, **kw) == 30
    # t = 11: 20 + 80 (89/90)^3 = 97.36 -> 97 (the first reduction already prunes)
    assert adalora_budget(11, **kw) == 97
    # t = 99: 20 + 80 (1/90)^3 = 20.0001 -> 20
    assert adalora_budget(99, **kw) == 20
    # the last t_f steps (100..109): b_T
    assert {adalora_budget(t, **kw) for t in range(100, 110)} == {20}
    assert [adalora_phase(t, 10, 10, 110) for t in (0, 10, 11, 99, 100, 109)] == ["warmup", "warmup", "reduce", "reduce", "final", "final"]


def test_budget_schedule_without_reduction_phase_is_an_error():
    with pytest.raises(ValueError, match="tinit < total_steps - tfinal"):
        adalora_budget(0, init_budget=10, target_budget=5, tinit=5, tfinal=5, total_steps=10)


def test_step_counts_accept_ints_and_fractions():
    assert resolve_step_count(7, 100, "model.tinit") == 7
    assert resolve_step_count(0.25, 110, "model.tinit") == 27
    for bad in (1.0, -0.1, -3, True):
        with pytest.raises(ValueError, match="model.tinit"):
            resolve_step_count(bad, 100, "model.tinit")


def test_global_topk_mask_keeps_the_highest_scores():
    scores = torch.tensor([0.3, 0.1, 0.9, 0.5, 0.2])
    assert global_topk_mask(scores, 2).tolist() == [False, False, True, True, False]
    assert global_topk_mask(scores, 5).all() and not global_topk_mask(scores, 0).any()
    # ties at the threshold are dropped together: at most `keep` survive
    assert global_topk_mask(torch.tensor([1.0, 2.0, 2.0, 3.0]), 2).tolist() == [False, False, False, True]


# --------------------------------------------------------------------------- SVDLinear


def test_svd_linear_forward_matches_the_equation_and_starts_at_the_base_output():
    torch.manual_seed(0)
    linear = nn.Linear(6, 5)
    layer = SVDLinear(linear, rank=3, alpha=6.0)
    x = torch.randn(4, 6)
    torch.testing.assert_close(layer(x), linear(x), atol=0, rtol=0)  # λ = 0 at init
    with torch.no_grad():
        layer.lora_lambda.copy_(torch.tensor([0.5, -1.0, 2.0]))
    expected = linear(x) + (6.0 / 3) * x @ (layer.lora_P @ torch.diag(layer.lora_lambda) @ layer.lora_Q).T
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.delta_weight(), 2.0 * layer.lora_P @ torch.diag(layer.lora_lambda) @ layer.lora_Q)
    layer.set_mask(torch.tensor([True, False, True]))
    assert layer.lora_lambda.tolist() == [0.5, 0.0, 2.0] and layer.active_rank == 2


def test_only_P_lambda_Q_and_head_are_trainable_and_init_rank_is_checked():
    module = AdaLoRAModule(backbone="tiny-bert", init_rank=4, target_rank=2)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert all(n.startswith("head.") or n.endswith((".lora_P", ".lora_lambda", ".lora_Q")) for n in trainable)
    expected = sum(4 * (layer.in_features + layer.out_features + 1) for layer in module.svd_layers.values()) + 32 * 2 + 2
    assert sum(p.numel() for p in module.trainable_parameters()) == expected
    with pytest.raises(ValueError, match="model.target_rank"):
        AdaLoRAModule(backbone="tiny-bert", init_rank=4, target_rank=5)
    with pytest.raises(ValueError, match="init_rank=33 exceeds"):
        AdaLoRAModule(backbone="tiny-bert", init_rank=33, target_rank=2)
    with pytest.raises(ValueError, match="model.orth_reg_form"):
        AdaLoRAModule(backbone="tiny-bert", orth_reg_form="squared")


def test_allocator_skips_importance_update_on_non_finite_gradients():
    layers = {"a": SVDLinear(nn.Linear(5, 4), rank=3), "b": SVDLinear(nn.Linear(5, 4), rank=3)}
    allocator = RankAllocator(layers, target_rank=1, tinit=0, tfinal=1)
    for layer in layers.values():
        for p in layer.adapter_parameters().values():
            p.grad = torch.ones_like(p)
    assert allocator.update_importance()
    before = {k: v.clone() for k, v in allocator.state_dict()["sensitivity"].items()}
    layers["b"].lora_Q.grad[0, 0] = math.inf
    assert not allocator.update_importance()
    assert allocator.skipped_nonfinite == 1
    after = allocator.state_dict()["sensitivity"]
    assert all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------- Lightning


def _data(**overrides) -> SentenceClassificationDataModule:
    kwargs = dict(task="sst2", backbone="tiny-bert", max_length=32, batch_size=8, train_limit=32, eval_limit=16)
    kwargs.update(overrides)
    return SentenceClassificationDataModule(**kwargs)


def _module(**overrides) -> AdaLoRAModule:
    kwargs = dict(
        backbone="tiny-bert", init_rank=4, target_rank=2, alpha=8, head_dropout=0.0, lr_schedule="constant",
        warmup_fraction=0.0, optimizer=lambda params: torch.optim.AdamW(params, lr=0.02), log_ranks=True,
    )
    kwargs.update(overrides)
    return AdaLoRAModule(**kwargs)


def _trainer(tmp_path, **overrides) -> Trainer:
    kwargs = dict(
        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path), deterministic=True,
    )
    kwargs.update(overrides)
    return Trainer(**kwargs)


class _Spy(Callback):
    """Records the batches and, per optimiser step, the weights just before the step."""

    def __init__(self) -> None:
        self.batches, self.before_step = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append({k: v.clone() for k, v in batch.items()})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before_step.append({name: layer.lora_lambda.detach().clone() for name, layer in pl_module.svd_layers.items()})


def test_allocator_runs_after_the_step_with_the_steps_gradients(tmp_path):
    """Inside Lightning the allocator sees, at each optimiser step, the gradients that step
    used and the already-updated weights; a hand-written PEFT-style loop (backward, step,
    allocate, zero_grad) on the same batches gives bit-identical weights and masks."""
    seed_everything(0)
    module = _module(tinit=1, tfinal=2, delta_t=1)
    seen = []
    original_step = module.allocator.step

    def spying_step(step):
        layer = next(iter(module.svd_layers.values()))
        seen.append((step, layer.lora_lambda.grad is not None and bool(layer.lora_lambda.grad.abs().sum() > 0), layer.lora_lambda.detach().clone()))
        return original_step(step)

    module.allocator.step = spying_step
    spy = _Spy()
    trainer = _trainer(tmp_path, max_steps=8, callbacks=[spy])
    trainer.fit(module, datamodule=_data())
    assert [s for s, _, _ in seen] == list(range(8))
    assert all(has_grad for _, has_grad, _ in seen)
    first = next(iter(module.svd_layers))
    assert not torch.equal(seen[0][2], spy.before_step[0][first]), "the allocator must run after optimizer.step()"

    seed_everything(0)
    replay = _module(tinit=1, tfinal=2, delta_t=1)
    replay.allocator.set_total_steps(8)
    replay.train()
    optimizer = torch.optim.AdamW(replay.trainable_parameters(), lr=0.02)
    for t, batch in enumerate(spy.batches):
        loss = F.cross_entropy(replay._logits(batch), batch["labels"])
        loss.backward()
        replay.apply_penalty_gradients()
        optimizer.step()
        replay.allocator.step(t)
        optimizer.zero_grad()
    assert module.allocator.rank_masks() == replay.allocator.rank_masks()
    assert module.allocator.active_rank() == 2 * 12
    for name, layer in module.svd_layers.items():
        for local, param in layer.adapter_parameters().items():
            assert torch.equal(param, replay.svd_layers[name].adapter_parameters()[local]), f"{name}.{local}"


def test_under_gradient_accumulation_the_allocator_acts_once_per_optimizer_step(tmp_path):
    module = _module(tinit=0, tfinal=1, delta_t=1)
    steps = []
    original_step = module.allocator.step
    module.allocator.step = lambda step: (steps.append(step), original_step(step))[1]
    trainer = _trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2)
    trainer.fit(module, datamodule=_data(train_limit=64))  # 8 micro-batches -> 4 optimiser steps
    assert module.allocator.total_steps == 4
    assert steps == [0, 1, 2, 3]
    assert module.allocator.active_rank() == 2 * 12


def test_schedule_without_reduction_phase_fails_at_fit_start_naming_the_keys(tmp_path):
    module = _module(tinit=3, tfinal=2)
    with pytest.raises(ValueError, match=r"model.tinit=3 steps, model.tfinal=2 steps, total optimiser steps T=4"):
        _trainer(tmp_path, max_steps=4).fit(module, datamodule=_data())


def _logged_budget_and_regularizer(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    module = _module(tinit=1, tfinal=2, delta_t=1)
    trainer = _trainer(tmp_path, max_steps=8, logger=CSVLogger(str(tmp_path), name="csv"), log_every_n_steps=1)
    trainer.fit(module, datamodule=_data())
    return module, (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()


def test_budget_ranks_and_regularizer_are_logged_every_step(tmp_path):
    import csv
    import io

    module, text = _logged_budget_and_regularizer(tmp_path)
    rows = list(csv.DictReader(io.StringIO(text)))
    budgets = [float(r["budget/rank_budget"]) for r in rows if r.get("budget/rank_budget")]
    assert budgets == [float(module.allocator.budget_at(t)) for t in range(8)]
    assert budgets[0] == 48 and budgets[-1] == 24
    assert len([r for r in rows if r.get("train/regularization")]) == 8
    layer = "rank/encoder.layer.0.attention.self.query"
    assert len([r for r in rows if r.get(layer)]) == 8
    final = [r for r in rows if r.get(layer)][-1]
    assert sum(float(final[f"rank/{name}"]) for name in module.svd_layers) == 24


# --------------------------------------------------------------------------- adapter files and export


def _allocated_module(seed: int = 0) -> AdaLoRAModule:
    """A module after a few hand-driven steps with masks applied (unequal ranks)."""
    torch.manual_seed(seed)
    module = _module(tinit=0, tfinal=1, delta_t=1).eval()
    module.allocator.set_total_steps(3)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in module.svd_layers.values():
            layer.lora_lambda.copy_(torch.randn(4, generator=generator))
            layer.lora_P.copy_(torch.randn(layer.lora_P.shape, generator=generator) * 0.3)
            layer.lora_Q.copy_(torch.randn(layer.lora_Q.shape, generator=generator) * 0.3)
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=0.01)
    ids = torch.randint(5, 100, (4, 9), generator=generator)
    for t in range(3):
        loss = F.cross_entropy(module(ids, torch.ones_like(ids)), torch.tensor([0, 1, 1, 0]))
        loss.backward()
        optimizer.step()
        module.allocator.step(t)
        optimizer.zero_grad()
    assert module.allocator.active_rank() == 24 and len(set(module.rank_pattern().values())) > 1
    return module


def test_saved_adapter_holds_the_rank_pattern_and_loading_restores_the_masks(tmp_path, batch):
    source = _allocated_module()
    source.save_adapter(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["method"] == "adalora"
    assert config["rank_pattern"] == source.rank_pattern() and sum(config["rank_pattern"].values()) == 24
    assert config["rank_mask"] == source.allocator.rank_masks()

    target = _module().eval()
    assert target.allocator.active_rank() == 48
    target.load_adapter(tmp_path / "adapter")
    assert target.allocator.rank_masks() == source.allocator.rank_masks()
    with torch.no_grad():
        assert torch.equal(target(batch["input_ids"], batch["attention_mask"]), source(batch["input_ids"], batch["attention_mask"]))


def test_export_as_lora_drops_pruned_triplets_and_pefthub_lora_loads_it_with_equal_logits(tmp_path, batch):
    from pefthub.methods import LoRAModule

    source = _allocated_module()
    export = source.export_lora()
    assert export.rank_pattern == source.rank_pattern()
    for name, rank in export.rank_pattern.items():
        layer = source.svd_layers[name]
        assert export.tensors[f"{name}.lora_A"].shape == (rank, layer.in_features)
        assert export.tensors[f"{name}.lora_B"].shape == (layer.out_features, rank)
        delta = export.scaling_pattern[name] * export.tensors[f"{name}.lora_B"] @ export.tensors[f"{name}.lora_A"]
        torch.testing.assert_close(delta, layer.delta_weight(), atol=1e-6, rtol=0)
    assert export.parameter_count() == sum(r * (source.svd_layers[n].in_features + source.svd_layers[n].out_features) for n, r in export.rank_pattern.items())

    source.save_lora_adapter(tmp_path / "lora")
    lora = LoRAModule.from_adapter(str(tmp_path / "lora")).eval()
    assert {name: layer.rank for name, layer in lora._lora_layers()} == source.rank_pattern()
    with torch.no_grad():
        expected = source(batch["input_ids"], batch["attention_mask"])
        without = _module().eval()(batch["input_ids"], batch["attention_mask"])
        actual = lora(batch["input_ids"], batch["attention_mask"])
    assert (expected - without).abs().max() > 1e-3
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_lora_export_converts_to_hf_peft_lora_with_rank_pattern(tmp_path, batch):
    from peft import PeftModel

    from pefthub.adapters.peft_format import export_to_peft

    source = _allocated_module()
    source.save_lora_adapter(tmp_path / "lora")
    export_to_peft(tmp_path / "lora", tmp_path / "peft")
    reference = PeftModel.from_pretrained(build_tiny_model("tiny-bert"), str(tmp_path / "peft")).eval()
    ranks = {
        name.removeprefix("base_model.model."): module.r["default"]
        for name, module in reference.named_modules()
        if isinstance(getattr(module, "r", None), dict) and "default" in module.r
    }
    assert ranks == {n: r for n, r in source.rank_pattern().items() if r > 0}
    with torch.no_grad():
        expected = source.backbone(**batch).last_hidden_state
        actual = reference(**batch).last_hidden_state
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- resume


def _resume_run(tmp_path, ckpt_path=None):
    seed_everything(0)
    module = _module(tinit=2, tfinal=4, delta_t=2)
    checkpoints = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = _trainer(
        tmp_path, max_epochs=4, enable_checkpointing=True, callbacks=[checkpoints], limit_val_batches=2,
        num_sanity_val_steps=0,
    )
    # the data module's shuffle is a function of (shuffle_seed, epoch): the resumed run sees the same batches
    trainer.fit(module, datamodule=_data(), ckpt_path=ckpt_path)
    return module, trainer


def test_resuming_from_a_mid_training_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    full, full_trainer = _resume_run(tmp_path / "full")
    assert full.allocator.total_steps == 16 and full.allocator.last_step == 15
    checkpoint = tmp_path / "full" / "ckpt" / "epoch=1.ckpt"  # after 8 of 16 steps, mid-reduction
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    callback_state = next(v for k, v in state["callbacks"].items() if "AdaLoRARankAllocation" in k)
    assert callback_state["last_global_step"] == 8 and callback_state["allocator"]["sensitivity"]
    assert any(k.endswith(".rank_mask") for k in state["state_dict"])

    resumed, resumed_trainer = _resume_run(tmp_path / "resumed", ckpt_path=str(checkpoint))
    assert resumed.allocator.rank_masks() == full.allocator.rank_masks()
    assert resumed.allocator.active_rank() == 24
    for name, layer in full.svd_layers.items():
        for local, param in layer.adapter_parameters().items():
            assert torch.equal(param, resumed.svd_layers[name].adapter_parameters()[local]), f"{name}.{local}"
    metrics = {k: v.item() for k, v in full_trainer.callback_metrics.items() if k.startswith("val/")}
    assert metrics and metrics == {k: resumed_trainer.callback_metrics[k].item() for k in metrics}


# --------------------------------------------------------------------------- CLI


def test_cli_fit_on_the_tiny_config_logs_ranks_and_saves_the_final_rank_pattern(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pefthub.events import read_scalars

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny" / "adalora_sst2.yaml"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pefthub.cli", "fit", "-c", str(config), "--test_after_fit", "true"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/accuracy" in result.stdout
    run_dir = tmp_path / "runs" / "tiny-adalora" / "version_0"
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["method"] == "adalora" and adapter["schedule"]["total_steps"] == 8
    assert sum(adapter["rank_pattern"].values()) == 2 * 12
    assert [sum(m) for m in adapter["rank_mask"].values()] == list(adapter["rank_pattern"].values())
    scalars = read_scalars(run_dir)
    for tag in ("budget/rank_budget", "budget/active_rank", "train/regularization", "rank/encoder.layer.1.output.dense"):
        assert tag in scalars, f"{tag} not logged"
    budgets = [value for _, value in scalars["budget/rank_budget"]]
    assert budgets[0] == 48 and budgets[-1] == 24 and len(budgets) == 8


@pytest.mark.parametrize("form", ["mean_norm", "sum_squared"])
def test_closed_form_penalty_gradient_equals_autograd_of_the_penalty(form):
    """Training adds γ ∂R/∂(P, Q) in closed form after backward; it must be autograd's gradient
    of the differentiable penalty (float64, so only rounding can differ)."""
    module = AdaLoRAModule(backbone="tiny-bert", init_rank=4, target_rank=2, orth_reg_form=form, orth_reg_weight=0.3).double()
    value, params, grads = module.penalty_gradients()
    expected = torch.autograd.grad(module.penalty(), params)
    torch.testing.assert_close(value, module.penalty().detach(), atol=1e-12, rtol=0)
    assert len(params) == 2 * len(module.svd_layers)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-9)
    # and apply_penalty_gradients adds exactly that to existing gradients
    for param in params:
        param.grad = torch.ones_like(param)
    module.apply_penalty_gradients(0.5)
    for param, want in zip(params, expected, strict=True):
        torch.testing.assert_close(param.grad, 1 + 0.5 * want, atol=1e-12, rtol=1e-9)


def test_singular_values_folded_for_all_layers_at_once_match_the_per_layer_update():
    """AdaLoRAModule folds P diag(λ) of every layer in one op before its forward; outputs and
    every gradient equal the per-layer update (λ inside each layer), and the fold's backward
    passes gradcheck (float64)."""
    from pefthub.adapters.adalora import _FoldSingularValues

    generator = torch.Generator().manual_seed(0)
    ps = [torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    ps.append(torch.randn(7, 3, generator=generator, dtype=torch.float64, requires_grad=True))
    lams = [torch.randn(3, generator=generator, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    assert torch.autograd.gradcheck(lambda *t: _FoldSingularValues.apply(3, *t), (*ps, *lams))

    from pefthub.methods.base import PEFTModule

    module = _module(tinit=1, tfinal=2).double().eval()  # eval: no dropout, gradients still flow
    with torch.no_grad():
        for layer in module.svd_layers.values():
            layer.lora_lambda.normal_()
    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    params = module.trainable_parameters()
    folded = module(ids, mask)
    folded_grads = torch.autograd.grad(folded.square().sum(), params)
    per_layer = PEFTModule._forward(module, ids, mask)  # the base forward: λ inside each layer
    per_layer_grads = torch.autograd.grad(per_layer.square().sum(), params)
    torch.testing.assert_close(folded, per_layer, atol=1e-12, rtol=1e-10)
    for got, want in zip(folded_grads, per_layer_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-9)

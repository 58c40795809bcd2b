"""LoRA under a byte budget: the check at fit start and the optional automatic rank cap."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from pefthub.budget import adapter_file_bytes
from pefthub.callbacks.budget import BudgetCheck, BudgetError
from pefthub.data import SentenceClassificationDataModule
from pefthub.methods.lora import LoRAModule


def _lora(rank: int, alpha: float, seed: int = 0, **kwargs) -> LoRAModule:
    seed_everything(seed)
    return LoRAModule(backbone="tiny-bert", rank=rank, alpha=alpha, **kwargs)


def test_adapter_file_bytes_is_what_save_adapter_writes(tmp_path):
    module = _lora(8, 16)
    module.save_adapter(tmp_path / "a")
    assert adapter_file_bytes(tmp_path / "a") == module.adapter_file_bytes()


def test_rank_cap_is_the_largest_rank_that_fits_and_equals_a_direct_run(tmp_path):
    sizes = {rank: _lora(rank, 2.0 * rank).adapter_file_bytes() for rank in (4, 5, 6, 8)}
    assert sizes[4] < sizes[5] < sizes[6] < sizes[8]
    budget = (sizes[5] + sizes[6]) // 2  # rank 5 fits, rank 6 does not

    capped = _lora(8, 16, max_adapter_bytes=budget, fit_rank_to_budget=True)
    assert capped.rank_cap == 5
    assert {layer.rank for _, layer in capped._lora_layers()} == {5}
    assert abs(capped.adapter_file_bytes() - sizes[5]) < 16 and capped.adapter_file_bytes() <= budget  # JSON differs by a few bytes
    # alpha follows the rank, so alpha / r is the configured 16 / 8
    assert {layer.scaling for _, layer in capped._lora_layers()} == {2.0}
    direct = _lora(5, 10)
    for (name, layer), (_, reference) in zip(capped._lora_layers(), direct._lora_layers(), strict=True):
        torch.testing.assert_close(layer.lora_A, reference.lora_A, atol=0, rtol=0, msg=name)
        torch.testing.assert_close(layer.lora_B, reference.lora_B, atol=0, rtol=0, msg=name)
    capped.save_adapter(tmp_path / "capped")
    assert adapter_file_bytes(tmp_path / "capped") <= budget
    assert LoRAModule.from_adapter(str(tmp_path / "capped")).rank_for(capped.sites[0].name) == 5


def test_rank_within_budget_is_left_alone():
    module = _lora(8, 16, max_adapter_bytes=10**9, fit_rank_to_budget=True)
    assert module.rank_cap is None
    assert {layer.rank for _, layer in module._lora_layers()} == {8}


def test_budget_too_small_for_rank_one_is_a_clear_error():
    with pytest.raises(BudgetError, match=r"no LoRA rank fits model.max_adapter_bytes=100: at rank 1 the adapter files take [\d,]+ bytes"):
        _lora(8, 16, max_adapter_bytes=100, fit_rank_to_budget=True)


def test_cap_without_a_budget_is_refused():
    with pytest.raises(ValueError, match="fit_rank_to_budget needs model.max_adapter_bytes"):
        _lora(8, 16, fit_rank_to_budget=True)


def test_over_budget_without_the_cap_stops_at_fit_start_naming_both_figures(tmp_path):
    module = _lora(8, 16, max_adapter_bytes=1000)
    assert any(isinstance(c, BudgetCheck) for c in module.configure_callbacks())
    data = SentenceClassificationDataModule(backbone="tiny-bert", task="sst2", max_length=16, batch_size=4, train_limit=8, eval_limit=4)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path)
    size = module.adapter_file_bytes()
    with pytest.raises(BudgetError, match=rf"adapter file is {size:,} bytes, over the budget max_adapter_bytes=1,000"):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_cap_is_planned_from_shapes_and_the_adapter_drawn_once():
    """The capped size is computed before injection from shapes alone: it equals the built
    adapter's file size, modules already below the cap keep their rank and alpha, and the
    global RNG ends where a run configured with the capped ranks directly ends (one draw)."""
    pattern = {"attention.self.query": 2}
    sizes = {rank: _lora(rank, 2.0 * rank, rank_pattern=pattern, alpha_pattern={"attention.self.query": 4.0}).adapter_file_bytes() for rank in (3, 4)}
    budget = (sizes[3] + sizes[4]) // 2
    capped = _lora(8, 16, rank_pattern=pattern, alpha_pattern={"attention.self.query": 4.0}, max_adapter_bytes=budget, fit_rank_to_budget=True)
    after_capped = torch.get_rng_state()
    assert capped.rank_cap == 3
    assert capped._planned_file_bytes(capped.sites, capped.rank_cap) == capped.adapter_file_bytes() <= budget
    ranks = {name: layer.rank for name, layer in capped._lora_layers()}
    assert {r for name, r in ranks.items() if name.endswith("query")} == {2}
    assert {r for name, r in ranks.items() if not name.endswith("query")} == {3}
    assert {layer.scaling for _, layer in capped._lora_layers()} == {2.0}
    _lora(3, 6, rank_pattern=pattern, alpha_pattern={"attention.self.query": 4.0})
    assert torch.equal(after_capped, torch.get_rng_state())

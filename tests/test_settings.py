"""Method settings dataclasses: validated once, written as the method part of
adapter_config.json, read back from it."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from pefthub.adapters.io import load_adapter
from pefthub.methods.adalora import AdaLoRAModule
from pefthub.methods.glora import GLoRAModule
from pefthub.methods.importance_lora import ImportanceLoRAModule
from pefthub.methods.lora import LoRAModule
from pefthub.methods.settings import (
    AdaLoRASchedule,
    AdaLoRASettings,
    GLoRASettings,
    ImportanceLoRASettings,
    LoRASettings,
    VeRASettings,
    from_config,
)
from pefthub.methods.vera import VeRAModule


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (LoRASettings, {"rank": 0}, "model.rank must be >= 1, got 0"),
        (AdaLoRASettings, {"init_rank": 0}, "model.init_rank must be >= 1, got 0"),
        (AdaLoRASettings, {"init_rank": 4, "target_rank": 6}, "model.target_rank must be in [0, init_rank=4], got 6"),
        (AdaLoRASettings, {"orth_reg_weight": -1.0}, "model.orth_reg_weight must be >= 0, got -1.0"),
        (AdaLoRASettings, {"orth_reg_form": "frobenius"}, "model.orth_reg_form must be one of"),
        (VeRASettings, {"rank": 0}, "model.rank must be >= 1, got 0"),
        (VeRASettings, {"dropout": 1.0}, "model.dropout must be in [0, 1), got 1.0"),
        (ImportanceLoRASettings, {"importance_normalization": "l2"}, "model.importance_normalization must be one of ('sum', 'max'), got 'l2'"),
        (ImportanceLoRASettings, {"penalty_weight": -0.5}, "model.penalty_weight (λ) must be >= 0, got -0.5"),
        (ImportanceLoRASettings, {"penalty_exponent": 0.0}, "model.penalty_exponent (β) must be > 0, got 0.0"),
        (ImportanceLoRASettings, {"importance_source": "hessian"}, "importance source must be one of"),
        (GLoRASettings, {"importance_source": "hessian"}, "importance source must be one of"),
    ],
)
def test_settings_validate_once_naming_the_key(cls, kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("module", "kwargs", "message"),
    [
        (ImportanceLoRAModule, {"penalty_exponent": -1.0}, "model.penalty_exponent (β) must be > 0, got -1.0"),
        (ImportanceLoRAModule, {"importance_source": "hessian"}, "importance source must be one of"),
        (GLoRAModule, {"importance_source": "hessian"}, "importance source must be one of"),
    ],
)
def test_constructors_fail_with_the_settings_message_before_loading_a_backbone(module, kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        module(backbone="no-such-backbone", **kwargs)


@pytest.mark.parametrize(
    "settings",
    [
        LoRASettings(rank=3, alpha=5.0, dropout=0.1, target_modules=["query"]),
        AdaLoRASettings(init_rank=6, target_rank=3, schedule=AdaLoRASchedule(tinit=2, tfinal=1)),
        VeRASettings(rank=16, d_initial=0.2, projection_prng_key=4, save_projection=True),
        ImportanceLoRASettings(importance_source="grad_norm", importance_normalization="max", penalty_weight=0.2, penalty_exponent=2.0),
        GLoRASettings(total_rank=20, importance_source="lora_grad"),
    ],
)
def test_settings_round_trip_through_their_json(settings):
    config = json.loads(json.dumps({"method": "x", "sites": [], **dataclasses.asdict(settings)}))
    assert from_config(type(settings), config) == settings


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoRASettings().rank = 2  # type: ignore[misc]


def test_from_config_reads_keys_then_fallbacks_then_defaults():
    settings = from_config(LoRASettings, {"alpha": 3.0, "target_modules": ["query"], "sites": []}, rank=5, dropout=0.2)
    assert settings == LoRASettings(rank=5, alpha=3.0, dropout=0.2, target_modules=["query"])
    adalora = from_config(AdaLoRASettings, {"schedule": {"tinit": 3, "tfinal": 2, "delta_t": 1, "beta1": 0.8, "beta2": 0.9, "total_steps": 40}})
    assert adalora.schedule == AdaLoRASchedule(tinit=3, tfinal=2, delta_t=1, beta1=0.8, beta2=0.9)


def _fw_lora():
    return ImportanceLoRAModule(backbone="tiny-bert", rank=2, importance_source="grad_norm", importance_normalization="max",
                                penalty_weight=0.3, penalty_exponent=2.0)


def _glora():
    return GLoRAModule(backbone="tiny-bert", rank=2, total_rank=30, importance_source="fisher")


@pytest.mark.parametrize(
    ("make", "cls", "attribute"),
    [
        (lambda: LoRAModule(backbone="tiny-bert", rank=3, alpha=5.0, dropout=0.1, target_modules=["query", "value"]), LoRASettings, "settings"),
        (lambda: AdaLoRAModule(backbone="tiny-bert", init_rank=4, target_rank=2, tinit=3, tfinal=2, orth_reg_weight=0.5), AdaLoRASettings, "settings"),
        (lambda: VeRAModule(backbone="tiny-bert", rank=16, d_initial=0.2, projection_prng_key=3, save_projection=True), VeRASettings, "settings"),
        (_fw_lora, LoRASettings, "settings"),
        (_fw_lora, ImportanceLoRASettings, "importance_settings"),
        (_glora, LoRASettings, "settings"),
        (_glora, GLoRASettings, "glora_settings"),
    ],
)
def test_adapter_config_carries_the_settings_and_reads_back(make, cls, attribute, tmp_path):
    module = make()
    module.save_adapter(tmp_path / "adapter")
    config, _ = load_adapter(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["method"] == module.method_name
    written = {f.name: config[f.name] for f in dataclasses.fields(cls)}
    expected = dataclasses.asdict(getattr(module, attribute))
    if cls is AdaLoRASettings:
        assert written["schedule"].pop("total_steps") is None  # set once the trainer knows T
    assert written == expected
    assert from_config(cls, config) == getattr(module, attribute)


def test_glora_writes_the_resolved_total_rank():
    module = GLoRAModule(backbone="tiny-bert", rank=2)
    assert module.glora_settings.total_rank == module.total_rank == 2 * len(module.sites)
    assert module.adapter_config()["total_rank"] == module.total_rank


@pytest.mark.parametrize(
    ("make", "attribute", "method_keys"),
    [
        (_fw_lora, "importance_settings", {"importance"}),
        (_glora, "glora_settings", {"alpha_pattern", "reallocated", "importance"}),
    ],
)
def test_methods_on_lora_write_lora_file_plus_their_settings_and_results(make, attribute, method_keys, tmp_path):
    module = make()
    lora = LoRAModule(backbone="tiny-bert", rank=2)
    own = set(dataclasses.asdict(getattr(module, attribute)))
    assert set(module.adapter_config()) == set(lora.adapter_config()) | own | method_keys
    assert module.adapter_config()["importance"] is None  # not measured yet


@pytest.mark.parametrize(("make", "attribute"), [(_fw_lora, "importance_settings"), (_glora, "glora_settings")])
def test_from_adapter_rebuilds_the_methods_settings(make, attribute, tmp_path):
    module = make()
    module.save_adapter(tmp_path / "adapter")
    rebuilt = type(module).from_adapter(str(tmp_path / "adapter"))
    assert getattr(rebuilt, attribute) == getattr(module, attribute) != type(getattr(module, attribute))()
    assert rebuilt.importance_estimator.source == module.importance_estimator.source

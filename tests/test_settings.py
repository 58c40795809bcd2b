"""Method settings dataclasses: validated once, written as the method part of
adapter_config.json, read back from it."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from pefthub.adapters.io import load_adapter
from pefthub.methods.adalora import AdaLoRAModule
from pefthub.methods.lora import LoRAModule
from pefthub.methods.settings import (
    AdaLoRASchedule,
    AdaLoRASettings,
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
    ],
)
def test_settings_validate_once_naming_the_key(cls, kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        cls(**kwargs)


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        LoRASettings().rank = 2  # type: ignore[misc]


def test_from_config_reads_keys_then_fallbacks_then_defaults():
    settings = from_config(LoRASettings, {"alpha": 3.0, "target_modules": ["query"], "sites": []}, rank=5, dropout=0.2)
    assert settings == LoRASettings(rank=5, alpha=3.0, dropout=0.2, target_modules=["query"])
    adalora = from_config(AdaLoRASettings, {"schedule": {"tinit": 3, "tfinal": 2, "delta_t": 1, "beta1": 0.8, "beta2": 0.9, "total_steps": 40}})
    assert adalora.schedule == AdaLoRASchedule(tinit=3, tfinal=2, delta_t=1, beta1=0.8, beta2=0.9)


@pytest.mark.parametrize(
    ("make", "cls"),
    [
        (lambda: LoRAModule(backbone="tiny-bert", rank=3, alpha=5.0, dropout=0.1, target_modules=["query", "value"]), LoRASettings),
        (lambda: AdaLoRAModule(backbone="tiny-bert", init_rank=4, target_rank=2, tinit=3, tfinal=2, orth_reg_weight=0.5), AdaLoRASettings),
        (lambda: VeRAModule(backbone="tiny-bert", rank=16, d_initial=0.2, projection_prng_key=3, save_projection=True), VeRASettings),
    ],
)
def test_adapter_config_carries_the_settings_and_reads_back(make, cls, tmp_path):
    module = make()
    module.save_adapter(tmp_path / "adapter")
    config, _ = load_adapter(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["method"] == module.method_name
    written = {f.name: config[f.name] for f in dataclasses.fields(cls)}
    expected = dataclasses.asdict(module.settings)
    if cls is AdaLoRASettings:
        assert written["schedule"].pop("total_steps") is None  # set once the trainer knows T
    assert written == expected
    assert from_config(cls, config) == module.settings

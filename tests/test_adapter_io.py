"""Adapter files: safetensors + JSON round trip; pickles are refused without being executed."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from pefthub.adapters import adapter_modules
from pefthub.adapters.io import CONFIG_NAME, WEIGHTS_NAME, AdapterFileError, load_adapter
from pefthub.methods import LoRAModule


def _trained_module(seed: int = 3) -> LoRAModule:
    module = LoRAModule(backbone="tiny-bert", rank=4, alpha=8, label_names=["neg", "pos"]).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_modules(module):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator))
    return module


def test_save_load_round_trip_gives_identical_logits(tmp_path, batch):
    source = _trained_module()
    source.save_adapter(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())
    assert config["method"] == "lora" and config["rank"] == 4 and config["label_names"] == ["neg", "pos"]
    assert len(config["rank_pattern"]) == 12

    target = LoRAModule(backbone="tiny-bert", rank=4, alpha=8).eval()
    with torch.no_grad():
        before = target(batch["input_ids"], batch["attention_mask"])
        target.load_adapter(tmp_path / "adapter")
        after = target(batch["input_ids"], batch["attention_mask"])
        expected = source(batch["input_ids"], batch["attention_mask"])
    assert not torch.equal(before, expected)
    assert torch.equal(after, expected)


def test_adapter_of_another_rank_is_a_clear_error(tmp_path):
    _trained_module().save_adapter(tmp_path)
    with pytest.raises(ValueError, match="shape"):
        LoRAModule(backbone="tiny-bert", rank=2, alpha=8).load_adapter(tmp_path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("name", ["adapter_model.bin", "adapter.pt"])
def test_pickle_files_are_refused_by_suffix(tmp_path, name):
    marker = tmp_path / "pwned"
    (tmp_path / name).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(AdapterFileError, match="refusing to load a pickle"):
        load_adapter(tmp_path / name)
    assert not marker.exists()


def test_pickle_disguised_as_safetensors_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / WEIGHTS_NAME).write_bytes(pickle.dumps(_Payload(marker)))
    (tmp_path / CONFIG_NAME).write_text(json.dumps({"method": "lora"}))
    with pytest.raises(AdapterFileError, match=WEIGHTS_NAME):
        load_adapter(tmp_path)
    assert not marker.exists()
    torch.save({"x": _Payload(marker)}, tmp_path / WEIGHTS_NAME)  # torch zip archive
    with pytest.raises(AdapterFileError, match="pickle"):
        load_adapter(tmp_path)
    assert not marker.exists()


def test_truncated_file_and_missing_config_name_the_file(tmp_path):
    _trained_module().save_adapter(tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterFileError, match="not a valid safetensors"):
        load_adapter(tmp_path)
    (tmp_path / CONFIG_NAME).unlink()
    with pytest.raises(AdapterFileError, match=CONFIG_NAME):
        load_adapter(tmp_path)

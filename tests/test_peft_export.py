"""Export to / import from the HF PEFT LoRA format: logits must survive the round trip."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import PeftModel

from pefthub.adapters import adapter_modules
from pefthub.adapters.peft_format import export_to_peft, import_from_peft
from pefthub.backbones import build_tiny_model
from pefthub.methods import LoRAModule


def _trained(**kwargs) -> LoRAModule:
    module = LoRAModule(backbone="tiny-bert", label_names=["neg", "pos"], **kwargs).eval()
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, layer in adapter_modules(module):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator))
    return module


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rank": 4, "alpha": 8},
        # per-matrix ranks and alphas (what GLoRA / AdaLoRA exports look like), one rank-0 module
        {"rank": 4, "alpha": 8, "rank_pattern": {"attention.self.query": 2, "layer.1.output.dense": 0,
                                                  "intermediate.dense": 6}, "alpha_pattern": {"intermediate.dense": 3.0}},
    ],
    ids=["uniform", "rank_pattern"],
)
def test_peft_loads_the_export_with_equal_logits(tmp_path, batch, kwargs):
    ours = _trained(**kwargs)
    ours.save_adapter(tmp_path / "ours")
    export_to_peft(tmp_path / "ours", tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"
    reference = PeftModel.from_pretrained(build_tiny_model("tiny-bert"), str(tmp_path / "peft")).eval()
    with torch.no_grad():
        expected = ours(batch["input_ids"], batch["attention_mask"])
        hidden = reference(**batch).last_hidden_state
        actual = ours.head(ours.pool(hidden, batch["attention_mask"]))
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)

    # and back: import the PEFT adapter, rebuild a pefthub module from it, same logits
    import_from_peft(tmp_path / "peft", tmp_path / "back", backbone="tiny-bert")
    back = LoRAModule.from_adapter(str(tmp_path / "back")).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(batch["input_ids"], batch["attention_mask"]), expected, atol=1e-6, rtol=0)


def test_import_refuses_a_pickled_peft_adapter(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match="pickle"):
        import_from_peft(tmp_path, tmp_path / "out", backbone="tiny-bert")


def test_export_command_line(tmp_path):
    _trained(rank=2, alpha=4).save_adapter(tmp_path / "ours")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "pefthub.cli", "export", "--format", "peft", str(tmp_path / "ours"), str(tmp_path / "peft")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 2

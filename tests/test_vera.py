"""VeRA (pefthub.adapters.vera, pefthub.methods.VeRAModule) against HF PEFT's VeRA and the
adapter/CLI contracts every method keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import VeraConfig, get_peft_model
from safetensors.torch import load_file

from pefthub.adapters import adapter_modules
from pefthub.adapters.io import WEIGHTS_NAME, serialized_size
from pefthub.adapters.vera import VeRALinear
from pefthub.backbones import build_tiny_model
from pefthub.budget import adapter_file_bytes
from pefthub.methods import VeRAModule

REPO = Path(__file__).resolve().parents[1]


def _randomize(module: VeRAModule, seed: int = 1) -> None:
    """Non-trivial d and b (a fresh adapter has b = 0, i.e. no effect at all)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapter_modules(module):
            layer.vera_lambda_d.copy_(torch.randn(layer.vera_lambda_d.shape, generator=generator))
            layer.vera_lambda_b.copy_(torch.randn(layer.vera_lambda_b.shape, generator=generator))


def _logits(module: VeRAModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return module(batch["input_ids"], batch["attention_mask"])


def _bare_logits(module: VeRAModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        hidden = build_tiny_model("tiny-bert")(**batch).last_hidden_state
        return module.head(module.pool(hidden, batch["attention_mask"]))


@pytest.mark.parametrize("rank", [16, 96])  # 96 > every width of tiny-bert: VeRA allows r > d
def test_same_d_b_give_the_same_logits_as_hf_peft(batch, rank):
    ours = VeRAModule(backbone="tiny-bert", rank=rank, projection_prng_key=3).eval()
    _randomize(ours)
    reference = get_peft_model(
        build_tiny_model("tiny-bert"),
        VeraConfig(r=rank, target_modules=list(ours.target_modules), projection_prng_key=3, vera_dropout=0.0),
    ).eval()
    peft_layers = {
        name.removeprefix("base_model.model."): module
        for name, module in reference.named_modules()
        if "default" in getattr(module, "vera_lambda_d", {})
    }
    ours_layers = {name.removeprefix("backbone."): layer for name, layer in adapter_modules(ours)}
    assert set(peft_layers) == set(ours_layers)
    # the shared projections are regenerated independently from the same key: bit-identical to PEFT's
    any_peft = next(iter(peft_layers.values()))
    assert torch.equal(any_peft.vera_A["default"], ours.vera_projections.vera_A)
    assert torch.equal(any_peft.vera_B["default"], ours.vera_projections.vera_B)
    with torch.no_grad():
        for name, layer in ours_layers.items():
            peft_layers[name].vera_lambda_d["default"].copy_(layer.vera_lambda_d)
            peft_layers[name].vera_lambda_b["default"].copy_(layer.vera_lambda_b)
        hidden = reference(**batch).last_hidden_state
        reference_logits = ours.head(ours.pool(hidden, batch["attention_mask"]))
    ours_logits = _logits(ours, batch)
    assert not torch.allclose(ours_logits, _bare_logits(ours, batch), atol=1e-3), "the adapter must change the logits"
    torch.testing.assert_close(ours_logits, reference_logits, atol=1e-5, rtol=0)


def test_fresh_adapter_matches_peft_init_and_leaves_the_host_unchanged(batch):
    module = VeRAModule(backbone="tiny-bert", rank=8, d_initial=0.25).eval()
    for _, layer in adapter_modules(module):
        assert torch.all(layer.vera_lambda_d == 0.25) and torch.all(layer.vera_lambda_b == 0)
    torch.testing.assert_close(_logits(module, batch), _bare_logits(module, batch), atol=1e-6, rtol=0)


def test_only_d_b_and_head_train_and_the_count_is_analytic(batch):
    rank = 12
    module = VeRAModule(backbone="tiny-bert", rank=rank)
    config = module.backbone.config
    hidden, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    # per block: query, key, value, attention.output.dense (d_out = hidden), intermediate.dense
    # (d_out = ffn), output.dense (d_out = hidden); each costs r + d_out
    per_block = 4 * (rank + hidden) + (rank + ffn) + (rank + hidden)
    head = hidden * 2 + 2
    trainable = {name: p for name, p in module.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == layers * per_block + head
    assert all(name.startswith("head.") or name.endswith(("vera_lambda_d", "vera_lambda_b")) for name in trainable)
    assert len(module.sites) == 6 * layers
    # the projections are frozen buffers sized to the largest layer, shared by one object, out of state dicts
    assert module.vera_projections.vera_A.shape == (rank, ffn) and module.vera_projections.vera_B.shape == (ffn, rank)
    assert all(layer.projections is module.vera_projections for _, layer in adapter_modules(module))
    assert not any("vera_A" in key or "vera_B" in key for key in module.state_dict())

    _randomize(module)
    A_before = module.vera_projections.vera_A.clone()
    module.train()
    loss = module(batch["input_ids"], batch["attention_mask"]).sum()
    loss.backward()
    for name, p in trainable.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    assert all(p.grad is None for p in module.parameters() if not p.requires_grad)
    assert torch.equal(module.vera_projections.vera_A, A_before)


def test_merge_then_unmerge_restores_outputs_and_weights(batch):
    module = VeRAModule(backbone="tiny-bert", rank=16).eval()
    _randomize(module)
    layers = [layer for _, layer in adapter_modules(module)]
    weights = [layer.base.weight.detach().clone() for layer in layers]
    unmerged = _logits(module, batch)
    for layer in layers:
        layer.merge()
    merged = _logits(module, batch)
    assert any(not torch.equal(layer.base.weight, w) for layer, w in zip(layers, weights, strict=True))
    for layer in layers:
        layer.unmerge()
    restored = _logits(module, batch)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    torch.testing.assert_close(restored, unmerged, atol=1e-6, rtol=0)
    for layer, w in zip(layers, weights, strict=True):
        torch.testing.assert_close(layer.base.weight, w, atol=1e-6, rtol=0)


def test_delta_weight_is_diag_b_B_diag_d_A():
    layer = VeRAModule(backbone="tiny-bert", rank=5).backbone.encoder.layer[0].intermediate.dense
    assert isinstance(layer, VeRALinear)
    with torch.no_grad():
        layer.vera_lambda_d.copy_(torch.arange(1.0, 6.0))
        layer.vera_lambda_b.copy_(torch.linspace(-1, 1, layer.out_features))
    A = layer.projections.vera_A[:, : layer.in_features]
    B = layer.projections.vera_B[: layer.out_features]
    expected = torch.diag(layer.vera_lambda_b) @ B @ torch.diag(layer.vera_lambda_d) @ A
    torch.testing.assert_close(layer.delta_weight(), expected.detach(), atol=1e-5, rtol=1e-5)
    x = torch.randn(3, layer.in_features)
    torch.testing.assert_close(layer(x), layer.base(x) + x @ expected.detach().T, atol=1e-5, rtol=1e-5)


def test_save_load_round_trip_without_pickle_and_without_projections(batch, tmp_path):
    module = VeRAModule(backbone="tiny-bert", rank=16, projection_prng_key=7, label_names=["neg", "pos"]).eval()
    _randomize(module)
    directory = module.save_adapter(tmp_path / "adapter")
    raw = (directory / WEIGHTS_NAME).read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_length])  # pure safetensors: JSON header, then raw tensor bytes
    stored = {k for k in header if k != "__metadata__"}
    assert max(header[k]["data_offsets"][1] for k in stored) == len(raw) - 8 - header_length
    assert stored == set(module.adapter_tensors())
    assert not any("vera_A" in k or "vera_B" in k for k in stored), "projections are regenerated from the seed"
    config = json.loads((directory / "adapter_config.json").read_text())
    assert config["method"] == "vera" and config["projection_prng_key"] == 7 and config["rank"] == 16
    assert config["projection_sha256"] == module.vera_projections.fingerprint()
    assert module.adapter_file_bytes() == serialized_size(load_file(directory / WEIGHTS_NAME)) + (directory / "adapter_config.json").stat().st_size

    loaded = VeRAModule.from_adapter(str(directory)).eval()
    assert loaded.label_names == ["neg", "pos"]
    torch.testing.assert_close(_logits(loaded, batch), _logits(module, batch), atol=0, rtol=0)

    other_seed = VeRAModule(backbone="tiny-bert", rank=16, projection_prng_key=8)
    with pytest.raises(ValueError, match="projection_prng_key"):
        other_seed.load_adapter(directory)


def test_save_projection_stores_A_B_and_loading_uses_them(batch, tmp_path):
    module = VeRAModule(backbone="tiny-bert", rank=16, projection_prng_key=7, save_projection=True).eval()
    _randomize(module)
    directory = module.save_adapter(tmp_path / "adapter")
    stored = load_file(directory / WEIGHTS_NAME)
    assert torch.equal(stored["vera_projections.vera_A"], module.vera_projections.vera_A)
    # a module regenerated from another key takes the file's projections and then agrees exactly
    other = VeRAModule(backbone="tiny-bert", rank=16, projection_prng_key=8).eval()
    other.load_adapter(directory)
    torch.testing.assert_close(_logits(other, batch), _logits(module, batch), atol=0, rtol=0)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pefthub.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_fit_writes_the_adapter_and_logs_its_budget(tmp_path):
    config = REPO / "configs" / "tiny" / "vera_sst2.yaml"
    fit = _run(["fit", "-c", str(config), "--trainer.max_steps", "3"], tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny-vera" / "version_0"
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["method"] == "vera" and adapter_config["rank"] == 16
    assert adapter_config["projection_prng_key"] == 0 and adapter_config["save_projection"] is False
    tensors = load_file(run_dir / "adapter" / WEIGHTS_NAME)
    assert any(k.endswith("vera_lambda_b") for k in tensors) and not any("vera_A" in k for k in tensors)

    from pefthub.events import read_scalars

    logged = {tag: values[0][1] for tag, values in read_scalars(run_dir, ["budget/trainable_params", "budget/adapter_bytes"]).items()}
    module = VeRAModule(backbone="tiny-bert", rank=16)
    assert logged["budget/trainable_params"] == sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert logged["budget/adapter_bytes"] == adapter_file_bytes(run_dir / "adapter")  # tensors + JSON, as written

    # the checkpoint holds only d, b and the head; the projections come back from the seed
    test = _run(["test", "-c", str(config), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")], tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    assert "test/accuracy" in test.stdout


@pytest.mark.parametrize("save_projection", [False, True])
def test_export_to_peft_loads_in_peft_with_the_same_logits(batch, tmp_path, save_projection):
    from peft import PeftModel

    from pefthub.adapters.peft_format import export_to_peft

    module = VeRAModule(
        backbone="tiny-bert", rank=16, projection_prng_key=5, save_projection=save_projection,
        target_modules=["query", "value", "intermediate.dense"],
    ).eval()  # fmt: skip
    _randomize(module)
    if save_projection:  # stored projections that no seed regenerates: PEFT must take them from the file
        with torch.no_grad():
            module.vera_projections.vera_A.mul_(1.5)
    out = export_to_peft(module.save_adapter(tmp_path / "adapter"), tmp_path / "peft")
    peft_config = json.loads((out / "adapter_config.json").read_text())
    assert peft_config["peft_type"] == "VERA" and peft_config["save_projection"] is save_projection
    reference = PeftModel.from_pretrained(build_tiny_model("tiny-bert"), str(out)).eval()
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
        reference_logits = module.head(module.pool(hidden, batch["attention_mask"]))
    assert not torch.allclose(reference_logits, _bare_logits(module, batch), atol=1e-3)
    torch.testing.assert_close(_logits(module, batch), reference_logits, atol=1e-5, rtol=0)

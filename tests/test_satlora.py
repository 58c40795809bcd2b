"""SAT-LoRA: UniHyperLoRA with projectors learned per host width (no generator h_ψ).

Learned projector shapes and training, no ψ, host-dependent size, the update against the
materialised ΔW, quantised storage, same-host reload, the per-host error, the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from test_unihyperlora import _logits, assert_update_equals_materialised_delta_weight
from test_unihyperlora import _module as _hyper_module
from test_unihyperlora_cli import REPO, _run

from pefthub.adapters.hyper import generated_projector_energy
from pefthub.adapters.io import CONFIG_NAME, WEIGHTS_NAME
from pefthub.budget import adapter_file_bytes
from pefthub.methods.satlora import SATLoRAModule
from pefthub.methods.unihyperlora import UniHyperLoRAModule


def _module(backbone: str = "tiny-bert", seed: int = 0, **kwargs) -> SATLoRAModule:
    """A "trained" SAT-LoRA adapter, built the way the UniHyperLoRA tests build theirs."""
    return _hyper_module(backbone, seed, module_class=SATLoRAModule, **kwargs)


def _widths(module) -> set[int]:
    config = module.backbone.config
    return {config.hidden_size, config.intermediate_size}


# ----------------------------------------------------------------------------- projectors


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-bert-h48-l3"])
def test_learned_projectors_have_one_pair_per_host_width(backbone):
    module = _module(backbone, d0=40)
    learned = module.hyper.learned
    assert set(learned.widths) == _widths(module) == {s.d_in for s in module.sites} | {s.d_out for s in module.sites}
    for d in learned.widths:
        p_out, p_in = module.hyper.projectors(d)
        assert p_out.shape == (d, 40) and p_in.shape == (40, d)
        assert p_out.requires_grad and p_in.requires_grad
        assert p_out is learned.p_out[str(d)] and p_in is learned.p_in[str(d)]


@pytest.mark.parametrize("d,d0", [(32, 256), (1536, 232), (384, 384)])
def test_learned_projectors_start_at_the_generated_scale(d, d0):
    from pefthub.adapters.hyper import LearnedProjectors

    projectors = LearnedProjectors(d0)
    projectors.add([d])
    p_out, p_in = projectors(d)
    energy = generated_projector_energy()
    # a scaled partial isometry: ‖P_in‖²_F = e·d0 and ‖P_out‖²_F = e·d exactly, singular values equal
    assert p_in.detach().pow(2).sum().item() == pytest.approx(energy * d0, rel=1e-4)
    assert p_out.detach().pow(2).sum().item() == pytest.approx(energy * d, rel=1e-4)
    singular = torch.linalg.svdvals(p_in.detach())
    assert float(singular.max() / singular.min()) == pytest.approx(1.0, abs=1e-3)


def test_generated_projector_energy_matches_fresh_generators():
    from pefthub.adapters.hyper import ProjectorGenerator

    measured = []
    for seed in range(8):
        torch.manual_seed(seed)
        with torch.no_grad():
            p_out, p_in = ProjectorGenerator(d0=128)(512)
        measured += [p_in.pow(2).sum().item() / 128, p_out.pow(2).sum().item() / 512]
    assert sum(measured) / len(measured) == pytest.approx(generated_projector_energy(), rel=0.1)


def test_there_is_no_generator_and_every_learned_projector_trains(batch):
    module = _module()
    assert module.hyper.generator is None
    names = [n for n, _ in module.named_parameters()]
    assert not [n for n in names if "generator" in n]
    assert module.hyper.config()["projector"] == "learned"
    module.train()
    # the optimiser is built from trainable_parameters(): it holds every learned projector
    optimised = {id(p) for p in module.trainable_parameters()}
    learned = list(module.hyper.learned.parameters())
    assert len(learned) == 2 * len(_widths(module)) and all(id(p) in optimised for p in learned)
    loss = torch.nn.functional.cross_entropy(module(batch["input_ids"], batch["attention_mask"]), torch.tensor([1, 0, 1, 1]))
    loss.backward()
    for name, p in module.hyper.learned.named_parameters():  # hidden width: router, head, q/k/v/o; FFN width: ffn
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_parameter_count_depends_on_the_host_width():
    """Unlike UniHyperLoRA (same count on every host), SAT-LoRA grows by 2·d·d0 per host width."""
    d0 = 24
    counts, base = {}, {}
    for name in ("tiny-bert", "tiny-bert-h48-l3"):
        module = _module(name, d0=d0)
        counts[name] = sum(p.numel() for p in module.hyper.parameters())
        base[name] = counts[name] - sum(2 * d * d0 for d in _widths(module))
    assert counts["tiny-bert"] != counts["tiny-bert-h48-l3"]
    assert base["tiny-bert"] == base["tiny-bert-h48-l3"]  # everything but the projectors is host-free
    # widths 32, 64 vs 48, 96
    assert counts["tiny-bert-h48-l3"] - counts["tiny-bert"] == 2 * d0 * ((48 + 96) - (32 + 64))
    uni = {name: sum(p.numel() for p in UniHyperLoRAModule(backbone=name, d0=d0, max_flop_overhead=None).hyper.parameters())
           for name in ("tiny-bert", "tiny-bert-h48-l3")}
    assert len(set(uni.values())) == 1


# ----------------------------------------------------------------------------- the update


def test_update_equals_materialised_delta_weight_per_token():
    assert_update_equals_materialised_delta_weight(_module())


def test_fresh_adapter_leaves_the_host_unchanged(batch):
    module = SATLoRAModule(backbone="tiny-bert", max_flop_overhead=None).eval()
    with torch.no_grad():
        adapted = module.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        with module.hyper.bypassed():
            plain = module.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert torch.equal(adapted, plain)


def test_fvcore_overhead_matches_the_analytic_count_as_for_unihyperlora():
    """Learned projectors are folded and cached exactly as generated ones: same per-token cost."""
    from pefthub.budget import flop_overhead

    module = _module("tiny-bert-h48-l3")
    measured = flop_overhead(module, seq_len=16)
    config = module.backbone.config
    analytic = module.hyper.analytic_macs(
        num_tokens=16, hidden=config.hidden_size, layers=[(s.d_in, s.d_out) for s in module.sites],
        num_blocks=config.num_hidden_layers,
    )
    assert measured["adapted_flops"] - measured["host_flops"] == pytest.approx(analytic, rel=0.05)


# ----------------------------------------------------------------------------- storage


def test_save_load_same_host_gives_identical_logits(tmp_path, batch):
    source = _module(d0=40)
    source.save_adapter(tmp_path / "a")
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert config["method"] == "satlora"
    assert config["hyper"]["projector"] == "learned" and config["hyper"]["widths"] == [32, 64]
    assert "num_frequencies" not in config["hyper"] and "generator_hidden" not in config["hyper"]

    stored = load_file(str(tmp_path / "a" / WEIGHTS_NAME))
    for d in (32, 64):  # int8 with one float16 scale per row
        assert stored[f"hyper.learned.p_out.{d}.q"].dtype == torch.int8
        assert stored[f"hyper.learned.p_out.{d}.q"].shape == (d, 40)
        assert stored[f"hyper.learned.p_out.{d}.scale"].shape == (d,)
        assert stored[f"hyper.learned.p_in.{d}.q"].shape == (40, d)
        assert stored[f"hyper.learned.p_in.{d}.scale"].dtype == torch.float16
    assert not [k for k in stored if "generator" in k]
    assert adapter_file_bytes(tmp_path / "a") == source.adapter_file_bytes()

    first, second = _module(d0=40, seed=1), _module(d0=40, seed=2)
    first.load_adapter(tmp_path / "a")
    second.load_adapter(tmp_path / "a")
    assert torch.equal(_logits(first, batch), _logits(second, batch))
    # int8 per row: every projector entry within half a step of the trained value. (The logits
    # themselves may move visibly: a small change of the router's input can flip a top-k choice.)
    for name, trained in source.hyper.learned.named_parameters():
        loaded = dict(first.hyper.learned.named_parameters())[name]
        rows = trained.detach().reshape(trained.shape[0], -1)
        step = rows.abs().amax(1, keepdim=True) / 127
        assert bool(((loaded.detach() - rows).abs() <= step / 2 * 1.002 + 1e-7).all()), name

    # unquantised storage reproduces the source exactly
    exact = _module(d0=40, quantize=False)
    exact.save_adapter(tmp_path / "f32")
    reloaded = _module(d0=40, seed=4, quantize=False)
    reloaded.load_adapter(tmp_path / "f32")
    assert torch.equal(_logits(reloaded, batch), _logits(exact, batch))

    # a host of another depth but the same widths has every projector it needs
    deeper = _module("tiny-bert-l3", d0=40, seed=3)
    deeper.load_adapter(tmp_path / "a")
    assert torch.isfinite(_logits(deeper, batch)).all()


def test_adapter_bytes_grow_with_the_projectors(tmp_path):
    """The learned projectors' bytes are on top of the shared parts (and no generator):
    2·Σ_d d·d0 int8 values plus 2 bytes per row scale."""
    sat, uni = _module(d0=40), UniHyperLoRAModule(backbone="tiny-bert", d0=40, max_flop_overhead=None)
    widths = (32, 64)
    projector_bytes = sum(2 * d * 40 + 2 * (d + 40) for d in widths)
    generator = sum(p.numel() for p in uni.hyper.generator.parameters())
    assert sat.adapter_file_bytes() - projector_bytes < uni.adapter_file_bytes() - generator
    assert sat.adapter_file_bytes() > projector_bytes


def test_loading_into_a_host_of_another_width_says_retrain(tmp_path):
    _module(d0=40).save_adapter(tmp_path)
    wide = _module("tiny-bert-h48-l3", d0=40)
    with pytest.raises(ValueError, match=r"widths \[32, 64\].*needs width\(s\) \[48, 96\].*retrained on each host"):
        wide.load_adapter(tmp_path)
    with pytest.raises(ValueError, match=r"tiny-bert-h48-l3.*retrained"):
        SATLoRAModule(backbone="tiny-bert-h48-l3", init_adapter=str(tmp_path), max_flop_overhead=None)
    # and a width no projector exists for is named at the point of use too
    with pytest.raises(ValueError, match=r"no learned projector for width 100 .*retrained for each host"):
        _module().hyper.projectors(100)


def test_a_unihyperlora_file_is_not_a_satlora_file(tmp_path):
    UniHyperLoRAModule(backbone="tiny-bert", d0=40, max_flop_overhead=None).save_adapter(tmp_path)
    with pytest.raises(ValueError, match="'unihyperlora', this module is 'satlora'"):
        _module(d0=40).load_adapter(tmp_path)


def test_init_adapter_takes_the_settings_from_the_file(tmp_path, batch):
    source = _module(num_atoms=12, d0=20, top_k=1)
    source.save_adapter(tmp_path)
    target = SATLoRAModule(backbone="tiny-bert", init_adapter=str(tmp_path), max_flop_overhead=None).eval()
    assert target.hyper.num_atoms == 12 and target.hyper.d0 == 20 and target.hyper.top_k == 1
    reference = _module(num_atoms=12, d0=20, top_k=1, seed=5)
    reference.load_adapter(tmp_path)
    assert torch.equal(_logits(target, batch), _logits(reference, batch))


def test_checkpoint_keeps_the_learned_projectors():
    module = _module()
    checkpoint: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert {f"hyper.learned.p_{side}.{d}" for side in ("in", "out") for d in (32, 64)} <= set(checkpoint["state_dict"])


# ----------------------------------------------------------------------------- CLI


def test_fit_tiny_config_through_the_cli(tmp_path):
    fit = _run(["fit", "-c", str(REPO / "configs" / "tiny" / "satlora_sst2.yaml")], tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    adapter = tmp_path / "runs" / "tiny" / "version_0" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["method"] == "satlora" and config["hyper"]["widths"] == [32, 64] and config["hyper"]["d0"] == 32
    tensors = load_file(str(adapter / "adapter.safetensors"))
    assert tensors["hyper.learned.p_in.32.q"].shape == (32, 32)
    assert not math.isnan(float(tensors["hyper.learned.p_in.32.scale"].float().sum()))


# ----------------------------------------------------------------------------- MiniLM budget


@pytest.mark.slow
def test_minilm_budget_defaults_over_config_within():
    """The figures README and configs/satlora/sst2.yaml quote: at UniHyperLoRA's d0 = 256 the
    SAT-LoRA file on MiniLM-L6 is over 1 MB (the fit-start check stops it), the config's d0 fits,
    and d0 + 8 would not (it is the largest multiple of 8 that fits)."""
    import yaml

    from pefthub.callbacks.budget import BudgetCheck, BudgetError

    config_d0 = yaml.safe_load((REPO / "configs" / "satlora" / "sst2.yaml").read_text())["model"]["init_args"]["d0"]
    check = BudgetCheck(max_adapter_bytes=1_000_000, max_flop_overhead=None)
    size = {}
    for d0 in (256, config_d0 + 8, config_d0):
        module = SATLoRAModule(backbone="minilm-l6", d0=d0, max_flop_overhead=None)
        figures = check.measure(module)  # what fit start measures
        size[d0] = figures["budget/adapter_file_bytes"]
        if d0 == config_d0:
            check.check(figures)
        else:
            with pytest.raises(BudgetError, match="over the budget max_adapter_bytes=1,000,000"):
                check.check(figures)
    assert size[256] > size[config_d0 + 8] > 1_000_000 >= size[config_d0]

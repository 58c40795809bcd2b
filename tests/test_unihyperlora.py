"""UniHyperLoRA: width-agnostic projectors, the update against a materialised ΔW, routing,
quantised storage, loading into hosts of other widths, budgets (bytes, fvcore FLOPs)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from pefthub.adapters import quant
from pefthub.adapters.hyper import HyperLinear, ProjectorGenerator
from pefthub.adapters.inject import adapter_modules
from pefthub.adapters.io import CONFIG_NAME, WEIGHTS_NAME
from pefthub.budget import adapter_file_bytes, flop_overhead
from pefthub.callbacks.budget import BudgetCheck, BudgetError
from pefthub.methods.unihyperlora import UniHyperLoRAModule


def _module(
    backbone: str = "tiny-bert", seed: int = 0, module_class: type[UniHyperLoRAModule] = UniHyperLoRAModule, **kwargs
) -> UniHyperLoRAModule:
    torch.manual_seed(seed)
    module = module_class(backbone=backbone, max_flop_overhead=None, **kwargs).eval()
    with torch.no_grad():  # a "trained" adapter: U non-zero, δθ non-zero
        module.hyper.atoms_U.normal_(std=0.2)
        module.hyper.mixer.delta.normal_(std=0.1)
    return module


def _logits(module, batch):
    with torch.no_grad():
        return module(batch["input_ids"], batch["attention_mask"])


# ----------------------------------------------------------------------------- projectors


@pytest.mark.parametrize("width", [100, 312, 1000, 1024])
def test_generator_gives_projectors_for_unseen_widths(width):
    generator = ProjectorGenerator(d0=256)
    before = sum(p.numel() for p in generator.parameters())
    p_out, p_in = generator(width)
    assert p_out.shape == (width, 256) and p_in.shape == (256, width)
    assert torch.isfinite(p_out).all() and torch.isfinite(p_in).all()
    assert sum(p.numel() for p in generator.parameters()) == before


def test_parameter_count_does_not_depend_on_the_host():
    counts = {name: sum(p.numel() for p in _module(name).hyper.parameters()) for name in ("tiny-bert", "tiny-bert-h48-l3")}
    assert len(set(counts.values())) == 1, counts


def test_projector_scale_is_stable_across_widths():
    generator = ProjectorGenerator(d0=256)
    with torch.no_grad():
        # E‖P_in x‖² = ‖P_in‖²_F and per-unit E|(P_out c)_i|² = ‖P_out‖²_F / d for unit-variance x, c
        energy_in = {d: generator(d)[1].pow(2).sum().item() for d in (100, 384, 1536)}
        energy_out = {d: generator(d)[0].pow(2).sum().item() / d for d in (100, 384, 1536)}
    for energy in (energy_in, energy_out):
        assert max(energy.values()) / min(energy.values()) < 1.25, energy


# ----------------------------------------------------------------------------- the update


def assert_update_equals_materialised_delta_weight(module) -> None:
    """The reference: each token's output equals ``W x + ΔW x`` with ΔW formed explicitly by
    :meth:`HyperLinear.delta_weight`, on a layer with d_in ≠ d_out (also used by the SAT-LoRA tests)."""
    layer = next(m for _, m in adapter_modules(module.backbone) if isinstance(m, HyperLinear) and m.out_features != m.in_features)
    x = torch.randn(3, 5, layer.in_features)
    with torch.no_grad():
        indices, gates = module.hyper.route(x)
        y = layer(x)
        expected = torch.empty_like(y)
        for b in range(3):
            for t in range(5):
                delta = layer.delta_weight(indices[b, t], gates[b, t])  # (d_out, d_in), materialised
                expected[b, t] = layer.base(x[b, t]) + delta @ x[b, t]
    assert not torch.allclose(y, layer.base(x), atol=1e-3)  # the update is not trivially zero
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


def test_update_equals_materialised_delta_weight_per_token():
    assert_update_equals_materialised_delta_weight(_module())


def test_fresh_adapter_leaves_the_host_unchanged(batch):
    module = UniHyperLoRAModule(backbone="tiny-bert", max_flop_overhead=None).eval()
    with torch.no_grad():
        adapted = module.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        with module.hyper.bypassed():
            plain = module.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert torch.equal(adapted, plain)


@pytest.mark.parametrize("top_k,threshold", [(1, 0.0), (2, 0.0), (2, 0.5)])
def test_router_activates_at_most_k_atoms_per_token(batch, top_k, threshold):
    module = _module(top_k=top_k, threshold=threshold)
    x = torch.randn(4, 7, module.hyper.d0)
    indices, gates = module.hyper.route(x)
    assert indices.shape == (4, 7, top_k) and gates.shape == (4, 7, top_k)
    active = (gates > 0).sum(-1)
    assert int(active.max()) <= top_k
    assert float(module.hyper.active_atoms()) == pytest.approx(float(active.float().mean()))
    if threshold > 0:
        assert bool((gates[gates > 0] >= threshold).all())
    # through the host: one routing per block, E[k] recorded over real tokens only
    _logits(module, batch)
    assert module.hyper.routing_count() == module.backbone.config.num_hidden_layers
    assert 0 < module.hyper.active_atoms() <= top_k
    assert module.hyper.expected_atoms() <= top_k


def test_budget_loss_is_lambda_f_expected_k_plus_lambda_q_delta_norm(batch):
    module = _module(lambda_flops=0.3, lambda_delta=2.0)
    _logits(module, batch)
    expected = 0.3 * module.hyper.expected_atoms() + 2.0 * module.hyper.mixer.delta.pow(2).sum()
    torch.testing.assert_close(module.regularization(), expected)


# ----------------------------------------------------------------------------- storage


def test_int4_packing_is_exact_on_a_hand_example():
    packed = quant.pack_int4(torch.tensor([1, -1, 7, -8, 0], dtype=torch.int8))
    assert packed.tolist() == [0xF1, 0x87, 0x00]
    assert quant.unpack_int4(packed, 5).tolist() == [1, -1, 7, -8, 0]
    values = torch.arange(-8, 8, dtype=torch.int8)
    assert torch.equal(quant.unpack_int4(quant.pack_int4(values), 16), values)


def test_int8_quantisation_on_a_hand_example():
    q, scale = quant.quantize_rows(torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0]]), 8)
    assert q.tolist() == [[127, -64, 32], [0, 0, 0]]  # -63.5 rounds half-to-even
    assert scale.tolist() == [pytest.approx(1 / 127, rel=1e-3), 0.0]


@pytest.mark.parametrize("scheme,q_max", [("int8_row", 127), ("int4_row", 7)])
def test_quantisation_round_trip_error_is_within_half_a_step(scheme, q_max):
    x = torch.randn(16, 40) * torch.linspace(0.01, 3, 16)[:, None]
    stored, entry = quant.encode("w", x, scheme)
    restored = quant.decode("w", stored, entry)
    step = x.abs().amax(1, keepdim=True) / q_max
    assert bool(((restored - x).abs() <= step / 2 * 1.002 + 1e-7).all())


def test_save_load_same_host_is_identical_and_other_width_runs(tmp_path, batch):
    source = _module()
    with torch.no_grad():
        # with full-rank projectors (issue 17) U ~ N(0, 0.2²) moves this tiny host's logits by 0.75
        # and flips routes downstream; U ~ N(0, 0.05²) moves them by ~0.09, a trained adapter's scale
        source.hyper.atoms_U.mul_(0.25)
        with source.hyper.bypassed():
            bare = _logits(source, batch)
    source.save_adapter(tmp_path / "a")
    config = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    text = json.dumps(config)
    assert "tiny-bert" not in text and "sites" not in config and "backbone" not in config

    first, second = _module(seed=1), _module(seed=2)
    first.load_adapter(tmp_path / "a")
    second.load_adapter(tmp_path / "a")
    assert torch.equal(_logits(first, batch), _logits(second, batch))
    # quantisation moves the function a little (here 0.005), not a lot: under a tenth of the adapter's effect
    effect = (_logits(source, batch) - bare).abs().max()
    assert (_logits(first, batch) - _logits(source, batch)).abs().max() < 0.1 * effect

    # saving the loaded adapter again writes the same bytes (quantisation is idempotent)
    first.save_adapter(tmp_path / "b")
    assert (tmp_path / "a" / WEIGHTS_NAME).read_bytes() == (tmp_path / "b" / WEIGHTS_NAME).read_bytes()

    # another width and depth: loads without retraining and runs
    wide = _module("tiny-bert-h48-l3", seed=3)
    before = _logits(wide, batch)
    wide.load_adapter(tmp_path / "a")
    after = _logits(wide, batch)
    assert after.shape == before.shape and torch.isfinite(after).all() and not torch.equal(after, before)
    wide.save_adapter(tmp_path / "c")
    shapes = lambda d: {k: tuple(v.shape) for k, v in load_file(str(d / WEIGHTS_NAME)).items()}  # noqa: E731
    assert shapes(tmp_path / "a") == shapes(tmp_path / "c")  # nothing in the file depends on the host


def test_adapter_at_defaults_is_under_one_megabyte(tmp_path):
    module = _module()
    module.save_adapter(tmp_path)
    on_disk = adapter_file_bytes(tmp_path)
    assert on_disk == module.adapter_file_bytes()
    assert on_disk <= 1_000_000
    stored = load_file(str(tmp_path / WEIGHTS_NAME))
    assert stored["hyper.atoms_U.q"].dtype == torch.int8 and stored["hyper.atoms_U.q"].shape == (128, 256)
    assert stored["hyper.mixer.delta.q4"].dtype == torch.uint8
    assert stored["hyper.mixer.delta.q4"].numel() * 2 == module.hyper.mixer.delta.numel()


def test_loading_an_adapter_of_other_settings_is_a_clear_error(tmp_path):
    _module().save_adapter(tmp_path)
    with pytest.raises(ValueError, match="num_atoms"):
        _module(num_atoms=64).load_adapter(tmp_path)


def test_init_adapter_takes_the_settings_from_the_file(tmp_path, batch):
    source = _module(num_atoms=32, d0=64, top_k=1)
    source.save_adapter(tmp_path)
    target = UniHyperLoRAModule(backbone="tiny-bert-h48-l3", init_adapter=str(tmp_path), max_flop_overhead=None).eval()
    assert target.hyper.num_atoms == 32 and target.hyper.d0 == 64 and target.hyper.top_k == 1
    reference = _module("tiny-bert-h48-l3", num_atoms=32, d0=64, top_k=1)
    reference.load_adapter(tmp_path)
    assert torch.equal(_logits(target, batch), _logits(reference, batch))


# ----------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("backbone", ["tiny-bert", "tiny-bert-h48-l3"])
def test_fvcore_overhead_matches_the_analytic_count(backbone):
    module = _module(backbone)
    seq_len = 16
    measured = flop_overhead(module, seq_len=seq_len)
    config = module.backbone.config
    analytic = module.hyper.analytic_macs(
        num_tokens=seq_len,
        hidden=config.hidden_size,
        layers=[(s.d_in, s.d_out) for s in module.sites],
        num_blocks=config.num_hidden_layers,
    )
    extra = measured["adapted_flops"] - measured["host_flops"]
    assert extra == pytest.approx(analytic, rel=0.05)
    assert measured["overhead"] == pytest.approx(extra / measured["host_flops"])


def test_budget_check_names_both_figures():
    check = BudgetCheck(max_adapter_bytes=1000, max_flop_overhead=0.10)
    with pytest.raises(BudgetError, match=r"250,000 bytes.*1,000.*12\.5%.*10\.0%"):
        check.check({"budget/adapter_file_bytes": 250_000.0, "budget/flop_overhead": 0.125})
    check.check({"budget/adapter_file_bytes": 999.0, "budget/flop_overhead": 0.05})  # within both: no error


# ----------------------------------------------------------------------------- phases


def test_delta_phase_changes_only_delta_and_the_new_head(tmp_path):
    from lightning.pytorch import Trainer

    from pefthub.callbacks.transfer import DeltaTuning
    from pefthub.data import SentenceClassificationDataModule

    _module().save_adapter(tmp_path / "source")
    target = UniHyperLoRAModule(
        backbone="tiny-bert-h48-l3", init_adapter=str(tmp_path / "source"), init_head=False, max_flop_overhead=None
    )
    before = {k: v.detach().clone() for k, v in target.state_dict().items()}
    data = SentenceClassificationDataModule(backbone="tiny-bert-h48-l3", task="sst2", max_length=16, batch_size=4, train_limit=16, eval_limit=8)
    callback = DeltaTuning(steps=3)  # the head is new (init_head=False), so it trains
    trainer = Trainer(
        accelerator="cpu", max_epochs=5, callbacks=[callback], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, limit_val_batches=0, default_root_dir=tmp_path,
    )
    trainer.fit(target, datamodule=data)
    assert trainer.global_step == 3
    after = target.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"hyper.mixer.delta", "head.linear.weight", "head.linear.bias"}
    assert callback.sizes == {"budget/delta_params": 7 * 128, "budget/new_head_params": 256 * 2 + 2}
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(target.hyper.mixer.delta), *(id(p) for p in target.head.parameters())}


def test_checkpoint_keeps_every_adapter_tensor_and_nothing_of_the_host():
    module = _module()
    checkpoint: dict = {"state_dict": module.state_dict()}
    module.hyper.requires_grad_(False)  # as in the δθ phase: frozen tensors must still be saved
    module.on_save_checkpoint(checkpoint)
    names = set(checkpoint["state_dict"])
    assert names == {f"hyper.{n}" for n, _ in module.hyper.named_parameters()} | {"head.linear.weight", "head.linear.bias"}


def test_checkpoint_of_another_backbone_or_method_is_refused_and_missing_tensors_named():
    """UniHyperLoRA goes through PEFTModule's checkpoint contract: the writer's method and
    backbone are recorded and checked, and a missing adapter tensor is named."""
    module = _module()
    checkpoint: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["pefthub"]["method"] == "unihyperlora" and checkpoint["pefthub"]["backbone"] == "tiny-bert"
    module.on_load_checkpoint(checkpoint)  # its own checkpoint loads
    for key, other in (("backbone", "tiny-bert-h48-l3"), ("method", "lora")):
        written = {**checkpoint, "pefthub": {**checkpoint["pefthub"], key: other}}
        with pytest.raises(ValueError, match=rf"^checkpoint was written by {key} '{other}' but this run uses {key} "):
            module.on_load_checkpoint(written)
    lacking = {**checkpoint, "state_dict": {k: v for k, v in checkpoint["state_dict"].items() if k != "hyper.mixer.delta"}}
    with pytest.raises(ValueError, match=r"^checkpoint lacks 1 tensor\(s\) this UniHyperLoRAModule trains \(e.g. \['hyper.mixer.delta'\]\)"):
        module.on_load_checkpoint(lacking)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_dense_and_sparse_updates_give_the_same_outputs_and_gradients(batch, dropout):
    """``update_impl: dense`` (one rank-M product with the gates as a token × atom matrix, the
    GPU default) computes the same update as the routed top-k gather, and the same gradients.
    With dropout both paths draw their masks from one seeded generator in the same order."""
    results = {}
    for impl in ("sparse", "dense"):
        module = _module(update_impl=impl, dropout=dropout, head_dropout=0.0).train()
        for sub in module.backbone.modules():
            if isinstance(sub, torch.nn.Dropout) and sub.p > 0 and sub not in {m.dropout for _, m in adapter_modules(module.backbone)}:
                sub.p = 0.0  # the host's own dropout off: only the adapter's masks are drawn
        torch.manual_seed(1)
        logits = module(batch["input_ids"], batch["attention_mask"])
        (logits.square().sum() + module.hyper.expected_atoms()).backward()
        results[impl] = (logits.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
    if dropout:  # different kernels draw different masks: compare only without dropout
        assert results["dense"][0].shape == results["sparse"][0].shape
        return
    torch.testing.assert_close(results["dense"][0], results["sparse"][0], atol=1e-5, rtol=1e-5)
    assert results["dense"][1].keys() == results["sparse"][1].keys()
    for name, grad in results["sparse"][1].items():
        torch.testing.assert_close(results["dense"][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("impl", ["sparse", "dense"])
def test_bf16_autocast_never_leaves_bf16_folds_for_fp32_forwards(batch, impl):
    """An fp32 forward after a bf16-autocast one is the fp32 result (the inference cache of
    projectors and folds is keyed on the precision; they are computed in fp32 anyway), and the
    bf16 output stays near it (top-k routing may pick other atoms for a few tokens in bf16)."""
    module = _module(update_impl=impl, head_dropout=0.0)
    inputs = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        # a trained adapter's scale: with full-rank projectors U ~ N(0, 0.2²) makes one route flip
        # (fp32 vs bf16) move a sentence's logits by 0.3 (see test_save_load_same_host_...)
        module.hyper.atoms_U.mul_(0.25)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = module(*inputs).float()
        reference = module(*inputs)
        fresh = _module(update_impl=impl, head_dropout=0.0)
        fresh.hyper.atoms_U.mul_(0.25)
        fresh = fresh(*inputs)
    torch.testing.assert_close(reference, fresh, atol=1e-6, rtol=0)
    assert float((low - reference).abs().max()) <= 0.2 * float(reference.abs().max())

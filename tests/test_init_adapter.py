"""`model.init_adapter` for every method: a saved adapter (perturbed away from its initial
values, so a fresh module would differ) loads into a new module with equal outputs; a PEFT
LoRA directory is imported on the fly."""

from __future__ import annotations

import pytest
import torch

from pefthub.methods import (
    AdaLoRAModule,
    FullFineTuneModule,
    GLoRAModule,
    ImportanceLoRAModule,
    LoRAModule,
    SATLoRAModule,
    UniHyperLoRAModule,
    VeRAModule,
)

HYPER = {"num_atoms": 16, "d0": 32, "max_flop_overhead": None, "max_adapter_bytes": None}
METHODS = {
    "lora": (LoRAModule, {"rank": 4, "alpha": 8}),
    "adalora": (AdaLoRAModule, {"init_rank": 4, "target_rank": 2}),
    "fw_lora": (ImportanceLoRAModule, {"rank": 4, "alpha": 8, "importance_source": "fisher"}),
    "iw_lora": (ImportanceLoRAModule, {"rank": 4, "alpha": 8, "importance_source": "grad_norm", "penalty_exponent": 2.0}),
    "glora": (GLoRAModule, {"rank": 4, "alpha": 8}),
    "vera": (VeRAModule, {"rank": 8}),
    "satlora": (SATLoRAModule, HYPER),
    "unihyperlora": (UniHyperLoRAModule, HYPER),
    "full": (FullFineTuneModule, {}),
}


def _perturb(module) -> None:
    """Move every trained float tensor off its initial value (a fresh module would then differ)."""
    with torch.no_grad():
        for tensor in module.adapter_tensors().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)


@pytest.mark.parametrize("method", list(METHODS))
def test_init_adapter_round_trip_gives_equal_outputs(method, tmp_path, batch):
    cls, kwargs = METHODS[method]
    torch.manual_seed(0)
    source = cls(backbone="tiny-bert", head_dropout=0.0, **kwargs).eval()
    _perturb(source)
    source.save_adapter(tmp_path)
    expected = source(**batch)

    torch.manual_seed(1)  # another draw: only the file can make the outputs equal
    fresh = cls(backbone="tiny-bert", head_dropout=0.0, **kwargs).eval()
    assert not torch.allclose(fresh(**batch), expected)
    loaded = cls(backbone="tiny-bert", head_dropout=0.0, init_adapter=str(tmp_path), **kwargs).eval()
    # quantised storage (SAT-LoRA/UniHyperLoRA) rounds once at save: the saved source itself is the reference
    reference = type(source)(backbone="tiny-bert", head_dropout=0.0, **kwargs).eval()
    reference.load_adapter(tmp_path)
    torch.testing.assert_close(loaded(**batch), reference(**batch), rtol=0, atol=0)
    if method not in ("satlora", "unihyperlora"):
        torch.testing.assert_close(loaded(**batch), expected, rtol=1e-5, atol=1e-6)


def test_init_adapter_imports_a_peft_lora_directory_on_the_fly(tmp_path, batch):
    from pefthub.adapters.peft_format import export_to_peft

    torch.manual_seed(0)
    source = LoRAModule(backbone="tiny-bert", rank=4, alpha=8, head_dropout=0.0).eval()
    _perturb(source)
    source.save_adapter(tmp_path / "pefthub")
    export_to_peft(tmp_path / "pefthub", tmp_path / "peft")
    loaded = LoRAModule(backbone="tiny-bert", rank=4, alpha=8, head_dropout=0.0, init_adapter=str(tmp_path / "peft")).eval()
    torch.testing.assert_close(loaded(**batch), source(**batch), rtol=1e-5, atol=1e-6)


def test_init_adapter_of_another_rank_is_one_error_naming_the_tensor(tmp_path):
    LoRAModule(backbone="tiny-bert", rank=4).save_adapter(tmp_path)
    with pytest.raises(ValueError, match=r"has shape \(4, 32\), model expects \(2, 32\); set the method's settings"):
        LoRAModule(backbone="tiny-bert", rank=2, init_adapter=str(tmp_path))


@pytest.mark.parametrize("method", list(METHODS))
def test_an_adapter_directory_alone_rebuilds_the_model_for_every_method(method, tmp_path, batch):
    from pefthub.adapter_card import usage_record, write_usage
    from pefthub.api import build_module

    cls, kwargs = METHODS[method]
    torch.manual_seed(0)
    source = cls(backbone="tiny-bert", head_dropout=0.0, label_names=["neg", "pos"], **kwargs).eval()
    _perturb(source)
    source.save_adapter(tmp_path)
    write_usage(tmp_path, usage_record(source, None))
    reference = cls(backbone="tiny-bert", head_dropout=0.0, **kwargs).eval()
    reference.load_adapter(tmp_path)
    rebuilt = build_module(tmp_path)
    assert type(rebuilt) is cls and rebuilt.label_names == ["neg", "pos"]
    torch.testing.assert_close(rebuilt(**batch), reference(**batch), rtol=1e-6, atol=1e-6)


def test_init_adapter_applies_the_files_scaling_whatever_alpha_is_configured(tmp_path, batch):
    torch.manual_seed(0)
    source = LoRAModule(backbone="tiny-bert", rank=4, alpha=8, head_dropout=0.0).eval()
    _perturb(source)
    source.save_adapter(tmp_path)
    loaded = LoRAModule(backbone="tiny-bert", rank=4, alpha=32, head_dropout=0.0, init_adapter=str(tmp_path)).eval()
    torch.testing.assert_close(loaded(**batch), source(**batch), rtol=1e-5, atol=1e-6)


def test_an_adapter_trained_on_other_backbone_weights_is_refused_before_loading(tmp_path):
    import json

    from pefthub.api import build_module

    LoRAModule(backbone="tiny-bert", rank=2).save_adapter(tmp_path)
    (tmp_path / "usage.json").write_text(json.dumps({"backbone": "minilm-l6", "backbone_weights_sha256": "0" * 64, "method": "lora"}))
    with pytest.raises(ValueError, match=r"trained on minilm-l6 weights with SHA-256 0{64}, but minilm-l6 here has SHA-256 53aa5117"):
        build_module(tmp_path)

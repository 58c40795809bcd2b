"""Backbone resolution: tiny configs, packaged checks, offline errors."""

from __future__ import annotations

import pytest
import torch

from pefthub import backbones
from pefthub.backbones import BackboneError, build_tiny_model, load_backbone, resolve_source


def test_tiny_backbones_are_identical_across_calls_and_global_seeds():
    torch.manual_seed(123)
    first = build_tiny_model("tiny-bert").state_dict()
    torch.manual_seed(456)
    second = build_tiny_model("tiny-bert").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_tiny_tokenizer_has_no_unknown_tokens_for_ascii_text():
    _, tokenizer = load_backbone("tiny-bert")
    ids = tokenizer("Isn't it a GREAT movie?! 10/10 -- yes.")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id


def test_offline_hub_id_names_the_offline_alternatives():
    with pytest.raises(BackboneError, match=r"hub is not reachable.*minilm-l6"):
        resolve_source("org/some-model")


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        resolve_source(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="config.json"):
        resolve_source(str(tmp_path / "empty"))


def test_local_directory_loads(tmp_path):
    model = build_tiny_model("tiny-bert")
    model.save_pretrained(tmp_path)
    assert resolve_source(str(tmp_path)) == str(tmp_path)


def test_packaged_weights_with_wrong_checksum_are_refused(monkeypatch):
    spec = backbones.PACKAGED_MODELS["minilm-l6"]
    if backbones.importlib.util.find_spec(spec.module) is None:
        pytest.skip("minilm-l6 package not installed")
    bad = backbones.PackagedModel(**{**spec.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(backbones.PACKAGED_MODELS, "minilm-l6", bad)
    with pytest.raises(BackboneError, match="SHA-256"):
        backbones.packaged_model_dir("minilm-l6")


def test_missing_package_names_the_install_command(monkeypatch):
    spec = backbones.PACKAGED_MODELS["minilm-l6"]
    missing = backbones.PackagedModel(**{**spec.__dict__, "module": "no_such_module_xyz"})
    monkeypatch.setitem(backbones.PACKAGED_MODELS, "minilm-l6", missing)
    with pytest.raises(BackboneError, match="pefthub install-models minilm-l6"):
        backbones.packaged_model_dir("minilm-l6")

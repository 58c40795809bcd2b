"""Derived hosts (layer-dropped, width-pruned) and tiny hosts of other sizes."""

from __future__ import annotations

import pytest
import torch

from pefthub.backbones import load_backbone, load_tokenizer


def _hidden(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def test_tiny_hosts_of_other_sizes():
    model, _ = load_backbone("tiny-bert-h48-l3")
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.intermediate_size) == (48, 3, 96)
    assert load_tokenizer("tiny-bert-h48-l3").vocab == load_tokenizer("tiny-bert").vocab


@pytest.mark.parametrize("name", ["tiny-bert:hidden=32", "tiny-bert:ffn=64", "tiny-bert:layers=0,1"])
def test_pruning_nothing_reproduces_the_host_exactly(name, batch):
    source, _ = load_backbone("tiny-bert")
    derived, _ = load_backbone(name)
    assert torch.equal(_hidden(derived, batch), _hidden(source, batch))


def test_drop_every_other_keeps_the_even_blocks(batch):
    source, _ = load_backbone("tiny-bert-l4")
    derived, _ = load_backbone("tiny-bert-l4:drop-every-other")
    assert derived.config.num_hidden_layers == 2
    for new, old in ((0, 0), (1, 2)):
        a, b = derived.encoder.layer[new].state_dict(), source.encoder.layer[old].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    # the same as running the source with blocks 1 and 3 skipped
    source.encoder.layer = torch.nn.ModuleList([source.encoder.layer[0], source.encoder.layer[2]])
    assert torch.equal(_hidden(derived, batch), _hidden(source, batch))


def test_ffn_pruning_keeps_the_largest_units_and_records_their_positions(batch):
    source, _ = load_backbone("tiny-bert")
    derived, _ = load_backbone("tiny-bert:ffn=48")
    assert derived.config.intermediate_size == 48
    inter = derived.encoder.layer[0].intermediate.dense
    assert inter.weight.shape == (48, 32) and derived.encoder.layer[0].output.dense.weight.shape == (32, 48)
    old_in, old_out = source.encoder.layer[0].intermediate.dense, source.encoder.layer[0].output.dense
    score = old_in.weight.abs().sum(1) + old_in.bias.abs() + old_out.weight.abs().sum(0)
    kept = torch.sort(torch.topk(score, 48).indices).values
    assert torch.equal(inter.weight, old_in.weight[kept])
    assert derived.config.pefthub_unit_positions["48"] == pytest.approx(((kept + 0.5) / 64).tolist())
    assert torch.isfinite(_hidden(derived, batch)).all()


def test_hidden_pruning_gives_a_narrower_working_host(batch):
    derived, _ = load_backbone("tiny-bert:hidden=0.5")
    assert derived.config.hidden_size == 16
    hidden = _hidden(derived, batch)
    assert hidden.shape[-1] == 16 and torch.isfinite(hidden).all()


def test_unknown_operation_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone operation 'shrink'.*drop-every-other"):
        load_backbone("tiny-bert:shrink")
    with pytest.raises(ValueError, match="gives 0 units; expected a multiple of 4"):
        load_backbone("tiny-bert:hidden=3")
    assert load_backbone("tiny-bert:hidden=30")[0].config.hidden_size == 28  # rounded down to whole heads

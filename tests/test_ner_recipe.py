"""The token-task recipe keys: focal loss and a separate learning rate for the head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pefthub.methods import LoRAModule
from pefthub.methods.base import focal_loss

NAMES = ["O", "B-LOC", "I-LOC"]


def _labels_and_logits() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 3) * 3
    labels = torch.tensor([[-100, 0, 1, 2, -100], [-100, 0, 0, -100, -100]])
    return logits, labels


def test_focal_loss_with_gamma_zero_is_cross_entropy_and_ignores_minus_100():
    logits, labels = _labels_and_logits()
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert torch.allclose(focal_loss(logits.flatten(0, 1), labels.flatten(), 0.0), expected)


def test_focal_loss_scales_each_position_by_one_minus_p_to_the_gamma():
    logits, labels = _labels_and_logits()
    keep = labels != -100
    p = logits[keep].softmax(-1).gather(-1, labels[keep].unsqueeze(-1)).squeeze(-1)
    expected = (-(1 - p) ** 2 * p.log()).mean()
    assert torch.allclose(focal_loss(logits.flatten(0, 1), labels.flatten(), 2.0), expected)
    # confidently right positions contribute (almost) nothing; wrong ones keep ~their CE
    right = torch.tensor([[10.0, 0.0, 0.0]])
    wrong = torch.tensor([[0.0, 10.0, 0.0]])
    target = torch.tensor([0])
    assert focal_loss(right, target, 2.0) < 1e-6 * F.cross_entropy(right, target) + 1e-12
    assert torch.isclose(focal_loss(wrong, target, 2.0), F.cross_entropy(wrong, target), rtol=1e-3)


def test_model_loss_key_selects_the_focal_loss():
    logits, labels = _labels_and_logits()
    model = LoRAModule(backbone="tiny-bert", rank=2, num_labels=3, label_names=NAMES,
                       task_type="token_classification", loss="focal", focal_gamma=1.5)
    assert torch.allclose(model.task_loss(logits, labels), focal_loss(logits.flatten(0, 1), labels.flatten(), 1.5))


def test_head_lr_puts_the_head_in_its_own_group_under_the_same_schedule():
    from types import SimpleNamespace

    from torch.optim import AdamW

    model = LoRAModule(backbone="tiny-bert", rank=2, num_labels=3, label_names=NAMES, head_lr=5e-3,
                       optimizer=lambda params: AdamW(params, lr=1e-3), warmup_fraction=0.5)
    model._trainer = SimpleNamespace(estimated_stepping_batches=10)  # all configure_optimizers reads
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    adapter_group, head_group = optimizer.param_groups
    assert {id(p) for p in head_group["params"]} == {id(p) for p in model.head.parameters()}
    assert {id(p) for p in adapter_group["params"]} | {id(p) for p in head_group["params"]} == {
        id(p) for p in model.trainable_parameters()
    }
    # both groups warm up by the same factor from their own base lr
    assert head_group["lr"] / adapter_group["lr"] == pytest.approx(5.0)
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert head_group["lr"] / adapter_group["lr"] == pytest.approx(5.0)
    assert adapter_group["lr"] < 1e-3


@pytest.mark.parametrize(("key", "value", "message"), [
    ("head_lr", 0.0, "model.head_lr must be > 0"),
    ("loss", "dice", "model.loss must be one of"),
    ("focal_gamma", -1.0, "model.focal_gamma must be >= 0"),
])
def test_bad_recipe_keys_are_one_line_errors(key, value, message):
    with pytest.raises(ValueError, match=message):
        LoRAModule(backbone="tiny-bert", rank=2, **{key: value})

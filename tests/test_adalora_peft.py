"""pefthub AdaLoRA side by side with HF PEFT's AdaLoRA (peft==0.21.2), the reference.

Both start from the same P, Λ, Q, receive the same gradients at every step and take the
same AdamW steps; after each optimiser step both run their allocator (PEFT:
``update_and_allocate``). Budgets, masks and the adapter tensors must then agree exactly,
and the orthogonality regulariser (PEFT's convention, ``orth_reg_form: mean_norm``) to 1e-6.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import AdaLoraConfig, get_peft_model
from transformers import BertForSequenceClassification

from pefthub.backbones import build_tiny_model, tiny_config
from pefthub.methods import AdaLoRAModule

T, TINIT, TFINAL, DELTA_T, INIT_R, TARGET_R, GAMMA, ALPHA = 16, 3, 4, 2, 4, 2, 0.5, 8


def _pair(orth_reg_weight: float = GAMMA):
    torch.manual_seed(0)
    ours = AdaLoRAModule(
        backbone="tiny-bert", init_rank=INIT_R, target_rank=TARGET_R, alpha=ALPHA, tinit=TINIT, tfinal=TFINAL,
        delta_t=DELTA_T, orth_reg_weight=orth_reg_weight, orth_reg_form="mean_norm", head_dropout=0.0,
    )
    ours.allocator.set_total_steps(T)
    config = tiny_config("tiny-bert")
    config._attn_implementation = "eager"
    host = BertForSequenceClassification(config)
    # the same frozen encoder as ours (the classifier head of `host` only serves PEFT's `.loss`)
    host.bert.load_state_dict(build_tiny_model("tiny-bert").state_dict(), strict=False)
    reference = get_peft_model(
        host,
        AdaLoraConfig(
            init_r=INIT_R, target_r=TARGET_R, lora_alpha=ALPHA, tinit=TINIT, tfinal=TFINAL, deltaT=DELTA_T,
            total_step=T, beta1=0.85, beta2=0.85, orth_reg_weight=orth_reg_weight, lora_dropout=0.0,
            target_modules=list(ours.target_modules),
        ),
    )
    peft_layers = {
        name.removeprefix("base_model.model.bert."): module
        for name, module in reference.named_modules()
        if hasattr(module, "lora_E") and "default" in module.lora_E
    }
    assert set(peft_layers) == set(ours.svd_layers)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, layer in ours.svd_layers.items():
            # non-zero λ from the start, so every part of the score is exercised
            layer.lora_lambda.copy_(torch.randn(layer.lora_lambda.shape, generator=generator) * 0.1)
            peft_layers[name].lora_A["default"].copy_(layer.lora_Q)
            peft_layers[name].lora_B["default"].copy_(layer.lora_P)
            peft_layers[name].lora_E["default"].copy_(layer.lora_lambda.view(-1, 1))
    return ours, reference, peft_layers


def _peft_regularizer(reference, batch, labels) -> torch.Tensor:
    """PEFT adds γ·R to ``outputs.loss`` in ``AdaLoraModel.forward`` (which a ``PeftModel``
    without ``task_type`` bypasses: call ``base_model``); recover it as loss(γ) − loss(0)."""
    config = reference.peft_config["default"]
    with torch.no_grad():
        with_reg = reference.base_model(**batch, labels=labels).loss
        weight, config.orth_reg_weight = config.orth_reg_weight, 0.0
        without_reg = reference.base_model(**batch, labels=labels).loss
        config.orth_reg_weight = weight
    return with_reg - without_reg


def test_same_P_lambda_Q_give_the_same_hidden_states_as_peft(batch):
    ours, reference, _ = _pair()
    ours.eval(), reference.eval()
    with torch.no_grad():
        ours_hidden = ours.backbone(**batch).last_hidden_state
        peft_hidden = reference.base_model.model.bert(**batch).last_hidden_state
        plain = build_tiny_model("tiny-bert")(**batch).last_hidden_state
    assert (ours_hidden - plain).abs().max() > 1e-4, "the adapter must change the output"
    # PEFT scales by alpha / (init_r + 1e-5), pefthub by alpha / init_r: a relative 2.5e-6 difference
    torch.testing.assert_close(ours_hidden, peft_hidden, atol=1e-5, rtol=0)


def test_same_gradients_give_the_same_budgets_masks_and_regularizer_as_peft(batch):
    ours, reference, peft_layers = _pair()
    ours.train(), reference.train()
    allocator = ours.allocator
    peft_allocator = reference.base_model.rankallocator
    ours_params = [p for layer in ours.svd_layers.values() for p in layer.adapter_parameters().values()]
    peft_params = [p for layer in peft_layers.values() for p in (layer.lora_A["default"], layer.lora_B["default"], layer.lora_E["default"])]
    ours_opt = torch.optim.AdamW(ours_params, lr=0.05, foreach=False)
    peft_opt = torch.optim.AdamW(peft_params, lr=0.05, foreach=False)
    labels_gen = torch.Generator().manual_seed(2)
    masks_seen, revived = [], False

    for t in range(T):
        labels = torch.randint(0, 2, (batch["input_ids"].shape[0],), generator=labels_gen)
        regularizer = ours.penalty()
        torch.testing.assert_close(regularizer.detach(), _peft_regularizer(reference, batch, labels), atol=1e-6, rtol=0)
        loss = F.cross_entropy(ours(batch["input_ids"], batch["attention_mask"]), labels) + regularizer
        loss.backward()
        for name, layer in ours.svd_layers.items():
            peft_layers[name].lora_A["default"].grad = layer.lora_Q.grad.clone()
            peft_layers[name].lora_B["default"].grad = layer.lora_P.grad.clone()
            peft_layers[name].lora_E["default"].grad = layer.lora_lambda.grad.view(-1, 1).clone()
        ours_opt.step()
        peft_opt.step()
        if t > 0 and any((layer.lora_lambda[~layer.rank_mask] != 0).any() for layer in ours.svd_layers.values()):
            revived = True  # soft masking: the optimiser moved a zeroed λ before re-allocation

        report = allocator.step(t)
        reference.base_model.update_and_allocate(t)

        assert report.budget == peft_allocator.budget_schedule(t)[0], f"budget differs at step {t}"
        if t < T - TFINAL:  # importance statistics, bit for bit (PEFT drops them at T - tfinal)
            state = allocator.state_dict()
            for name in ours.svd_layers:
                for local, peft_local in (("lora_P", "lora_B"), ("lora_lambda", "lora_E"), ("lora_Q", "lora_A")):
                    key = f"bert.{name}.{peft_local}.default"
                    assert torch.equal(state["sensitivity"][f"{name}.{local}"], peft_allocator.exp_avg_ipt[key].view_as(state["sensitivity"][f"{name}.{local}"]))
                    assert torch.equal(state["uncertainty"][f"{name}.{local}"], peft_allocator.exp_avg_unc[key].view_as(state["uncertainty"][f"{name}.{local}"]))
        for name, layer in ours.svd_layers.items():
            peft = peft_layers[name]
            assert torch.equal(layer.lora_lambda, peft.lora_E["default"].view(-1)), f"λ of {name} differs at step {t}"
            assert torch.equal(layer.lora_P, peft.lora_B["default"]) and torch.equal(layer.lora_Q, peft.lora_A["default"])
        if report.masked:
            pattern = reference.peft_config["default"].rank_pattern
            for name, layer in ours.svd_layers.items():
                assert layer.rank_mask.tolist() == pattern[f"bert.{name}.lora_E.default"], f"mask of {name} differs at step {t}"
            masks_seen.append(allocator.rank_masks())
        ours_opt.zero_grad(set_to_none=True)
        peft_opt.zero_grad(set_to_none=True)

    # the run exercised what it claims: 4 reductions + the final allocation, ranks moved between
    # layers, and the final budget holds exactly
    assert len(masks_seen) == 5
    assert allocator.active_rank() == TARGET_R * len(ours.svd_layers) == sum(allocator.rank_pattern().values())
    assert len(set(allocator.rank_pattern().values())) > 1, "expected unequal per-layer ranks"
    assert masks_seen[0] != masks_seen[-1]
    assert revived


def test_budget_schedule_matches_peft_at_every_step():
    ours, reference, _ = _pair()
    peft_allocator = reference.base_model.rankallocator
    assert ours.allocator.init_budget == peft_allocator.init_bgt == INIT_R * 12
    assert ours.allocator.target_budget == peft_allocator.target_bgt == TARGET_R * 12
    assert [ours.allocator.budget_at(t) for t in range(T)] == [peft_allocator.budget_schedule(t)[0] for t in range(T)]


@pytest.mark.parametrize("form", ["mean_norm", "sum_squared"])
def test_regularizer_is_zero_for_orthonormal_P_and_Q(form):
    ours = AdaLoRAModule(backbone="tiny-bert", init_rank=4, target_rank=2, orth_reg_form=form)
    with torch.no_grad():
        for layer in ours.svd_layers.values():
            layer.lora_P.copy_(torch.linalg.qr(torch.randn(layer.lora_P.shape)).Q)
            layer.lora_Q.copy_(torch.linalg.qr(torch.randn(layer.lora_Q.shape[::-1])).Q.T)
    assert ours.penalty().item() == pytest.approx(0.0, abs=1e-5)

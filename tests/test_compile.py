"""``model.compile: true``: the compiled step equals the eager one for every method, compiles one
graph per input shape, and ``data.pad_to_multiple_of`` bounds the shapes.

Most checks use the ``aot_eager`` backend (dynamo's graph capture and AOT autograd, no code
generation: seconds instead of a minute per method on 2 CPU cores); one LoRA check runs
``inductor``, the default, end to end.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

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

METHODS = {
    "lora": LoRAModule, "adalora": AdaLoRAModule, "fw_lora": ImportanceLoRAModule, "glora": GLoRAModule,
    "unihyperlora": UniHyperLoRAModule, "satlora": SATLoRAModule, "vera": VeRAModule, "full": FullFineTuneModule,
}


def _batch(length: int = 16) -> dict[str, torch.Tensor]:
    from pefthub.backbones import tiny_tokenizer

    texts = ["a good movie , really good", "the worst film of the year", "fun", "never boring, always new!"]
    encoded = dict(tiny_tokenizer()(texts, padding="max_length", max_length=length, return_tensors="pt"))
    encoded["labels"] = torch.tensor([1, 0, 1, 1])
    return encoded


def _train(name: str, compiled: bool, backend: str, steps: int = 2):
    torch.manual_seed(0)
    extra = {"max_flop_overhead": None} if name in ("unihyperlora", "satlora") else {}
    module = METHODS[name](backbone="tiny-bert", head_dropout=0.0, compile=compiled, compile_backend=backend, **extra)
    for sub in module.modules():  # no dropout: eager and compiled draw random numbers differently
        if isinstance(sub, torch.nn.Dropout):
            sub.p = 0.0
    module.train()
    optimizer = torch.optim.SGD(module.trainable_parameters(), lr=0.1)
    batch = _batch()
    losses, grads = [], []
    for _ in range(steps):
        loss = F.cross_entropy(module(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None})
        optimizer.step()
        optimizer.zero_grad()
    return losses, grads


@pytest.mark.parametrize("name", list(METHODS))
def test_compiled_steps_equal_eager_steps_with_one_graph(name):
    torch._dynamo.reset()
    counters.clear()
    eager_losses, eager_grads = _train(name, False, "aot_eager")
    losses, grads = _train(name, True, "aot_eager")
    assert counters["stats"]["unique_graphs"] == 1, "the second step must reuse the first step's graph"
    assert not counters["graph_break"], dict(counters["graph_break"])
    for step in range(2):
        torch.testing.assert_close(losses[step], eager_losses[step], atol=1e-4, rtol=1e-4)
        assert grads[step].keys() == eager_grads[step].keys()
        for key, grad in eager_grads[step].items():
            torch.testing.assert_close(grads[step][key], grad, atol=1e-4, rtol=1e-4, msg=f"step {step}: {key}")


def test_inductor_compiles_lora_to_the_eager_result():
    torch._dynamo.reset()
    eager_losses, eager_grads = _train("lora", False, "inductor")
    losses, grads = _train("lora", True, "inductor")
    for step in range(2):
        torch.testing.assert_close(losses[step], eager_losses[step], atol=1e-4, rtol=1e-4)
        for key, grad in eager_grads[step].items():
            torch.testing.assert_close(grads[step][key], grad, atol=1e-4, rtol=1e-4, msg=key)


def test_pad_to_multiple_of_bounds_the_batch_shapes():
    from pefthub.data import SentenceClassificationDataModule

    data = SentenceClassificationDataModule(task="sst2", backbone="tiny-bert", max_length=256, batch_size=4,
                                            train_limit=64, eval_limit=16, pad_to_multiple_of=64)
    data.setup("fit")
    lengths = {batch["input_ids"].shape[1] for batch in data.train_dataloader()}
    assert lengths and all(length % 64 == 0 and length <= 256 for length in lengths)
    unpadded = SentenceClassificationDataModule(task="sst2", backbone="tiny-bert", max_length=256, batch_size=4,
                                                train_limit=64, eval_limit=16)
    unpadded.setup("fit")
    assert len({b["input_ids"].shape[1] for b in unpadded.train_dataloader()}) > len(lengths)
    with pytest.raises(ValueError, match="data.pad_to_multiple_of must be >= 1"):
        SentenceClassificationDataModule(task="sst2", backbone="tiny-bert", pad_to_multiple_of=0)

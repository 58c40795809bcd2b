"""Training-time overhead of FW-LoRA, IW-LoRA and GLoRA over LoRA, side by side in one process.

All variants train on the same batches, one optimiser step each in turn (the order rotates every
round, so cache and frequency drift fall on all of them). A step is: forward, task loss
(+ the method's penalty), backward, the importance observation where the phase has one,
AdamW step, ``zero_grad``. Lightning's own per-step overhead is the same for every method and
left out; so is the per-matrix ‖ΔW‖_F logging, which runs only every ``log_every_n_steps``.

Variants timed (r = 8, alpha 16, dropout 0.05, the shipped sst2 configs):

- ``lora``                 plain LoRA (the reference, ratio 1);
- ``fw_penalty``           FW-/IW-LoRA after the warm-up: λ Σ_m w_m tr((BᵀB)(AAᵀ)) in the loss
                           (IW-LoRA runs the same code with other weights);
- ``glora_reallocated``    GLoRA after the reallocation (its rank pattern comes from a real
                           ``--glora-warmup``-step warm-up on these batches);
- ``warmup_fisher``        the warm-up of FW-LoRA (hooks, ‖Σ g xᵀ‖²_F, ``fisher_impl: auto``);
- ``warmup_grad_norm``     the warm-up of GLoRA/IW-LoRA (same hooks, square root);
- ``warmup_lora_grad``     the cheap proxy (reads A/B gradients only).

Run (CPU, one thread by default):

    python benchmarks/importance_overhead.py --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pefthub.data import SentenceClassificationDataModule  # noqa: E402
from pefthub.methods import GLoRAModule, ImportanceLoRAModule, LoRAModule  # noqa: E402


class Variant:
    def __init__(self, name: str, module, optimizer, estimator=None) -> None:
        self.name, self.module, self.optimizer, self.estimator = name, module, optimizer, estimator
        self.times: list[float] = []

    def step(self, batch: dict[str, torch.Tensor], timed: bool) -> None:
        start = time.perf_counter()
        logits = self.module(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        loss = F.cross_entropy(logits, batch["labels"])
        extra = self.module.regularization()
        if extra is not None:
            loss = loss + extra
        loss.backward()
        self.module.apply_penalty_gradients()  # FW/IW-LoRA's penalty, as on_after_backward adds it in a run
        if self.estimator is not None:
            self.estimator.observe_step()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if timed:
            self.times.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--steps", type=int, default=30, help="timed optimiser steps per variant")
    parser.add_argument("--untimed", type=int, default=3, help="untimed steps per variant first")
    parser.add_argument("--glora-warmup", type=int, default=20, help="warm-up steps that produce GLoRA's rank pattern")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = SentenceClassificationDataModule(task="sst2", backbone=args.backbone, max_length=args.max_length, batch_size=args.batch_size)
    data.setup("fit")
    batches = []
    for batch in data.train_dataloader():
        batches.append(batch)
        if len(batches) == max(args.untimed + args.steps, args.glora_warmup):
            break

    common = {"backbone": args.backbone, "rank": 8, "alpha": 16, "dropout": 0.05}

    def adamw(module):
        return torch.optim.AdamW(module.trainable_parameters(), lr=5e-4, weight_decay=0.01)

    variants = []
    lora = LoRAModule(**common).train()
    variants.append(Variant("lora", lora, adamw(lora)))

    fw = ImportanceLoRAModule(**common, importance_source="fisher", penalty_weight=1e-3).train()
    fw.importance_estimator.attach(fw.importance_layers())
    fw.importance_estimator.freeze()  # values 0 → uniform importances; the cost does not depend on them
    fw.on_importance_frozen()
    variants.append(Variant("fw_penalty", fw, adamw(fw)))

    glora = GLoRAModule(**common, warmup_steps=args.glora_warmup).train()
    optimizer = adamw(glora)
    glora.importance_estimator.attach(glora.importance_layers())
    warm = Variant("glora_warmup", glora, optimizer, glora.importance_estimator)
    for batch in batches[: args.glora_warmup]:
        warm.step(batch, timed=False)
    glora.importance_estimator.freeze()
    pattern = glora.reallocate()
    variants.append(Variant("glora_reallocated", glora, adamw(glora)))

    for source in ("fisher", "grad_norm", "lora_grad"):
        module = ImportanceLoRAModule(**common, importance_source=source).train()
        module.importance_estimator.attach(module.importance_layers())
        variants.append(Variant(f"warmup_{source}", module, adamw(module), module.importance_estimator))

    for i in range(args.untimed + args.steps):
        batch = batches[i]
        shift = i % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            variant.step(batch, timed=i >= args.untimed)

    reference = statistics.median(variants[0].times)
    result = {
        "backbone": args.backbone,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "glora_rank_pattern_summary": {
            "total": sum(pattern.values()),
            "removed": sum(r == 0 for r in pattern.values()),
            "by_type": _by_type(glora, pattern),
        },
        "median_step_s": {v.name: statistics.median(v.times) for v in variants},
        "ratio_to_lora": {v.name: statistics.median(v.times) / reference for v in variants},
        "ratio_to_lora_mean_of_paired": {
            v.name: statistics.mean(t / r for t, r in zip(v.times, variants[0].times, strict=True)) for v in variants
        },
    }
    print(json.dumps(result, indent=2))


def _by_type(module: GLoRAModule, pattern: dict[str, int]) -> dict[str, list[int]]:
    by_type: dict[str, list[int]] = {}
    for site in module.sites:
        by_type.setdefault(site.module_type, []).append(pattern[site.name])
    return by_type


if __name__ == "__main__":
    main()

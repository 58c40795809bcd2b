"""Training-time overhead of AdaLoRA over LoRA, measured side by side in one process.

LoRA (r = 8) and AdaLoRA (init_rank 12 → target_rank 8, the shipped sst2 configs) train on
the same batches; their steps alternate (which one goes first alternates too, so cache and
frequency effects fall on both). A step is everything an optimiser step costs: forward,
loss (+ the orthogonality regulariser for AdaLoRA), backward, AdamW step, AdaLoRA's
importance update / masking (``allocator.step``) and ``zero_grad``. The allocator's
schedule spans exactly the timed steps, so warm-up, reduction and final phases are all in
the sample in their configured proportions. Lightning's own per-step overhead is the same
for both methods and left out.

Run (CPU, one thread by default):

    python benchmarks/adalora_overhead.py --steps 60
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
from pefthub.methods import AdaLoRAModule, LoRAModule  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--steps", type=int, default=60, help="timed optimiser steps per method")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per method first")
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
        if len(batches) == args.warmup + args.steps:
            break

    lora = LoRAModule(backbone=args.backbone, rank=8, alpha=16, dropout=0.05).train()
    adalora = AdaLoRAModule(
        backbone=args.backbone, init_rank=12, target_rank=8, alpha=24, dropout=0.05, tinit=0.1, tfinal=0.3,
        delta_t=1, orth_reg_weight=0.1,
    ).train()
    adalora.allocator.set_total_steps(args.steps)
    optimizers = {
        "lora": torch.optim.AdamW(lora.trainable_parameters(), lr=5e-4, weight_decay=0.01),
        "adalora": torch.optim.AdamW(adalora.trainable_parameters(), lr=5e-4, weight_decay=0.01),
    }
    modules = {"lora": lora, "adalora": adalora}
    times: dict[str, list[float]] = {"lora": [], "adalora": []}
    allocator_times: list[float] = []

    def train_step(method: str, batch, timed_index: int | None) -> float:
        module, optimizer = modules[method], optimizers[method]
        start = time.perf_counter()
        logits = module._logits(batch)
        loss = F.cross_entropy(logits, batch["labels"])
        extra = module.regularization()
        if extra is not None:
            loss = loss + extra
        loss.backward()
        module.apply_penalty_gradients()  # AdaLoRA's orthogonality term, as on_after_backward adds it in a run
        optimizer.step()
        if method == "adalora" and timed_index is not None:
            allocator_start = time.perf_counter()
            module.allocator.step(timed_index)
            allocator_times.append(time.perf_counter() - allocator_start)
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    for i, batch in enumerate(batches):
        timed_index = i - args.warmup if i >= args.warmup else None
        order = ("lora", "adalora") if i % 2 == 0 else ("adalora", "lora")
        for method in order:
            elapsed = train_step(method, batch, timed_index)
            if timed_index is not None:
                times[method].append(elapsed)

    median = {m: statistics.median(t) for m, t in times.items()}
    # the two steps of one iteration see the same batch: their ratio cancels batch length
    paired = sorted(a / b for a, b in zip(times["adalora"], times["lora"], strict=True))
    quartiles = statistics.quantiles(paired, n=4)
    result = {
        "backbone": args.backbone,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "timed_steps_per_method": args.steps,
        "median_step_s": median,
        "mean_step_s": {m: statistics.fmean(t) for m, t in times.items()},
        "ratio_adalora_over_lora_median": median["adalora"] / median["lora"],
        "paired_ratio_median": statistics.median(paired),
        "paired_ratio_iqr": [quartiles[0], quartiles[2]],
        "allocator_step_median_s": statistics.median(allocator_times),
        "final_active_rank": adalora.allocator.active_rank(),
        "trainable_params": {m: sum(p.numel() for p in mod.trainable_parameters()) for m, mod in modules.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

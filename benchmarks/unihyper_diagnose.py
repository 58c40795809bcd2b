"""UniHyperLoRA learning diagnosis: the projectors' singular values, gradient norms per part and a
one-batch fit against LoRA, on real sst2 sentences; prints one JSON line per measurement.

    OMP_NUM_THREADS=1 python benchmarks/unihyper_diagnose.py --backbone minilm-l6 --steps 60
    OMP_NUM_THREADS=1 python benchmarks/unihyper_diagnose.py --projector-basis none   # the generator before issue 17

``spectrum``: singular values of ``P_in(d)`` at initialisation for the host's widths (top 4,
smallest, participation ratio ``(Σ s²)² / Σ s⁴``). ``grad_norms``: the L2 norm of the gradient
reaching U, V, ψ (generator), the mixer θ, δθ, the router φ and the head at steps 0, 1, 5, 20 and
the last, with the task loss, for AdamW on one fixed batch (``--rows`` sentences, ``--max-length``).
``lora``: the task loss of LoRA r=8 on the same batch (``--lora-lr``), the reference for "fits
a small batch to near-zero loss".
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch

from pefthub.data import SentenceClassificationDataModule
from pefthub.methods.lora import LoRAModule
from pefthub.methods.unihyperlora import PRESETS, UniHyperLoRAModule


def _parts(module: UniHyperLoRAModule) -> dict[str, list[torch.nn.Parameter]]:
    hyper = module.hyper
    return {
        "U": [hyper.atoms_U],
        "V": [hyper.atoms_V],
        "psi": list(hyper.generator.parameters()) if hyper.generator is not None else [],
        "mixer": list(hyper.mixer.base_parameters().values()),
        "delta": [hyper.mixer.delta],
        "router": list(hyper.router.parameters()),
        "head": list(module.head.parameters()),
    }


def _norm(params) -> float:
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params if p.grad is not None))


def _fit(module, batch, lr: float, steps: int, record=None) -> list[float]:
    module.train()
    optimizer = torch.optim.AdamW(module.trainable_parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        loss = module.task_loss(module(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        if record is not None and step in {0, 1, 5, 20, steps - 1}:
            record(step, float(loss))
        optimizer.step()
        losses.append(float(loss))
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--projector-basis", choices=("fourier", "none"), default="fourier")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-lr", type=float, default=5e-4, help="0 skips the LoRA reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    data = SentenceClassificationDataModule(backbone=args.backbone, task="sst2", max_length=args.max_length,
                                            batch_size=args.rows, train_limit=args.rows, eval_limit=8)
    data.prepare_data()
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(args.seed)
    module = UniHyperLoRAModule(backbone=args.backbone, head_dropout=0.0, max_flop_overhead=None,
                                projector_basis=args.projector_basis, **PRESETS[args.preset])
    widths = sorted({module.backbone.config.hidden_size, module.backbone.config.intermediate_size})
    with torch.no_grad():
        for d in widths:
            singular = torch.linalg.svdvals(module.hyper.projectors(d)[1])
            energy = singular.pow(2) / singular.pow(2).sum()
            print(json.dumps({"what": "spectrum", "projector_basis": args.projector_basis, "width": d,
                              "top": [round(float(s), 3) for s in singular[:4]], "smallest": round(float(singular[-1]), 4),
                              "participation_ratio": round(float(1 / energy.pow(2).sum()), 1)}), flush=True)

    def record(step: int, loss: float) -> None:
        norms = {k: round(_norm(v), 6) for k, v in _parts(module).items()}
        print(json.dumps({"what": "grad_norms", "preset": args.preset, "projector_basis": args.projector_basis,
                          "lr": args.lr, "step": step, "loss": round(loss, 5), **norms}), flush=True)

    losses = _fit(module, batch, args.lr, args.steps, record)
    print(json.dumps({"what": "unihyperlora", "preset": args.preset, "projector_basis": args.projector_basis,
                      "lr": args.lr, "steps": args.steps, "final_loss": losses[-1]}), flush=True)
    if args.lora_lr > 0:
        torch.manual_seed(args.seed)
        lora = LoRAModule(backbone=args.backbone, rank=8, alpha=16, dropout=0.0, head_dropout=0.0)
        losses = _fit(lora, batch, args.lora_lr, args.steps)
        print(json.dumps({"what": "lora", "lr": args.lora_lr, "steps": args.steps, "final_loss": losses[-1]}), flush=True)


if __name__ == "__main__":
    main()

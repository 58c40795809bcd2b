"""UniHyperLoRA transfer figures: train on a source host, save (quantised), load into derived
hosts zero-shot, then tune δθ only; print one JSON line per measurement.

    flock /tmp/pefthub-heavy.lock python benchmarks/unihyper_transfer.py \
        --source minilm-l6 --targets minilm-l6:drop-every-other minilm-l6:ffn=0.5 minilm-l6:hidden=288 \
        --train-limit 4000 --epochs 1 --delta-steps 100 --out runs/unihyper-transfer

Accuracy is on the builtin sst2 test split (the real GLUE SST-2 dev set, 872 sentences).

``--satlora also`` adds the per-host baseline: SAT-LoRA (same atoms, mixer, router and head,
projectors learned per width, no generator) trained directly on the source and on every target
with the same data, epochs and learning rate (``what: "satlora"`` records: accuracy before and
after the quantised save/load, adapter bytes, FLOP overhead). ``--satlora only`` skips the
UniHyperLoRA transfer. The default (``off``) measures UniHyperLoRA alone, as before.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from functools import partial
from pathlib import Path

import torch
from lightning.pytorch import Trainer, seed_everything

from pefthub.budget import flop_overhead
from pefthub.callbacks.transfer import DeltaTuning
from pefthub.data import SentenceClassificationDataModule
from pefthub.methods.satlora import SATLoRAModule
from pefthub.methods.unihyperlora import UniHyperLoRAModule


def _data(backbone: str, args) -> SentenceClassificationDataModule:
    return SentenceClassificationDataModule(
        backbone=backbone, task="sst2", max_length=args.max_length, batch_size=32, train_limit=args.train_limit
    )


def _trainer(**kwargs) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, **kwargs)


def _test(module, data) -> float:
    return float(_trainer().test(module, datamodule=data, verbose=False)[0]["test/accuracy"])


def _emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _satlora_per_host(host: str, args, out: Path) -> None:
    """Train SAT-LoRA directly on ``host`` (its byte budget is checked at fit start), test it,
    save it quantised, reload it into the same host and test again."""
    seed_everything(args.seed)
    adamw = partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0)
    module = SATLoRAModule(backbone=host, d0=args.satlora_d0, optimizer=adamw, lambda_delta=1e-3, max_flop_overhead=None)
    flops = flop_overhead(module, seq_len=128)
    data = _data(host, args)
    started = time.perf_counter()
    _trainer(max_epochs=args.epochs, limit_val_batches=0).fit(module, datamodule=data)
    train_s = time.perf_counter() - started
    module.eval()
    fp32_acc = _test(module, data)
    directory = out / "satlora" / host.replace(":", "_").replace("=", "-").replace(",", "-")
    module.save_adapter(directory)
    size = sum((directory / n).stat().st_size for n in ("adapter.safetensors", "adapter_config.json"))
    reloaded = SATLoRAModule(backbone=host, init_adapter=str(directory), max_flop_overhead=None).eval()
    config = module.backbone.config
    _emit({"what": "satlora", "host": host, "hidden": config.hidden_size, "layers": config.num_hidden_layers,
           "ffn": config.intermediate_size, "d0": args.satlora_d0, "widths": module.hyper.config()["widths"],
           "train_examples": args.train_limit, "epochs": args.epochs, "train_s": round(train_s, 1),
           "test_accuracy_fp32": fp32_acc, "test_accuracy": _test(reloaded, data), "adapter_bytes": size,
           "adapter_params": sum(p.numel() for p in module.hyper.parameters()), "flop_overhead": flops["overhead"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="minilm-l6")
    parser.add_argument("--targets", nargs="*", default=["minilm-l6:drop-every-other", "minilm-l6:ffn=0.5", "minilm-l6:hidden=288"])
    parser.add_argument("--train-limit", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--delta-steps", type=int, default=100)
    parser.add_argument("--delta-lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/unihyper-transfer")
    parser.add_argument("--satlora", choices=("off", "also", "only"), default="off",
                        help="also train the SAT-LoRA baseline on every host (only: skip UniHyperLoRA)")
    parser.add_argument("--satlora-d0", type=int, default=232,
                        help="SAT-LoRA's d0 (232: the largest multiple of 8 within 1 MB on MiniLM-L6)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    if args.satlora != "off":
        for host in [args.source, *args.targets]:
            _satlora_per_host(host, args, out)
        if args.satlora == "only":
            return
    seed_everything(args.seed)

    adamw = partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0)
    source = UniHyperLoRAModule(backbone=args.source, optimizer=adamw, lambda_delta=1e-3, max_flop_overhead=None)
    flops = flop_overhead(source, seq_len=128)
    flops_train = flop_overhead(source, seq_len=128, amortized=False)
    _emit({"what": "flops", "host": args.source, "seq_len": 128, **flops, "per_forward_overhead": flops_train["overhead"]})
    data = _data(args.source, args)
    started = time.perf_counter()
    _trainer(max_epochs=args.epochs, limit_val_batches=0).fit(source, datamodule=data)
    train_s = time.perf_counter() - started
    source.eval()
    fp32_acc = _test(source, data)
    source.save_adapter(out / "adapter")
    size = sum((out / "adapter" / n).stat().st_size for n in ("adapter.safetensors", "adapter_config.json"))
    _emit({"what": "source", "host": args.source, "train_examples": args.train_limit, "epochs": args.epochs,
           "train_s": round(train_s, 1), "test_accuracy_fp32": fp32_acc, "adapter_bytes": size})

    for host in [args.source, *args.targets]:
        seed_everything(args.seed)
        module = UniHyperLoRAModule(backbone=host, init_adapter=str(out / "adapter"), max_flop_overhead=None).eval()
        data = _data(host, args)
        zero_shot = _test(module, data)
        with module.hyper.bypassed():  # the adapter's head on the bare host: what the adapter itself adds
            head_only = _test(module, data)
        record = {"what": "transfer", "host": host, "hidden": module.backbone.config.hidden_size,
                  "layers": module.backbone.config.num_hidden_layers, "ffn": module.backbone.config.intermediate_size,
                  "zero_shot_accuracy": zero_shot, "head_only_accuracy": head_only,
                  "flop_overhead": flop_overhead(module, seq_len=128)["overhead"]}
        if host != args.source and args.delta_steps > 0:
            module.optimizer_factory = partial(torch.optim.AdamW, lr=args.delta_lr, weight_decay=0.0)
            module.train()
            _trainer(max_epochs=-1, limit_val_batches=0, callbacks=[DeltaTuning(steps=args.delta_steps)]).fit(module, datamodule=data)
            module.eval()
            record.update({"delta_steps": args.delta_steps, "after_delta_accuracy": _test(module, data)})
        _emit(record)


if __name__ == "__main__":
    main()

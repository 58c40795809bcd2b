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

``--seeds 0 1 2`` repeats everything per seed (adapters under ``<out>/seed<N>/``). Targets may be
any backbone, including the other model family (``--source minilm-l6 --targets mpnet-base``):
the adapter file holds nothing host-specific, each host tokenises with its own tokenizer.

``--new-tasks amazon ner boolq`` adds the cross-task transfer: for every host in
``--new-task-hosts`` (default: the source and the targets) the sst2 adapter is loaded without its
head, a new head for the task is trained together with δθ for ``--delta-steps`` steps
(``what: "new_task"``, ``mode: "delta+head"``), and, as the reference, a new head alone on the bare
host for the same steps (``mode: "head_only"``, adapter bypassed: a linear probe). The new head's
parameter count is reported separately (``new_head_params``) from δθ's (``delta_params``).

``--preset default|spec`` picks the source's settings from
:data:`pefthub.methods.unihyperlora.PRESETS` (``spec``: the proposal's ≈4 kB generator, δθ frozen
at the source, a gate that can fire fewer than 2 atoms, λ_F = 0.01). Every δθ phase (transfer
and new task) uses ``--lambda-delta`` (λ_Q, default 1e-3 as in ``configs/unihyperlora/delta_sst2.yaml``;
before issue 17 these phases ran with λ_Q = 0). Source records carry the preset and the
measured mean number of firing atoms per token (``atoms_per_token``, on the test set).

Every record is also appended to ``<out>/records.jsonl``.
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

from pefthub.budget import adapter_file_bytes, flop_overhead
from pefthub.callbacks.transfer import DeltaTuning
from pefthub.data import (
    PairClassificationDataModule,
    SentenceClassificationDataModule,
    TokenClassificationDataModule,
)
from pefthub.data.builtin_tasks import manifest
from pefthub.methods.satlora import SATLoRAModule
from pefthub.methods.unihyperlora import PRESETS, UniHyperLoRAModule


def _data(backbone: str, args, task: str = "sst2"):
    """The builtin ``task``'s data module for ``backbone``: token classification for a task whose
    manifest declares ``tokens_field``, sentence pairs for ``text_fields``, single sentences otherwise."""
    declared = manifest(task)
    if "tokens_field" in declared:
        data_class = TokenClassificationDataModule
    elif "text_fields" in declared:
        data_class = PairClassificationDataModule
    else:
        data_class = SentenceClassificationDataModule
    return data_class(backbone=backbone, task=task, max_length=args.max_length, batch_size=32, train_limit=args.train_limit or None)


def _trainer(root: Path | None = None, accelerator: str = "cpu", **kwargs) -> Trainer:
    """A quiet trainer (on the CPU unless ``--accelerator`` says otherwise). A fit writes its final adapter (the methods' ``SaveAdapter``) under
    ``root/adapter``: every fit gets its own ``root`` so that nothing lands in the working
    directory and no fit overwrites the source adapter the transfers load."""
    return Trainer(accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   default_root_dir=root, **kwargs)


def _slug(host: str) -> str:
    return host.replace(":", "_").replace("=", "-").replace(",", "-")


def _test(module, data, accelerator: str = "cpu") -> float:
    """The task's primary test metric (accuracy for sst2, entity F1 for ner)."""
    return float(_trainer(accelerator=accelerator).test(module, datamodule=data, verbose=False)[0][f"test/{data.primary_metric}"])


def _emit(args, record: dict) -> None:
    """Print ``record`` as one JSON line and append it to ``args.records``."""
    line = json.dumps(record)
    print(line, flush=True)
    with open(args.records, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


def _satlora_per_host(host: str, args, out: Path) -> None:
    """Train SAT-LoRA directly on ``host`` (its byte budget is checked at fit start), test it,
    save it quantised, reload it into the same host and test again."""
    seed_everything(args.seed)
    adamw = partial(torch.optim.AdamW, lr=args.satlora_lr, weight_decay=0.0)
    module = SATLoRAModule(backbone=host, d0=args.satlora_d0, optimizer=adamw, lambda_delta=1e-3, max_flop_overhead=None)
    flops = flop_overhead(module, seq_len=128)
    data = _data(host, args)
    started = time.perf_counter()
    _trainer(accelerator=args.accelerator, root=out / "fits" / f"satlora-{_slug(host)}", max_epochs=args.epochs, limit_val_batches=0).fit(module, datamodule=data)
    train_s = time.perf_counter() - started
    module.eval()
    fp32_acc = _test(module, data, args.accelerator)
    directory = out / "satlora" / _slug(host)
    module.save_adapter(directory)
    size = adapter_file_bytes(directory)
    reloaded = SATLoRAModule(backbone=host, init_adapter=str(directory), max_flop_overhead=None).eval()
    config = module.backbone.config
    _emit(args, {"what": "satlora", "seed": args.seed, "host": host, "hidden": config.hidden_size, "layers": config.num_hidden_layers,
           "ffn": config.intermediate_size, "d0": args.satlora_d0, "lr": args.satlora_lr, "widths": module.hyper.config()["widths"],
           "train_examples": args.train_limit or None, "epochs": args.epochs, "train_s": round(train_s, 1),
           "test_accuracy_fp32": fp32_acc, "test_accuracy": _test(reloaded, data, args.accelerator), "adapter_bytes": size,
           "adapter_params": sum(p.numel() for p in module.hyper.parameters()), "flop_overhead": flops["overhead"]})


def _train_source(args, out: Path) -> None:
    """Train UniHyperLoRA on the source host (sst2) and save it quantised to ``<out>/adapter``."""
    seed_everything(args.seed)
    adamw = partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0)
    source = UniHyperLoRAModule(backbone=args.source, optimizer=adamw, max_flop_overhead=None, **PRESETS[args.preset])
    flops = flop_overhead(source, seq_len=128)
    flops_train = flop_overhead(source, seq_len=128, amortized=False)
    _emit(args, {"what": "flops", "seed": args.seed, "host": args.source, "seq_len": 128, **flops,
           "per_forward_overhead": flops_train["overhead"]})
    data = _data(args.source, args)
    started = time.perf_counter()
    _trainer(accelerator=args.accelerator, root=out / "fits" / "source", max_epochs=args.epochs, limit_val_batches=0).fit(source, datamodule=data)
    train_s = time.perf_counter() - started
    source.eval()
    fp32_acc = _test(source, data, args.accelerator)
    source.save_adapter(out / "adapter")
    size = adapter_file_bytes(out / "adapter")
    _emit(args, {"what": "source", "seed": args.seed, "host": args.source, "preset": args.preset, "lr": args.lr,
           "train_examples": args.train_limit or None, "epochs": args.epochs, "train_s": round(train_s, 1),
           "test_accuracy_fp32": fp32_acc, "adapter_bytes": size, "atoms_per_token": _atoms_per_token(source, data)})


def _atoms_per_token(module, data) -> float:
    """Mean number of firing atoms per real token over the test set (``test/atoms_per_token``
    is not logged by test steps, so it is measured here batch by batch)."""
    values = []
    with torch.no_grad():
        for batch in data.test_dataloader():
            module(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            values.append(float(module.hyper.active_atoms()))
    return sum(values) / max(1, len(values))


def _transfer(hosts: list[str], args, out: Path) -> None:
    """Load the quantised source adapter into every host zero-shot, then (except on the source
    host) tune δθ only for ``delta_steps`` steps."""
    for host in hosts:
        seed_everything(args.seed)
        module = UniHyperLoRAModule(backbone=host, init_adapter=str(out / "adapter"), lambda_delta=args.lambda_delta,
                                    max_flop_overhead=None).eval()
        data = _data(host, args)
        zero_shot = _test(module, data, args.accelerator)
        with module.hyper.bypassed():  # the adapter's head on the bare host: what the adapter itself adds
            head_only = _test(module, data, args.accelerator)
        record = {"what": "transfer", "seed": args.seed, "host": host, "hidden": module.backbone.config.hidden_size,
                  "layers": module.backbone.config.num_hidden_layers, "ffn": module.backbone.config.intermediate_size,
                  "zero_shot_accuracy": zero_shot, "head_only_accuracy": head_only,
                  "flop_overhead": flop_overhead(module, seq_len=128)["overhead"]}
        if host != args.source and args.delta_steps > 0:
            module.optimizer_factory = partial(torch.optim.AdamW, lr=args.delta_lr, weight_decay=0.0)
            module.train()
            started = time.perf_counter()
            _trainer(accelerator=args.accelerator, root=out / "fits" / f"delta-{_slug(host)}", max_epochs=-1, limit_val_batches=0,
                     callbacks=[DeltaTuning(steps=args.delta_steps)]).fit(module, datamodule=data)
            module.eval()
            record.update({"delta_steps": args.delta_steps, "lambda_delta": args.lambda_delta, "delta_s": round(time.perf_counter() - started, 1),
                           "after_delta_accuracy": _test(module, data, args.accelerator)})
        _emit(args, record)


def _new_task(host: str, task: str, args, out: Path) -> None:
    """Cross-task transfer of the sst2 adapter to ``task`` on ``host``: a new head + δθ for
    ``delta_steps`` steps, against a new head alone on the bare host (adapter bypassed)."""
    data = _data(host, args, task)
    data.prepare_data()
    data.setup("fit")
    for mode in ("delta+head", "head_only"):
        seed_everything(args.seed)
        module = UniHyperLoRAModule(
            backbone=host, num_labels=data.num_labels, task_type=data.task_type, label_names=data.label_names,
            init_adapter=str(out / "adapter"), init_head=False, lambda_delta=args.lambda_delta, max_flop_overhead=None,
            optimizer=partial(torch.optim.AdamW, lr=args.delta_lr, weight_decay=0.0),
        )
        started = time.perf_counter()
        if mode == "delta+head":
            tuning = DeltaTuning(steps=args.delta_steps, train_head=True)
            _trainer(accelerator=args.accelerator, root=out / "fits" / f"{task}-delta+head-{_slug(host)}", max_epochs=-1, limit_val_batches=0,
                     callbacks=[tuning]).fit(module, datamodule=data)
            sizes = dict(tuning.sizes)
            module.eval()
            metric = _test(module, data, args.accelerator)
        else:
            module.requires_grad_(False)
            module.head.requires_grad_(True)
            sizes = {"budget/delta_params": 0, "budget/new_head_params": sum(p.numel() for p in module.head.parameters())}
            with module.hyper.bypassed():
                _trainer(accelerator=args.accelerator, root=out / "fits" / f"{task}-head_only-{_slug(host)}", max_steps=args.delta_steps,
                         limit_val_batches=0).fit(module, datamodule=data)
                module.eval()
                metric = _test(module, data, args.accelerator)
        _emit(args, {"what": "new_task", "seed": args.seed, "host": host, "task": task, "mode": mode,
               "primary_metric": data.primary_metric, "test_metric": metric, "steps": args.delta_steps,
               "train_s": round(time.perf_counter() - started, 1),
               "delta_params": sizes["budget/delta_params"], "new_head_params": sizes["budget/new_head_params"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="minilm-l6")
    parser.add_argument("--targets", nargs="*", default=["minilm-l6:drop-every-other", "minilm-l6:ffn=0.5", "minilm-l6:hidden=288"])
    parser.add_argument("--train-limit", type=int, default=4000, help="training rows drawn (0: every row, the full schedule)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3, help="UniHyperLoRA's lr (configs/unihyperlora/*sst2.yaml: 3e-3 since issue 17)")
    parser.add_argument("--satlora-lr", type=float, default=1e-3, help="SAT-LoRA's lr (configs/satlora/sst2.yaml)")
    parser.add_argument("--delta-steps", type=int, default=100)
    parser.add_argument("--delta-lr", type=float, default=1e-2)
    parser.add_argument("--lambda-delta", type=float, default=1e-3, help="λ_Q of every δθ phase (transfer and new task)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="the source's UniHyperLoRA preset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator of every fit and test: cpu (default) or gpu")
    parser.add_argument("--out", default="runs/unihyper-transfer")
    parser.add_argument("--satlora", choices=("off", "also", "only"), default="off",
                        help="also train the SAT-LoRA baseline on every host (only: skip UniHyperLoRA)")
    parser.add_argument("--satlora-d0", type=int, default=232,
                        help="SAT-LoRA's d0 (232: the largest multiple of 8 within 1 MB on MiniLM-L6)")
    parser.add_argument("--new-tasks", nargs="*", default=[], help="builtin tasks the sst2 adapter is transferred to with a new head")
    parser.add_argument("--new-task-hosts", nargs="*", default=None, help="hosts for --new-tasks (default: source and targets)")
    parser.add_argument("--reuse-source", action="store_true",
                        help="reuse <out>/seed<N>/adapter from an earlier run instead of training the source again "
                             "(the transfer then covers only --targets)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    args.records = root / "records.jsonl"
    for seed in args.seeds:
        args.seed = seed
        out = root / f"seed{seed}"
        if args.satlora != "off":
            for host in [args.source, *args.targets]:
                _satlora_per_host(host, args, out)
            if args.satlora == "only":
                continue
        if not args.reuse_source:
            _train_source(args, out)
            _transfer([args.source, *args.targets], args, out)
        elif not (out / "adapter").is_dir():
            raise SystemExit(f"--reuse-source: {out / 'adapter'} does not exist; run without --reuse-source first")
        else:
            _transfer(args.targets, args, out)
        for task in args.new_tasks:
            for host in args.new_task_hosts if args.new_task_hosts is not None else [args.source, *args.targets]:
                _new_task(host, task, args, out)


if __name__ == "__main__":
    main()

"""Training step time and memory of every method against HF PEFT and the frozen-backbone floor,
measured side by side in one process.

Variants (same backbone, batch, sequence length, task head, AdamW, train mode):

- ``floor``            frozen backbone, forward + backward down to the input embeddings only
                       (``inputs_embeds`` requires grad; no weight gradient in the backbone):
                       the least any adapter method can cost;
- ``pefthub_lora``     pefthub LoRA, r 8, alpha 16, dropout 0.05, the family's default targets;
- ``hf_peft_lora``     HF PEFT ``LoraConfig`` with the same r, alpha, dropout and targets;
- ``pefthub_adalora``  pefthub AdaLoRA 12 -> 8 (orthogonality penalty, rank allocation each step);
- ``hf_peft_adalora``  HF PEFT ``AdaLoraConfig`` with the same settings; its orthogonality penalty
                       is added to the loss here the way ``AdaLoraModel.forward`` adds it (it
                       does so only for models that return ``.loss``), and
                       ``update_and_allocate`` runs after each optimiser step;
- ``fw_lora``          FW-LoRA after its warm-up (the Fisher-weighted penalty, its gradient in
                       closed form);
- ``iw_lora``          IW-LoRA after its calibration (gradient-norm importances, the same penalty);
- ``glora``            GLoRA after its reallocation (rank pattern from a short real warm-up);
- ``unihyperlora``     UniHyperLoRA (default sizes; budget loss in the loss);
- ``full_finetune``    every backbone weight trained;
- ``<variant>_compiled`` (opt-in, ``--variants``): ``pefthub_lora``, ``pefthub_adalora`` or
                       ``unihyperlora`` with ``model.compile: true`` (``torch.compile`` of the
                       forward; the untimed warm-up rounds absorb the compilation).

A step is forward, loss (+ the method's penalty), backward, AdamW step, the method's per-step
bookkeeping (AdaLoRA's allocation) and ``zero_grad``. Rounds run every variant once on the
same batch (fixed-length random token ids), rotating the order each round so drift falls on
all of them; the first ``--warmup`` rounds are not timed. Reported: median step time with its
quartiles, the ratio to the floor and to the matching HF PEFT variant, the median of paired
(same round) ratios, trainable parameters, the memory the variant's parameters, gradients and
AdamW states take (``state_mb``, counted exactly) and the transient memory of one extra step
(``peak_step_mb``: CUDA ``max_memory_allocated`` above what was allocated before the step;
CPU: the peak resident set size above the one before the step, sampled every 0.5 ms after
``malloc_trim`` — approximate).

Run (CPU, one thread; then also on a GPU with bf16 autocast):

    flock /tmp/pefthub-heavy.lock python benchmarks/step_time.py --backbone minilm-l6 \
        --batch-size 32 --seq-len 128 --steps 20 --out runs/bench/step_time_cpu
    python benchmarks/step_time.py --device cuda --dtype bf16 --threads 8 --out runs/bench/step_time_cuda

Writes ``<out>.csv`` and ``<out>.png`` and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import ctypes
import gc
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from pefthub.backbones import default_targets  # noqa: E402
from pefthub.budget import example_inputs  # noqa: E402
from pefthub.methods import (  # noqa: E402
    AdaLoRAModule,
    GLoRAModule,
    ImportanceLoRAModule,
    LoRAModule,
    UniHyperLoRAModule,
)
from pefthub.methods.base import PEFTModule  # noqa: E402
from pefthub.methods.hf_peft import hf_adalora_orth_penalty  # noqa: E402
from pefthub.opcount import OpCount, OpCounter  # noqa: E402

VARIANTS = (
    "floor", "pefthub_lora", "hf_peft_lora", "pefthub_adalora", "hf_peft_adalora",
    "fw_lora", "iw_lora", "glora", "unihyperlora", "full_finetune",
)
# opt-in (not in the default list: compiling takes a minute on a CPU)
OPTIONAL_VARIANTS = ("pefthub_lora_compiled", "pefthub_adalora_compiled", "unihyperlora_compiled")
HF_REFERENCE = {"pefthub_lora": "hf_peft_lora", "pefthub_adalora": "hf_peft_adalora"}
LORA = {"rank": 8, "alpha": 16, "dropout": 0.05, "fast_cpu_kernels": True}
ADALORA = {"init_rank": 12, "target_rank": 8, "alpha": 24, "dropout": 0.05, "tinit": 0.1, "tfinal": 0.3,
           "delta_t": 1, "beta1": 0.85, "beta2": 0.85, "orth_reg_weight": 0.1, "fast_cpu_kernels": True}


class HeadOnly(PEFTModule):
    """The shared backbone + head with no adapter (the base for floor, full fine-tune and the
    HF PEFT variants, whose adapters HF PEFT inserts)."""

    method_name = "none"


class Floor(HeadOnly):
    """Frozen backbone; the backward pass reaches the input embeddings and stops there."""

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        embeds = self.backbone.get_input_embeddings()(input_ids).detach().requires_grad_(True)
        hidden = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        return self.head(self.head_dropout(self.pool(hidden, attention_mask)))


class Variant:
    """One method under test: its module, optimiser and per-step extras."""

    def __init__(self, name: str, module: nn.Module, lr: float = 5e-4,
                 extra_loss: Callable[[], torch.Tensor | None] | None = None,
                 after_step: Callable[[int], None] | None = None) -> None:
        self.name = name
        self.module = module
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.01)
        self.extra_loss = extra_loss or getattr(module, "regularization", lambda: None)
        self.after_step = after_step
        self.steps_done = 0
        self.times: list[float] = []

    def step(self, batch: dict[str, torch.Tensor], autocast: contextlib.AbstractContextManager,
             counter: OpCounter | None = None) -> None:
        """One training step; with ``counter``, the ops of everything but the optimiser step
        and ``zero_grad`` are counted (forward, loss, penalty, backward, the method's
        per-step bookkeeping)."""
        counting = counter if counter is not None else contextlib.nullcontext()
        with counting:
            with autocast:
                logits = self.module(batch["input_ids"], batch["attention_mask"])
                loss = F.cross_entropy(logits.float(), batch["labels"])
                extra = self.extra_loss()
                if extra is not None:
                    loss = loss + extra.float()
            loss.backward()
            if isinstance(self.module, PEFTModule):
                self.module.apply_penalty_gradients()  # what on_after_backward does in a Lightning run
        self.optimizer.step()
        if self.after_step is not None:
            with counting:
                self.after_step(self.steps_done)
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_done += 1

    def state_bytes(self) -> int:
        """Parameters (all) + gradients and two AdamW moments (trainable ones), in bytes."""
        every = sum(p.numel() * p.element_size() for p in self.module.parameters())
        trainable = sum(p.numel() * p.element_size() for p in self.params)
        return every + 3 * trainable


def build_variants(names: list[str], backbone: str, total_steps: int, glora_batches: list[dict], autocast,
                   device: torch.device, lora: dict | None = None, adalora: dict | None = None,
                   unihyper: dict | None = None) -> list[Variant]:
    """The selected variants, on ``device``, in the order of :data:`VARIANTS`; ``lora`` and
    ``adalora`` override :data:`LORA` / :data:`ADALORA` (e.g. the adapter dropout), ``unihyper``
    adds UniHyperLoRA arguments (e.g. ``update_impl``)."""
    lora_kw = {**LORA, **(lora or {})}
    adalora_kw = {**ADALORA, **(adalora or {})}
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    variants = []
    for name in names:
        if name == "floor":
            variant = Variant(name, Floor(backbone=backbone).to(device))
        elif name.endswith("_compiled"):
            (base,) = build_variants([name.removesuffix("_compiled")], backbone, total_steps, glora_batches, autocast,
                                     device, lora={**(lora or {}), "compile": True},
                                     adalora={**(adalora or {}), "compile": True}, unihyper={**(unihyper or {}), "compile": True})
            variant = Variant(name, base.module, lr=base.optimizer.param_groups[0]["lr"], extra_loss=base.extra_loss,
                              after_step=base.after_step)
        elif name == "full_finetune":
            module = HeadOnly(backbone=backbone)
            module.backbone.requires_grad_(True)
            variant = Variant(name, module.to(device), lr=2e-5)
        elif name == "pefthub_lora":
            variant = Variant(name, LoRAModule(backbone=backbone, **lora_kw).to(device))
        elif name == "hf_peft_lora":
            module = HeadOnly(backbone=backbone)
            targets = list(default_targets(module.family))
            config = LoraConfig(r=lora_kw["rank"], lora_alpha=lora_kw["alpha"], lora_dropout=lora_kw["dropout"], target_modules=targets)
            module.backbone = get_peft_model(module.backbone, config)
            variant = Variant(name, module.to(device))
        elif name == "pefthub_adalora":
            module = AdaLoRAModule(backbone=backbone, **adalora_kw).to(device)
            module.allocator.set_total_steps(total_steps)
            module.allocator.check_finite = False  # as in a Lightning run without a loss scaler (fp32, bf16)
            variant = Variant(name, module, after_step=module.allocator.step)
        elif name == "hf_peft_adalora":
            module = HeadOnly(backbone=backbone)
            targets = list(default_targets(module.family))
            tinit, tfinal = int(adalora_kw["tinit"] * total_steps), max(1, int(adalora_kw["tfinal"] * total_steps))
            config = AdaLoraConfig(
                init_r=adalora_kw["init_rank"], target_r=adalora_kw["target_rank"], lora_alpha=adalora_kw["alpha"],
                lora_dropout=adalora_kw["dropout"], target_modules=targets, tinit=tinit, tfinal=tfinal,
                deltaT=adalora_kw["delta_t"], beta1=adalora_kw["beta1"], beta2=adalora_kw["beta2"],
                orth_reg_weight=adalora_kw["orth_reg_weight"], total_step=total_steps,
            )
            peft_model = get_peft_model(module.backbone, config)
            module.backbone = peft_model
            module.to(device)
            variant = Variant(
                name, module,
                extra_loss=lambda m=peft_model: hf_adalora_orth_penalty(m, adalora_kw["orth_reg_weight"]),
                after_step=lambda step, m=peft_model: m.base_model.update_and_allocate(step),
            )
        elif name == "fw_lora":
            module = ImportanceLoRAModule(backbone=backbone, **lora_kw, importance_source="fisher", penalty_weight=1e-3).to(device)
            module.importance_estimator.attach(module.importance_layers())
            module.importance_estimator.freeze()  # the penalty's cost does not depend on the values
            module.on_importance_frozen()
            variant = Variant(name, module)
        elif name == "iw_lora":
            module = ImportanceLoRAModule(backbone=backbone, **lora_kw, importance_source="grad_norm", ema_beta=None,
                                          penalty_weight=1e-3, penalty_exponent=2.0).to(device)
            module.importance_estimator.attach(module.importance_layers())
            module.importance_estimator.freeze()
            module.on_importance_frozen()
            variant = Variant(name, module)
        elif name == "glora":
            module = GLoRAModule(backbone=backbone, **lora_kw, warmup_steps=len(glora_batches)).to(device)
            module.importance_estimator.attach(module.importance_layers())
            warm = Variant("glora_warmup", module,
                           after_step=lambda step, m=module: m.importance_estimator.observe_step())
            for batch in glora_batches:
                warm.step(batch, autocast)
            module.importance_estimator.freeze()
            module.reallocate()
            variant = Variant(name, module)
        elif name == "unihyperlora":
            module = UniHyperLoRAModule(backbone=backbone, lambda_delta=1e-3, **(unihyper or {})).to(device)
            variant = Variant(name, module, lr=1e-3)
        else:
            raise ValueError(f"unknown variant {name!r}; expected some of {VARIANTS + OPTIONAL_VARIANTS}")
        variant.module.train()
        variants.append(variant)
    return variants


# ---------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_step_bytes(variant: Variant, batch, autocast, device: torch.device) -> float:
    """Transient memory of one step above the memory held before it (see the module docstring)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        variant.step(batch, autocast)
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated() - before)
    if not Path("/proc/self/statm").exists():
        return float("nan")
    _malloc_trim()
    before = _rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        variant.step(batch, autocast)
    finally:
        done.set()
        sampler.join()
    return float(max(peak[0], _rss_bytes()) - before)


# ---------------------------------------------------------------------- op counts


def count_step(variant: Variant, batch: dict, autocast: contextlib.AbstractContextManager) -> OpCount:
    """Aten ops and host syncs of one training step of ``variant`` (see :meth:`Variant.step`)."""
    counter = OpCounter()
    variant.step(batch, autocast, counter)
    return counter.result


# ---------------------------------------------------------------------- timing


def run_rounds(variants: list[Variant], batches: list[dict], warmup: int, steps: int,
               autocast_factory: Callable[[], contextlib.AbstractContextManager],
               synchronize: Callable[[], None] = lambda: None,
               clock: Callable[[], float] = time.perf_counter) -> dict[str, OpCount]:
    """``warmup + steps`` rounds of one step per variant on ``batches[round]``, the order
    rotated by one each round (drift falls on every variant alike). Appends each timed step's
    ``clock()`` duration to ``variant.times``: not the ``warmup`` rounds, nor the middle round
    (``warmup + steps // 2`` when ``steps > 1``), which is op-counted instead (AdaLoRA is then
    inside its budget reduction; a compiled variant is timed, not counted, there). Returns the
    op counts of that round."""
    count_round = warmup + steps // 2 if steps > 1 else -1
    counts = {}
    for index in range(warmup + steps):
        shift = index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            if index == count_round and not variant.name.endswith("_compiled"):
                counts[variant.name] = count_step(variant, batches[index], autocast_factory())
                continue
            synchronize()
            start = clock()
            variant.step(batches[index], autocast_factory())
            synchronize()
            if index >= warmup and index != count_round:
                variant.times.append(clock() - start)
    return counts


def timing_columns(variants: list[Variant]) -> dict[str, dict[str, float]]:
    """Per variant, the CSV's timing columns: timed steps, median and quartiles of its step
    times, and two ratios each to ``floor`` and to its HF PEFT reference (:data:`HF_REFERENCE`):
    the ratio of medians, median(t) / median(t_ref), and the paired one, median over rounds of
    t_i / t_ref,i (robust to drift that hits both in the same round). NaN where the reference
    did not run."""
    medians = {v.name: statistics.median(v.times) for v in variants}
    by_name = {v.name: v for v in variants}
    columns = {}
    for variant in variants:
        times = sorted(variant.times)
        quart = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0], times[0], times[0]]
        reference = HF_REFERENCE.get(variant.name)
        columns[variant.name] = {
            "timed_steps": len(times),
            "median_step_s": medians[variant.name], "p25_step_s": quart[0], "p75_step_s": quart[2],
            "ratio_to_floor": medians[variant.name] / medians["floor"] if "floor" in medians else float("nan"),
            "paired_ratio_to_floor": _paired(variant, by_name.get("floor")),
            "ratio_to_hf_peft": medians[variant.name] / medians[reference] if reference in medians else float("nan"),
            "paired_ratio_to_hf_peft": _paired(variant, by_name.get(reference)) if reference else float("nan"),
        }
    return columns


def ratio_summary(variants: list[Variant]) -> dict[str, Any]:
    """The headline ratios of the printed summary: ratios of median step times (``None`` where
    either variant did not run) and, under ``paired``, the paired ratios (NaN likewise)."""
    medians = {v.name: statistics.median(v.times) for v in variants}
    by_name = {v.name: v for v in variants}

    def ratio(a: str, b: str) -> float | None:
        return medians[a] / medians[b] if a in medians and b in medians else None

    return {
        "pefthub_lora_over_hf_peft_lora": ratio("pefthub_lora", "hf_peft_lora"),
        "pefthub_lora_over_floor": ratio("pefthub_lora", "floor"),
        "pefthub_adalora_over_pefthub_lora": ratio("pefthub_adalora", "pefthub_lora"),
        "pefthub_adalora_over_hf_peft_adalora": ratio("pefthub_adalora", "hf_peft_adalora"),
        "paired": {
            "pefthub_lora_over_hf_peft_lora": _paired(by_name.get("pefthub_lora"), by_name.get("hf_peft_lora")),
            "pefthub_lora_over_floor": _paired(by_name.get("pefthub_lora"), by_name.get("floor")),
            "pefthub_adalora_over_pefthub_lora": _paired(by_name.get("pefthub_adalora"), by_name.get("pefthub_lora")),
        },
    }


# ---------------------------------------------------------------------- main


def make_batch(backbone_module: nn.Module, batch_size: int, seq_len: int, seed: int, device: torch.device) -> dict:
    input_ids, attention_mask = example_inputs(backbone_module, seq_len=seq_len, batch_size=batch_size, seed=seed)
    labels = torch.randint(0, 2, (batch_size,), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), "labels": labels.to(device)}


def hardware(device: torch.device, threads: int) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return {"cpu": cpu, "cpu_cores": str(os.cpu_count()), "threads": str(threads), "gpu": gpu, "torch": torch.__version__}


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    medians = [r["median_step_s"] * 1e3 for r in rows]
    low = [m - r["p25_step_s"] * 1e3 for m, r in zip(medians, rows, strict=True)]
    high = [r["p75_step_s"] * 1e3 - m for m, r in zip(medians, rows, strict=True)]
    colors = ["#888888" if n == "floor" else "#d62728" if n.startswith("hf_peft") else "#1f77b4" for n in names]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    bars = ax_time.barh(names, medians, xerr=[low, high], color=colors)
    for bar, row in zip(bars, rows, strict=True):
        ax_time.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f"  {row['ratio_to_floor']:.2f}x floor", va="center", fontsize=8)
    ax_time.set_xlabel("median step time (ms; bars: quartiles)")
    ax_time.invert_yaxis()
    ax_time.set_title(title, fontsize=9)
    ax_mem.barh(names, [r["state_mb"] for r in rows], color="#bbbbbb", label="params + grads + AdamW states")
    ax_mem.barh(names, [r["peak_step_mb"] for r in rows], left=[r["state_mb"] for r in rows], color=colors, label="one step's transient peak")
    ax_mem.set_xlabel("memory (MB)")
    ax_mem.invert_yaxis()
    ax_mem.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20,
                        help="rounds after the warm-up (each variant once per round); the middle one is op-counted, the others timed")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--glora-warmup", type=int, default=5, help="steps of GLoRA's warm-up before its reallocation")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    parser.add_argument("--adapter-dropout", type=float, default=0.05,
                        help="dropout on the adapter input of the LoRA/AdaLoRA-family variants (pefthub and HF PEFT alike)")
    parser.add_argument("--native-dropout", action="store_true",
                        help="CPU: use torch's dropout kernel for the adapters (model.fast_cpu_kernels: false), as GPUs do")
    parser.add_argument("--unihyper-impl", default="auto", choices=["auto", "sparse", "dense"],
                        help="UniHyperLoRA's model.update_impl (auto: dense on CUDA, sparse elsewhere)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast to bfloat16")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant memory step")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--out", default="runs/bench/step_time", help="output path without extension (.csv, .png)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = sorted(set(names) - set(VARIANTS) - set(OPTIONAL_VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; expected some of {list(VARIANTS + OPTIONAL_VARIANTS)}")
    overrides = {"dropout": args.adapter_dropout, "fast_cpu_kernels": not args.native_dropout}
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    autocast_factory = (
        (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if args.dtype == "bf16" else contextlib.nullcontext
    )

    probe = HeadOnly(backbone=args.backbone)
    rounds = args.warmup + args.steps
    batches = [make_batch(probe.backbone, args.batch_size, args.seq_len, args.seed + i, device) for i in range(rounds + 1)]
    glora_batches = [make_batch(probe.backbone, args.batch_size, args.seq_len, 10_000 + i, device) for i in range(args.glora_warmup)]
    del probe
    # +1: the memory step runs after the timed rounds and is a step of each schedule too
    variants = build_variants(names, args.backbone, rounds + 2, glora_batches, autocast_factory(), device,
                              lora=overrides, adalora=overrides, unihyper={"update_impl": args.unihyper_impl})

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    counts = run_rounds(variants, batches, args.warmup, args.steps, autocast_factory, synchronize)
    peaks = {}
    for variant in variants:
        peaks[variant.name] = float("nan") if args.no_memory else peak_step_bytes(variant, batches[rounds], autocast_factory(), device)

    timing = timing_columns(variants)
    info = hardware(device, args.threads)
    rows = []
    for variant in variants:
        row = {
            "variant": variant.name,
            "backbone": args.backbone, "batch_size": args.batch_size, "seq_len": args.seq_len,
            "device": args.device, "dtype": args.dtype, "adapter_dropout": args.adapter_dropout,
            **timing[variant.name],
            "trainable_params": sum(p.numel() for p in variant.params),
            "state_mb": variant.state_bytes() / 2**20,
            "peak_step_mb": peaks[variant.name] / 2**20,
            "aten_ops": counts[variant.name].total if variant.name in counts else float("nan"),
            "host_syncs": counts[variant.name].host_syncs if variant.name in counts else float("nan"),
            "ops_ratio_to_pefthub_lora": (counts[variant.name].total / counts["pefthub_lora"].total
                                          if variant.name in counts and "pefthub_lora" in counts else float("nan")),
            **info,
        }
        rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if not args.no_plot:
        title = f"{args.backbone}, batch {args.batch_size} x {args.seq_len} tokens, {args.device} {args.dtype}, {args.threads} thread(s), {args.steps} rounds"
        plot(rows, out.with_suffix(".png"), title)

    summary = {
        "csv": str(out.with_suffix(".csv")),
        "median_step_ms": {name: round(columns["median_step_s"] * 1e3, 2) for name, columns in timing.items()},
        "aten_ops": {k: c.total for k, c in counts.items()},
        "host_syncs": {k: c.host_syncs for k, c in counts.items()},
        **ratio_summary(variants),
        **info,
    }
    print(json.dumps(summary, indent=2))
    return summary


def _paired(variant: Variant | None, reference: Variant | None) -> float:
    """Median over rounds of (this variant's time / the reference's time in the same round)."""
    if variant is None or reference is None:
        return float("nan")
    return statistics.median(a / b for a, b in zip(variant.times, reference.times, strict=True))


if __name__ == "__main__":
    main()

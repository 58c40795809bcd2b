"""Aten ops and host syncs per training step: the CPU-measurable proxy of GPU step time.

On a GPU a MiniLM-sized training step is launch-bound (≈ 20 µs per dispatched aten op measured
on an H200), so these counts are what makes a method fast or slow there. They do not depend
on the batch size, so a batch of 2 × 16 tokens on the real MiniLM-L6 structure (6 blocks, 36
adapted matrices) gives the same counts as the benchmark's 32 × 128. The step is the one of
``benchmarks/step_time.py`` (forward, loss, backward, closed-form penalty gradients, the
method's per-step bookkeeping; not the optimiser), with the kernels a GPU runs (adapter
dropout: torch's kernel, ``fast_cpu_kernels: false``; UniHyperLoRA: ``update_impl: dense``,
which ``auto`` picks on CUDA) and, for AdaLoRA, a step inside the budget-reduction phase
(importance update + a new allocation).

Bounds: issue 18's goals (docs/results.md, "Training-step speed").
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from pefthub.backbones import PACKAGED_MODELS

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec(PACKAGED_MODELS["minilm-l6"].module) is None and not os.environ.get("CI"),
    reason="minilm-l6 not installed (CI installs it and never skips)",
)

VARIANTS = ["floor", "pefthub_lora", "pefthub_adalora", "fw_lora", "iw_lora", "glora", "unihyperlora", "full_finetune"]
TOTAL_STEPS = 20  # AdaLoRA: tinit = 2, tfinal = 6, so steps 3 .. 13 reduce the budget
COUNTED_STEP = 4


def _benchmark():
    spec = importlib.util.spec_from_file_location("step_time_benchmark", REPO / "benchmarks" / "step_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def counts() -> dict:
    bench = _benchmark()
    torch.manual_seed(0)
    probe = bench.HeadOnly(backbone="minilm-l6")
    batches = [bench.make_batch(probe.backbone, 2, 16, seed, torch.device("cpu")) for seed in range(COUNTED_STEP + 3)]
    native = {"fast_cpu_kernels": False}
    variants = bench.build_variants(VARIANTS, "minilm-l6", TOTAL_STEPS, batches[:2], contextlib.nullcontext(),
                                    torch.device("cpu"), lora=native, adalora=native,
                                    unihyper={"update_impl": "dense"})  # what `auto` picks on a GPU
    result = {}
    for variant in variants:
        for step in range(COUNTED_STEP):
            variant.step(batches[step], contextlib.nullcontext())
        result[variant.name] = bench.count_step(variant, batches[COUNTED_STEP], contextlib.nullcontext())
    adalora = next(v for v in variants if v.name == "pefthub_adalora").module
    result["adalora_phase"] = adalora.allocator.budget != adalora.allocator.init_budget  # reducing: masks moved
    return result


def test_lora_adds_at_most_15_ops_per_adapted_matrix(counts):
    extra = counts["pefthub_lora"].total - counts["floor"].total
    assert extra <= 540, f"LoRA adds {extra} ops over the frozen backbone (goal <= 540: 36 matrices x 15)"


def test_adalora_in_the_reduction_phase(counts):
    assert counts["adalora_phase"], "the counted AdaLoRA step must be one that re-allocates the budget"
    ratio = counts["pefthub_adalora"].total / counts["pefthub_lora"].total
    assert ratio <= 1.15, f"AdaLoRA step = {ratio:.3f} x LoRA's ops"


@pytest.mark.parametrize("name", ["fw_lora", "iw_lora"])
def test_importance_weighted_lora_after_warmup(counts, name):
    ratio = counts[name].total / counts["pefthub_lora"].total
    assert ratio <= 1.05, f"{name} step = {ratio:.3f} x LoRA's ops"


def test_glora_after_reallocation_costs_what_lora_costs(counts):
    assert counts["glora"].total <= counts["pefthub_lora"].total


def test_unihyperlora_dense_update(counts):
    ratio = counts["unihyperlora"].total / counts["pefthub_lora"].total
    assert ratio <= 1.5, f"UniHyperLoRA step (update_impl: dense) = {ratio:.3f} x LoRA's ops"


@pytest.mark.parametrize("name", VARIANTS)
def test_no_host_sync_beyond_the_backbones_own(counts, name):
    """The host model's mask preparation reads one flag back (transformers'
    ``_ignore_bidirectional_mask_sdpa``: ``padding_mask.all()``); no method may add any."""
    assert counts[name].host_syncs == counts["floor"].host_syncs <= 1, counts[name].sync_ops()


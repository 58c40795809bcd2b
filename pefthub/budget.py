"""Budgets: parameters, bytes on disk and FLOPs of adapters, measured rather than estimated.

FLOPs are counted by fvcore on the host's forward (the backbone, batch of token ids) with and
without the adapter. fvcore counts one multiply-add of a matrix product as one "flop" (that is,
MACs) and ignores element-wise work; both counts use the same convention, so the overhead
ratio is what it measures. Attention must run eagerly: fvcore (like torch's FlopCounterMode)
does not see ``scaled_dot_product_attention`` on CPU, which would shrink the denominator.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from pefthub.adapters.inject import adapter_modules
from pefthub.adapters.io import CONFIG_NAME, WEIGHTS_NAME


class BudgetError(ValueError):
    """An adapter over its byte or FLOP budget; the message names the measured figure and the limit."""


def count_parameters(tensors: dict[str, torch.Tensor] | nn.Module, trainable_only: bool = False) -> int:
    """Number of scalars in a tensor dict or a module (each shared tensor once)."""
    if isinstance(tensors, nn.Module):
        params = tensors.parameters()
        return sum(p.numel() for p in params if p.requires_grad or not trainable_only)
    return sum(t.numel() for t in tensors.values())


def adapter_file_bytes(directory: str | Path) -> int:
    """Bytes on disk of a saved adapter (``adapter.safetensors`` + ``adapter_config.json``)."""
    directory = Path(directory)
    return sum((directory / name).stat().st_size for name in (WEIGHTS_NAME, CONFIG_NAME))


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run HF attention eagerly inside the block (transformers picks the implementation from
    ``config._attn_implementation`` at each forward)."""
    configs = [m.config for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")]
    saved = [c._attn_implementation for c in configs]
    for config in configs:
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        for config, value in zip(configs, saved, strict=False):
            config._attn_implementation = value


@contextmanager
def adapters_bypassed(*modules: nn.Module) -> Iterator[None]:
    """The host without its adapters: every adapter layer that wraps a ``.base`` Linear is swapped
    back for that Linear, and modules with a ``bypass`` flag (UniHyperLoRA's shared router) are
    switched off. Everything is restored on exit."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    flagged: list[tuple[nn.Module, bool]] = []
    for root in modules:
        for name, module in list(adapter_modules(root)):
            base = getattr(module, "base", None)
            if isinstance(base, nn.Linear) and name:
                parent_name, _, child = name.rpartition(".")
                parent = root.get_submodule(parent_name) if parent_name else root
                setattr(parent, child, base)
                swapped.append((parent, child, module))
        for module in root.modules():
            if isinstance(getattr(module, "bypass", None), bool):
                flagged.append((module, module.bypass))
                module.bypass = True
    try:
        yield
    finally:
        for parent, child, module in reversed(swapped):
            setattr(parent, child, module)
        for module, value in flagged:
            module.bypass = value


class _HiddenStates(nn.Module):
    """The backbone's forward as a traceable module; ``extras`` registers modules whose
    parameters the forward uses without owning them (UniHyperLoRA's shared parts), so the
    tracer sees them as parameters rather than constants."""

    def __init__(self, backbone: nn.Module, extras: tuple[nn.Module, ...] = ()) -> None:
        super().__init__()
        self.backbone = backbone
        self.extras = nn.ModuleList(extras)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def count_flops(
    backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, extras: tuple[nn.Module, ...] = ()
) -> int:
    """fvcore's count (multiply-adds of matrix products) for one forward of ``backbone``
    (``extras``: modules outside the backbone whose parameters its forward reads)."""
    from fvcore.nn import FlopCountAnalysis

    for name in ("fvcore.nn.jit_analysis", "fvcore.nn.jit_handles"):
        logging.getLogger(name).setLevel(logging.ERROR)  # "unsupported operator" noise for element-wise ops
    with eager_attention(backbone):
        analysis = FlopCountAnalysis(_HiddenStates(backbone, extras), (input_ids, attention_mask))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return int(analysis.total())


def example_inputs(backbone: nn.Module, seq_len: int = 128, batch_size: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-seed token ids (no padding) of shape (batch_size, seq_len) within the vocabulary."""
    vocab = int(getattr(backbone.config, "vocab_size", 1000))
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab, (batch_size, seq_len), generator=generator)
    device = next(backbone.parameters()).device
    return input_ids.to(device), torch.ones_like(input_ids, device=device)


def flop_overhead(
    pl_module: nn.Module, seq_len: int = 128, batch_size: int = 1, amortized: bool = True
) -> dict[str, float]:
    """Host forward FLOPs with and without the adapter, measured by fvcore.

    Args:
        pl_module: a PEFT module with ``backbone`` (and possibly shared adapter parts elsewhere).
        seq_len: tokens per sequence of the measured forward.
        batch_size: sequences per forward.
        amortized: measure inference as deployed: one warm-up forward first (in eval mode, no
            grad), so per-width results that are cached across forwards (UniHyperLoRA's folded
            projections) are not counted; ``False`` counts a training-style forward that
            recomputes them.

    Returns:
        ``{"host_flops", "adapted_flops", "overhead"}`` where ``overhead = adapted / host − 1``.
    """
    backbone = pl_module.backbone
    extras = tuple(m for name, m in pl_module.named_children() if name not in ("backbone", "head") and any(True for _ in m.parameters()))
    input_ids, attention_mask = example_inputs(backbone, seq_len, batch_size)
    was_training = pl_module.training
    pl_module.eval()
    try:
        with adapters_bypassed(pl_module), torch.no_grad():
            host = count_flops(backbone, input_ids, attention_mask, extras)
        if amortized:
            with torch.no_grad():
                backbone(input_ids=input_ids, attention_mask=attention_mask)
                adapted = count_flops(backbone, input_ids, attention_mask, extras)
        else:
            clear = getattr(getattr(pl_module, "hyper", None), "clear_cache", None)
            if clear is not None:
                clear()
            with torch.enable_grad():
                adapted = count_flops(backbone, input_ids, attention_mask, extras)
    finally:
        pl_module.train(was_training)
    return {"host_flops": float(host), "adapted_flops": float(adapted), "overhead": adapted / host - 1.0}

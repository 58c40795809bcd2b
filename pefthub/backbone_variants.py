"""Derived hosts: other depths and widths from one backbone, named ``<base>:<op>[:<op>...]``.

Operations, applied left to right:

- ``drop-every-other``: keep blocks 0, 2, 4, ... (``minilm-l6:drop-every-other`` has 3 layers);
- ``layers=0,2,5``: keep exactly these blocks, in this order;
- ``ffn=<n>`` or ``ffn=<fraction>``: keep the ``n`` (or ``fraction`` of the) FFN intermediate units
  with the largest weight magnitude ``Σ|W_in[j,:]| + |b_in[j]| + Σ|W_out[:,j]|`` in every block;
- ``hidden=<n>`` or ``hidden=<fraction>``: keep the ``n`` hidden (residual-stream) units with the
  largest total weight magnitude over every matrix that reads or writes them, and the same
  number of attention dimensions, per head, ranked by ``|W_q|+|W_k|`` and ``|W_v|+|W_o|``
  (queries are rescaled so scores keep their original ``1/√head_dim``); ``n`` is rounded down
  to a multiple of the head count. BERT and MPNet only.

Tiny random test hosts of other sizes are named ``tiny-bert-h48-l3`` (hidden 48, 3 layers,
intermediate 2×hidden, 4 heads); either part may be left out.

A pruned host records, in ``config.pefthub_unit_positions``, the source coordinate
``(i + ½) / d_source`` of each unit it kept, per width, so a width-agnostic adapter
(UniHyperLoRA) can place its projector rows where the source's were.
"""

from __future__ import annotations

import copy
import math
import re

import torch
from torch import nn
from transformers import AutoModel, PreTrainedModel

TINY_SIZED = re.compile(r"^(tiny-(?:bert|llama))(?:-h(\d+))?(?:-l(\d+))?$")


def split_name(name: str) -> tuple[str, list[str]]:
    """``("minilm-l6", ["drop-every-other"])`` for ``minilm-l6:drop-every-other``."""
    base, *ops = name.split(":")
    return base, ops


def tiny_overrides(name: str) -> tuple[str, dict] | None:
    """``("tiny-bert", {"hidden_size": 48, ...})`` for ``tiny-bert-h48-l3``; None if not such a name."""
    match = TINY_SIZED.match(name)
    if not match or (match.group(2) is None and match.group(3) is None):
        return None
    overrides: dict = {}
    if match.group(2):
        hidden = int(match.group(2))
        if hidden % 4:
            raise ValueError(f"backbone {name!r}: tiny hidden size must be a multiple of 4 (heads), got {hidden}")
        overrides.update(hidden_size=hidden, intermediate_size=2 * hidden)
    if match.group(3):
        overrides["num_hidden_layers"] = int(match.group(3))
    return match.group(1), overrides


def _blocks(model: nn.Module) -> nn.ModuleList:
    count = int(model.config.num_hidden_layers)
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"cannot find the {count} transformer blocks of {type(model).__name__}")


def _parent_and_attr(model: nn.Module, target: nn.Module) -> tuple[nn.Module, str]:
    for module in model.modules():
        for child_name, child in module.named_children():
            if child is target:
                return module, child_name
    raise ValueError("module not found")


def keep_layers(model: PreTrainedModel, keep: list[int]) -> PreTrainedModel:
    blocks = _blocks(model)
    if not keep or any(not 0 <= i < len(blocks) for i in keep):
        raise ValueError(f"layers={keep} must be indices in [0, {len(blocks)})")
    parent, attr = _parent_and_attr(model, blocks)
    setattr(parent, attr, nn.ModuleList([blocks[i] for i in keep]))
    model.config.num_hidden_layers = len(keep)
    for new_index, block in enumerate(getattr(parent, attr)):  # Llama attention caches by layer index
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    return model


def _count(spec: str, total: int, multiple: int = 1) -> int:
    value = float(spec)
    n = int(round(value * total)) if value <= 1.0 and "." in spec else int(value)
    n = (n // multiple) * multiple
    if not multiple <= n <= total:
        raise ValueError(f"pruned size {spec!r} gives {n} units; expected a multiple of {multiple} in [{multiple}, {total}]")
    return n


def _linear_subset(linear: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> nn.Linear:
    weight = linear.weight.detach()
    bias = linear.bias.detach() if linear.bias is not None else None
    if rows is not None:
        weight, bias = weight[rows], (bias[rows] if bias is not None else None)
    if cols is not None:
        weight = weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


FFN_NAMES = {  # family -> (input projections (rows pruned), output projection (cols pruned))
    "bert": (("intermediate.dense",), "output.dense"),
    "mpnet": (("intermediate.dense",), "output.dense"),
    "llama": (("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
}


def _positions(config, width: int, kept: torch.Tensor, source_width: int, other_width: int) -> None:
    """Record the kept units' source coordinates under ``width`` — unless another dimension of
    the host has that width too (positions are looked up by width), then record none."""
    positions = dict(getattr(config, "pefthub_unit_positions", None) or {})
    previous = positions.pop(str(source_width), None)
    if width == other_width:
        positions.pop(str(width), None)
        config.pefthub_unit_positions = positions
        return
    coords = [((i + 0.5) / source_width) if previous is None else previous[i] for i in kept.tolist()]
    positions[str(width)] = coords
    config.pefthub_unit_positions = positions


def prune_ffn(model: PreTrainedModel, spec: str) -> PreTrainedModel:
    family = model.config.model_type
    if family not in FFN_NAMES:
        raise ValueError(f"ffn pruning supports {sorted(FFN_NAMES)}, not {family!r}")
    inputs, output = FFN_NAMES[family]
    total = int(model.config.intermediate_size)
    n = _count(spec, total)
    kept_first = None
    for block in _blocks(model):
        ins = [block.get_submodule(name) for name in inputs]
        out = block.get_submodule(output)
        score = sum(lin.weight.abs().sum(1) + (lin.bias.abs() if lin.bias is not None else 0) for lin in ins)
        score = score + out.weight.abs().sum(0)
        kept = torch.sort(torch.topk(score, n).indices).values
        kept_first = kept if kept_first is None else kept_first
        for name, lin in zip(inputs, ins, strict=False):
            parent, _, child = name.rpartition(".")
            setattr(block.get_submodule(parent), child, _linear_subset(lin, kept, None))
        parent, _, child = output.rpartition(".")
        setattr(block.get_submodule(parent), child, _linear_subset(out, None, kept))
    model.config.intermediate_size = n
    _positions(model.config, n, kept_first, total, int(model.config.hidden_size))  # first block's choice stands for all (one per width)
    return model


_ATTENTION = {  # family -> (q, k, v, o) suffixes
    "bert": ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),
    "mpnet": ("attention.attn.q", "attention.attn.k", "attention.attn.v", "attention.attn.o"),
}


def prune_hidden(model: PreTrainedModel, spec: str) -> PreTrainedModel:
    family = model.config.model_type
    if family not in _ATTENTION:
        raise ValueError(f"hidden-size pruning supports {sorted(_ATTENTION)}, not {family!r}")
    config = model.config
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    n = _count(spec, hidden, multiple=heads)
    old_head, new_head = hidden // heads, n // heads
    state = {k: v.detach() for k, v in model.state_dict().items()}
    q_name, k_name, v_name, o_name = _ATTENTION[family]

    # residual units: magnitude over every weight that reads (column) or writes (row/entry) them
    score = torch.zeros(hidden)
    for key, tensor in state.items():
        if tensor.dim() == 2 and tensor.shape[1] == hidden and not key.endswith(f"{o_name}.weight"):
            score += tensor.abs().sum(0)  # readers (and embeddings' columns)
        if tensor.dim() == 2 and tensor.shape[0] == hidden and not any(key.endswith(f"{x}.weight") for x in (q_name, k_name, v_name)):
            score += tensor.abs().sum(1)  # writers (attention output, FFN output)
    residual = torch.sort(torch.topk(score, n).indices).values

    new_config = copy.deepcopy(config)
    new_config.hidden_size = n
    new_model = AutoModel.from_config(new_config, **({"add_pooling_layer": False} if family == "bert" else {}))
    new_model.config._attn_implementation = config._attn_implementation
    new_state = new_model.state_dict()
    inner: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # block prefix -> (qk dims, vo dims)

    def per_head(score_matrix: torch.Tensor) -> torch.Tensor:
        chosen = []
        for h in range(heads):
            block = score_matrix[h * old_head : (h + 1) * old_head]
            chosen.append(torch.sort(torch.topk(block, new_head).indices).values + h * old_head)
        return torch.cat(chosen)

    for key in new_state:
        if key not in state:
            continue
        tensor = state[key]
        prefix = next((key[: key.rindex(s)] for s in (q_name, k_name, v_name, o_name) if key.endswith((f"{s}.weight", f"{s}.bias"))), None)
        if prefix is not None and prefix not in inner:
            q, k, v, o = (state[f"{prefix}{suffix}.weight"] for suffix in (q_name, k_name, v_name, o_name))
            qk = per_head(q.abs().sum(1) + k.abs().sum(1))
            vo = per_head(v.abs().sum(1) + o.abs().sum(0))
            inner[prefix] = (qk, vo)
        if prefix is not None:
            qk, vo = inner[prefix]
            if key.endswith(f"{o_name}.weight"):
                value = tensor[residual][:, vo]
            elif key.endswith(f"{o_name}.bias"):
                value = tensor[residual]
            else:
                rows = vo if v_name in key else qk
                value = tensor[rows]
                if value.dim() == 2:
                    value = value[:, residual]
                if q_name in key:  # keep scores at the source's 1/sqrt(old_head)
                    value = value * math.sqrt(new_head / old_head)
        else:
            value = tensor
            for axis in range(tensor.dim()):
                if tensor.shape[axis] == hidden and new_state[key].shape[axis] == n:
                    value = value.index_select(axis, residual)
        if value.shape != new_state[key].shape:
            raise ValueError(f"hidden pruning: {key} became {tuple(value.shape)}, expected {tuple(new_state[key].shape)}")
        new_state[key] = value
    new_model.load_state_dict(new_state)
    new_model.config.pefthub_unit_positions = getattr(config, "pefthub_unit_positions", None)
    _positions(new_model.config, n, residual, hidden, int(new_config.intermediate_size))
    return new_model


def apply_ops(model: PreTrainedModel, ops: list[str]) -> PreTrainedModel:
    """Apply derived-host operations (see module docstring) to ``model``."""
    for op in ops:
        if op == "drop-every-other":
            model = keep_layers(model, list(range(0, int(model.config.num_hidden_layers), 2)))
        elif op.startswith("layers="):
            model = keep_layers(model, [int(i) for i in op.split("=", 1)[1].split(",") if i.strip()])
        elif op.startswith("ffn="):
            model = prune_ffn(model, op.split("=", 1)[1])
        elif op.startswith("hidden="):
            model = prune_hidden(model, op.split("=", 1)[1])
        else:
            raise ValueError(
                f"unknown backbone operation {op!r}; expected drop-every-other, layers=i,j,..., ffn=<n|fraction>, "
                "hidden=<n|fraction> (e.g. minilm-l6:drop-every-other:ffn=0.5)"
            )
    return model

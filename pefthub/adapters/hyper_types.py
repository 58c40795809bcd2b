"""UniHyperLoRA's canonical module types, and which host block a layer belongs to.

The mixer is conditioned on a layer's type in a family-agnostic vocabulary (``q``, ``ffn_in``,
...), so one adapter reads the same on BERT, MPNet and Llama hosts; the router runs once per
block. No torch here.
"""

from __future__ import annotations

import re

# Width- and family-agnostic module types the mixer is conditioned on.
CANONICAL_TYPES: tuple[str, ...] = ("q", "k", "v", "o", "ffn_gate", "ffn_in", "ffn_out")

# Target pattern -> canonical type, for the families pefthub knows.
DEFAULT_TYPE_MAP: dict[str, str] = {
    # BERT
    "attention.self.query": "q",
    "attention.self.key": "k",
    "attention.self.value": "v",
    "attention.output.dense": "o",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    # MPNet
    "attn.q": "q",
    "attn.k": "k",
    "attn.v": "v",
    "attn.o": "o",
    # Llama
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.o_proj": "o",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_in",
    "mlp.down_proj": "ffn_out",
}

_BLOCK = re.compile(r"^(.*?\.\d+)\.")


def canonical_type(pattern: str, type_map: dict[str, str] | None = None) -> str:
    """The canonical module type of a target pattern; a ValueError names the config key to set."""
    mapping = {**DEFAULT_TYPE_MAP, **(type_map or {})}
    kind = mapping.get(pattern)
    if kind is None or kind not in CANONICAL_TYPES:
        raise ValueError(
            f"target pattern {pattern!r} has no canonical module type; set `model.module_types` "
            f"to map it to one of {CANONICAL_TYPES}"
        )
    return kind


def block_name(site_name: str) -> str | None:
    """``encoder.layer.3`` for ``encoder.layer.3.attention.self.query`` (None without an index)."""
    match = _BLOCK.match(site_name)
    return match.group(1) if match else None

"""Symmetric per-row quantisation for adapter files: int8, and int4 packed two per byte.

For a row ``x`` and ``b`` bits, ``q_max = 2^{b-1} - 1`` (127 or 7), the scale is
``s = max|x| / q_max`` (stored as float16) and ``q = round(x / s) ∈ [-q_max, q_max]``; the
reconstruction ``q · s`` is within ``s / 2`` of ``x`` (plus the float16 rounding of ``s``).
Vectors are one row, tensors of higher rank are flattened to (shape[0], -1).

int4 packing: element ``2i`` goes to the low nibble of byte ``i``, element ``2i+1`` to the high
nibble, each as two's complement (``-1 -> 0xF``); an odd count is padded with a zero nibble.
"""

from __future__ import annotations

import math

import torch

SCHEMES = ("int8_row", "int4_row", "float16", "float32")


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """Integers in [-8, 7] (any shape) -> uint8 of length ceil(n / 2), two nibbles per byte."""
    flat = values.reshape(-1).to(torch.int16)
    if flat.numel() and (int(flat.min()) < -8 or int(flat.max()) > 7):
        raise ValueError("int4 values must lie in [-8, 7]")
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    nibbles = flat & 0xF
    return (nibbles[0::2] | (nibbles[1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: the first ``numel`` int4 values as int8."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed int4 data must be uint8, got {packed.dtype}")
    data = packed.reshape(-1).to(torch.int16)
    nibbles = torch.stack([data & 0xF, data >> 4], dim=1).reshape(-1)[:numel]
    return torch.where(nibbles >= 8, nibbles - 16, nibbles).to(torch.int8)


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(1, -1) if x.dim() <= 1 else x.reshape(x.shape[0], -1)


def quantize_rows(x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8 with x's row layout, scales float16 per row)`` for ``bits`` in {4, 8}."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    q_max = 2 ** (bits - 1) - 1
    rows = _rows(x.detach().float())
    scales = (rows.abs().amax(dim=1) / q_max).to(torch.float16)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales)).float()
    q = torch.round(rows / safe[:, None]).clamp(-q_max, q_max).to(torch.int8)
    return q, scales


def dequantize_rows(q: torch.Tensor, scales: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return (q.float() * scales.float()[:, None]).reshape(shape)


def encode(name: str, x: torch.Tensor, scheme: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors to store for ``x`` under ``scheme`` (keys ``name.q``/``name.scale`` or ``name``),
    and the JSON entry (scheme and shape) that :func:`decode` needs."""
    shape = list(x.shape)
    if scheme == "int8_row":
        q, scales = quantize_rows(x, 8)
        return {f"{name}.q": q, f"{name}.scale": scales}, {"scheme": scheme, "shape": shape}
    if scheme == "int4_row":
        q, scales = quantize_rows(x, 4)
        return {f"{name}.q4": pack_int4(q), f"{name}.scale": scales}, {"scheme": scheme, "shape": shape}
    if scheme in ("float16", "float32"):
        return {name: x.detach().to(getattr(torch, scheme))}, {"scheme": scheme, "shape": shape}
    raise ValueError(f"unknown storage scheme {scheme!r}; expected one of {SCHEMES}")


def decode(name: str, tensors: dict[str, torch.Tensor], entry: dict) -> torch.Tensor:
    """float32 tensor ``name`` from the stored ``tensors`` and its JSON ``entry``."""
    scheme, shape = entry["scheme"], tuple(entry["shape"])
    numel = math.prod(shape)
    rows = 1 if len(shape) <= 1 else shape[0]
    if scheme == "int8_row":
        q = tensors[f"{name}.q"].reshape(rows, -1)
        return dequantize_rows(q, tensors[f"{name}.scale"], shape)
    if scheme == "int4_row":
        q = unpack_int4(tensors[f"{name}.q4"], numel).reshape(rows, -1)
        return dequantize_rows(q, tensors[f"{name}.scale"], shape)
    if scheme in ("float16", "float32"):
        return tensors[name].float().reshape(shape)
    raise ValueError(f"tensor {name!r}: unknown storage scheme {scheme!r}; expected one of {SCHEMES}")

"""Convert between pefthub LoRA adapter files and the Hugging Face PEFT LoRA format.

PEFT layout: ``adapter_config.json`` (``peft_type: LORA``, ``r``, ``lora_alpha``,
``target_modules``, ``rank_pattern``, ``alpha_pattern``) and ``adapter_model.safetensors``
with keys ``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``.

Per-module scaling is carried exactly: PEFT scales module m by ``alpha_m / r_m``, so each
module is written with ``r_m`` = its rank and ``alpha_m`` = pefthub's scaling × ``r_m``.
This covers LoRA, GLoRA (per-matrix ranks) and AdaLoRA exported as per-matrix-rank LoRA.
The task head is not part of a PEFT adapter of the base model; it is written beside it as
``pefthub_head.safetensors``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from pefthub.adapters.io import load_adapter, read_json_object, read_safetensors, save_adapter
from pefthub.adapters.names import first_match

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
HEAD_WEIGHTS = "pefthub_head.safetensors"
_PREFIX = "base_model.model."


def lora_layers_from_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module name: (A, B)}`` from pefthub adapter tensors ``backbone.<module>.lora_A/B``."""
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key.startswith("backbone.") and key.endswith(".lora_A"):
            module = key[len("backbone.") : -len(".lora_A")]
            layers[module] = (tensor, tensors[f"backbone.{module}.lora_B"])
    return layers


def export_to_peft(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, base_model: str | None = None) -> Path:
    """Write a pefthub LoRA-family adapter as a PEFT LoRA adapter (zero-rank modules dropped),
    or a ``vera`` adapter as a PEFT VeRA adapter (:func:`export_vera_to_peft`)."""
    config, tensors = load_adapter(adapter_dir)
    if config.get("method") == "vera":
        return export_vera_to_peft(adapter_dir, out_dir, base_model=base_model)
    scaling = config.get("scaling_pattern")
    if not scaling:
        raise ValueError(
            f"{adapter_dir}: adapter_config.json has no 'scaling_pattern'; only LoRA-family adapters "
            f"(lora, glora, adalora exported as lora) convert to PEFT, this one is {config['method']!r}"
        )
    layers = {name: ab for name, ab in lora_layers_from_tensors(tensors).items() if ab[0].shape[0] > 0}
    if not layers:
        raise ValueError(f"{adapter_dir}: no LoRA tensors with rank > 0 to export")
    rank_pattern = {name: int(a.shape[0]) for name, (a, _) in layers.items()}
    alpha_pattern = {name: float(scaling[name]) * rank_pattern[name] for name in layers}
    default_rank = max(set(rank_pattern.values()), key=list(rank_pattern.values()).count)
    default_alpha = max(set(alpha_pattern.values()), key=list(alpha_pattern.values()).count)
    peft_config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base_model or config.get("backbone"),
        "r": default_rank,
        "lora_alpha": default_alpha,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": sorted(layers),
        "rank_pattern": {k: v for k, v in rank_pattern.items() if v != default_rank},
        "alpha_pattern": {k: v for k, v in alpha_pattern.items() if v != default_alpha},
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    weights = {}
    for name, (a, b) in layers.items():
        weights[f"{_PREFIX}{name}.lora_A.weight"] = a.contiguous()
        weights[f"{_PREFIX}{name}.lora_B.weight"] = b.contiguous()
    return _write_peft_dir(out_dir, weights, tensors, config, peft_config)


def import_from_peft(peft_dir: str | os.PathLike, out_dir: str | os.PathLike, backbone: str) -> Path:
    """Read a PEFT LoRA adapter (safetensors only) into a pefthub ``lora`` adapter directory.

    ``backbone`` names the base model pefthub should load it onto (a pefthub backbone name
    or path). A ``pefthub_head.safetensors`` beside it, if present, becomes the task head.
    """
    peft_dir = Path(peft_dir)
    config_path, weights_path = peft_dir / PEFT_CONFIG, peft_dir / PEFT_WEIGHTS
    if not weights_path.is_file():
        if (peft_dir / "adapter_model.bin").is_file():
            raise ValueError(f"{peft_dir}: only adapter_model.bin (a pickle) is present; pefthub imports safetensors only")
        raise ValueError(f"{weights_path}: not found (expected a PEFT LoRA adapter directory)")
    if not config_path.is_file():
        raise ValueError(f"{config_path}: not found (expected a PEFT LoRA adapter directory)")
    peft_config = read_json_object(config_path)
    if peft_config.get("peft_type") != "LORA":
        raise ValueError(f"{config_path}: peft_type is {peft_config.get('peft_type')!r}; only LORA adapters import")
    if peft_config.get("use_dora") or peft_config.get("use_rslora"):
        raise ValueError(f"{config_path}: DoRA / rsLoRA adapters are not supported by pefthub's LoRA")
    weights = read_safetensors(weights_path)
    tensors: dict[str, torch.Tensor] = {}
    rank_pattern: dict[str, int] = {}
    scaling_pattern: dict[str, float] = {}
    for key, tensor in weights.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[: -len(".lora_A.weight")].removeprefix(_PREFIX)
        b = weights[key.replace(".lora_A.weight", ".lora_B.weight")]
        rank = int(tensor.shape[0])
        alpha = first_match(peft_config.get("alpha_pattern") or {}, module, peft_config["lora_alpha"])
        tensors[f"backbone.{module}.lora_A"] = tensor
        tensors[f"backbone.{module}.lora_B"] = b
        rank_pattern[module] = rank
        scaling_pattern[module] = float(alpha) / rank
    head_path = peft_dir / HEAD_WEIGHTS
    if head_path.is_file():
        tensors.update({f"head.{k}": v for k, v in read_safetensors(head_path).items()})
    config = {
        "method": "lora",
        "backbone": backbone,
        "target_modules": sorted(rank_pattern),
        "rank_pattern": rank_pattern,
        "scaling_pattern": scaling_pattern,
        "imported_from": str(peft_dir),
    }
    return save_adapter(out_dir, config, tensors)


def export_vera_to_peft(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, base_model: str | None = None) -> Path:
    """Write a pefthub ``vera`` adapter as a PEFT VeRA adapter (``peft_type: VERA``).

    Keys ``base_model.model.<module>.vera_lambda_d`` / ``vera_lambda_b``; ``target_modules``
    lists the adapted modules by full name, so PEFT sizes its shared A, B to the same
    largest layer. A file without stored projections is written with
    ``save_projection: false`` and the same ``projection_prng_key`` (PEFT regenerates the
    same A, B bit for bit); stored projections go to ``base_model.vera_A`` / ``vera_B``.
    The task head is written beside it as ``pefthub_head.safetensors``.
    """
    config, tensors = load_adapter(adapter_dir)
    if config.get("method") != "vera":
        raise ValueError(f"{adapter_dir}: expected a 'vera' adapter, this one is {config.get('method')!r}")
    modules = sorted(key[len("backbone.") : -len(".vera_lambda_d")] for key in tensors if key.endswith(".vera_lambda_d"))
    if not modules:
        raise ValueError(f"{adapter_dir}: no backbone.<module>.vera_lambda_d tensors to export")
    stored = "vera_projections.vera_A" in tensors
    weights = {}
    for name in modules:
        weights[f"{_PREFIX}{name}.vera_lambda_d"] = tensors[f"backbone.{name}.vera_lambda_d"].contiguous()
        weights[f"{_PREFIX}{name}.vera_lambda_b"] = tensors[f"backbone.{name}.vera_lambda_b"].contiguous()
    if stored:
        weights["base_model.vera_A"] = tensors["vera_projections.vera_A"].contiguous()
        weights["base_model.vera_B"] = tensors["vera_projections.vera_B"].contiguous()
    peft_config: dict[str, Any] = {
        "peft_type": "VERA",
        "task_type": None,
        "base_model_name_or_path": base_model or config.get("backbone"),
        "r": int(config["rank"]),
        "target_modules": modules,
        "projection_prng_key": int(config["projection_prng_key"]),
        "save_projection": stored,
        "vera_dropout": 0.0,
        "d_initial": float(config.get("d_initial", 0.1)),
        "fan_in_fan_out": False,
        "bias": "none",
        "init_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }
    return _write_peft_dir(out_dir, weights, tensors, config, peft_config)


def _write_peft_dir(
    out_dir: str | os.PathLike, weights: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor],
    config: dict[str, Any], peft_config: dict[str, Any],
) -> Path:
    """Write a PEFT adapter directory: the adapter weights, the pefthub task head beside them
    (``head.*`` of ``tensors``, with the label names), and ``adapter_config.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    head = {k[len("head."):]: v.contiguous() for k, v in tensors.items() if k.startswith("head.")}
    if head:
        save_file(head, str(out / HEAD_WEIGHTS), metadata={"format": "pt", "label_names": json.dumps(config.get("label_names"))})
    (out / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
    return out

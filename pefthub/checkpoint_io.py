"""Read a pefthub checkpoint whatever wrote it: a Lightning file, or a DeepSpeed directory.

A DeepSpeed checkpoint (``<name>.ckpt/``) holds ``latest`` and ``checkpoint/``; in it,
``mp_rank_00_model_states.pt`` carries Lightning's client state (loops, callbacks, the
``pefthub`` record) and, under ZeRO-1/2, the trainable tensors as the model held them
(``module``; frozen parameters are excluded by ``exclude_frozen_parameters``); under ZeRO-3
the tensors exist only as fp32 shards in ``zero_pp_rank_*_optim_states.pt``.

:func:`read_checkpoint` returns the Lightning layout (``state_dict`` = trainable tensors), so
test/predict/adapter export work the same from either. Files and ZeRO-1/2 model states are
read with ``torch.load(weights_only=True)``. ZeRO-3 shards are consolidated by DeepSpeed's
``get_fp32_state_dict_from_zero_checkpoint``, which unpickles (``weights_only=False``): only
read ZeRO-3 checkpoints you wrote yourself. Resuming a DeepSpeed run goes through DeepSpeed's
own ``engine.load_checkpoint``, which unpickles as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DEEPSPEED_TAG = "checkpoint"  # the tag Lightning's DeepSpeedStrategy saves under
MODEL_STATES = "mp_rank_00_model_states.pt"


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a DeepSpeed checkpoint directory (as Lightning writes it)."""
    path = Path(path)
    return path.is_dir() and (path / DEEPSPEED_TAG).is_dir()


def _zero_stage(client_state: dict[str, Any]) -> int:
    return int(((client_state.get("ds_config") or {}).get("zero_optimization") or {}).get("stage", 0))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` as a Lightning checkpoint dict with ``state_dict`` on CPU."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist")
    if path.is_dir():
        if not is_deepspeed_checkpoint(path):
            raise ValueError(f"checkpoint {path} is a directory but not a DeepSpeed checkpoint (no '{DEEPSPEED_TAG}/' in it)")
        return _read_deepspeed(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _read_deepspeed(path: Path) -> dict[str, Any]:
    states = path / DEEPSPEED_TAG / MODEL_STATES
    if not states.is_file():
        # ZeRO-3 with several ranks names it zero_pp_rank_0_mp_rank_00_model_states.pt
        states = path / DEEPSPEED_TAG / f"zero_pp_rank_0_{MODEL_STATES}"
    if not states.is_file():
        raise ValueError(f"DeepSpeed checkpoint {path} lacks {DEEPSPEED_TAG}/{MODEL_STATES}: was its save interrupted?")
    checkpoint = torch.load(states, map_location="cpu", weights_only=True)
    module = checkpoint.pop("module", None) or {}
    if _zero_stage(checkpoint) >= 3:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        module = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=DEEPSPEED_TAG, exclude_frozen_parameters=True)
    checkpoint["state_dict"] = {name: tensor.detach().cpu() for name, tensor in module.items()}
    return checkpoint


def saved_tensor_names(checkpoint: dict[str, Any]) -> set[str]:
    """Names of the module tensors a checkpoint holds: its ``state_dict``, or, for the client
    state DeepSpeed's ``engine.load_checkpoint`` returns (weights already loaded by the engine,
    no ``state_dict``), the parameter names DeepSpeed recorded in ``param_shapes``."""
    if "state_dict" in checkpoint:
        return set(checkpoint["state_dict"])
    names: set[str] = set()
    for group in checkpoint.get("param_shapes") or []:
        names.update(group)
    names.update(checkpoint.get("buffer_names") or [])
    return names

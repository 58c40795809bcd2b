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

:func:`load_weights_only` is the one load that vets a checkpoint file: a file that is not
weights-only (a pickle that would run code) is refused in one line, whatever
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says (it only overrides loads that leave ``weights_only`` unset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

DEEPSPEED_TAG = "checkpoint"  # the tag Lightning's DeepSpeedStrategy saves under
MODEL_STATES = "mp_rank_00_model_states.pt"


class CheckpointFileError(ValueError):
    """A checkpoint file that is not weights-only; the message names the file."""


def load_weights_only(path: str | Path, label: str = "ckpt_path") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` on CPU, or a one-line :class:`CheckpointFileError`
    naming ``path`` (as ``label``) and the reason instead of torch's multi-line one: pefthub never
    unpickles arbitrary objects from a checkpoint."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unpickler's protocol warning
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError, OSError) as error:
        raise CheckpointFileError(
            f"{label} {path}: not a weights-only checkpoint ({_unpickling_reason(error)}); pefthub loads checkpoints "
            "with weights_only=True only, so no object in the file is ever executed; pass a checkpoint pefthub wrote"
        ) from error


def _unpickling_reason(error: BaseException) -> str:
    """The specific reason inside torch's multi-line weights-only message (not its advice)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("Trying to load unsupported", "Unsupported")) or "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:")[-1].strip()
            if reason:
                return reason[:160]
    for line in lines[1:]:
        if not line.startswith(("Weights only load failed", "Please file an issue", "Check the documentation")):
            return line[:160]
    return type(error).__name__ if not lines or lines[0].startswith("Weights only load failed") else lines[0][:160]


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

"""Which checkpoint a ``pefthub`` subcommand reads, and whether it may read it.

``--ckpt_path last`` finds the newest ``last.ckpt`` of a configuration's runs; a checkpoint
that is not weights-only is refused in one line; evaluation reads a checkpoint of the other
layout (DeepSpeed directory vs file) through pefthub rather than Lightning.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pefthub.checkpoint_io import is_deepspeed_checkpoint
from pefthub.strategies import is_deepspeed, zero_stage


class CheckpointFileError(ValueError):
    """A ``--ckpt_path`` that is not a weights-only checkpoint; the message names the file."""


def check_weights_only(path: str | Path) -> None:
    """Refuse ``path`` in one line unless it loads with ``torch.load(weights_only=True)``:
    pefthub never unpickles arbitrary objects from a checkpoint (whatever the environment says)."""
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the unpickler's protocol warning
            torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError, OSError) as error:
        raise CheckpointFileError(
            f"ckpt_path {path}: not a weights-only checkpoint ({_unpickling_reason(error)}); pefthub loads checkpoints "
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


def _load_weights_here(path: str | Path, trainer) -> bool:
    """Whether test/validate/predict must read ``path``'s weights through pefthub instead of
    Lightning: a checkpoint of the other layout (DeepSpeed directory vs file), or any DeepSpeed
    checkpoint under ZeRO-3, whose inference engine (deepspeed 0.19.8) cannot load one
    (``'DeepSpeedZeRoOffload' object has no attribute '_restore_from_bit16_weights'``)."""
    if is_deepspeed_checkpoint(path) != is_deepspeed(trainer):
        return True
    return is_deepspeed_checkpoint(path) and zero_stage(trainer.strategy) == 3


def resolve_last_checkpoint(trainer_config) -> str | None:
    """``--ckpt_path last``: the newest ``last.ckpt`` of this configuration's runs.

    Lightning's own ``"last"`` only looks in the *new* run's checkpoint folder, which with a
    versioned logger is always empty. Here an explicit ``ModelCheckpoint.dirpath`` is
    searched, else ``<save_dir>/<name>/version_*/checkpoints/``; when found in a version
    folder, the logger is pointed at that version so the resumed run logs beside the
    interrupted one. With no checkpoint at all the run starts from scratch (said on stderr).
    """
    candidates: list[Path] = []
    for callback in trainer_config.get("callbacks") or []:
        dirpath = (callback.get("init_args") or {}).get("dirpath") if hasattr(callback, "get") else None
        if dirpath:
            candidates.append(Path(dirpath) / "last.ckpt")
    logger = trainer_config.get("logger")
    logger_args = logger.get("init_args") if hasattr(logger, "get") else None
    if not candidates and logger_args is not None:
        root = Path(logger_args.get("save_dir") or ".") / (logger_args.get("name") or "lightning_logs")
        versions = sorted(root.glob("version_*/checkpoints/last.ckpt*"), key=lambda p: _version_number(p.parents[1].name))
        if versions:
            candidates.append(versions[-1].with_name("last.ckpt"))
            logger_args.version = _version_number(versions[-1].parents[1].name)
    if not candidates:
        root = Path(trainer_config.get("default_root_dir") or ".")
        candidates = sorted(root.glob("lightning_logs/version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)[-1:]
    # a file, or a DeepSpeed directory; `last.ckpt.old` is the previous one when a directory
    # swap was interrupted between its two renames (pefthub.callbacks.checkpoint.replace_path)
    found = [q for p in candidates for q in (p, p.with_name(p.name + ".old")) if q.is_file() or is_deepspeed_checkpoint(q)][:1]
    if not found:
        print("pefthub: --ckpt_path last: no last.ckpt found for this configuration; starting from scratch", file=sys.stderr)
        return None
    print(f"pefthub: resuming from {found[-1]}", file=sys.stderr)
    return str(found[-1])


def _version_number(name: str) -> int:
    suffix = name.removeprefix("version_")
    return int(suffix) if suffix.isdigit() else -1

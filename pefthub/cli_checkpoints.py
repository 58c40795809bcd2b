"""Which checkpoint a ``pefthub`` subcommand reads, and whether pefthub or Lightning reads it.

``--ckpt_path last`` finds the newest ``last.ckpt`` of a configuration's runs; evaluation reads
a checkpoint of the other layout (DeepSpeed directory vs file) through pefthub rather than
Lightning. Vetting a checkpoint file is :func:`pefthub.checkpoint_io.load_weights_only`, in the
one load that reads it (``PEFTHubCLI._parse_ckpt_path``).
"""

from __future__ import annotations

import sys
from pathlib import Path

from pefthub.checkpoint_io import is_deepspeed_checkpoint
from pefthub.strategies import is_deepspeed, zero_stage


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

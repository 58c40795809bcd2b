"""Builtin tasks: compact datasets shipped inside pefthub (built by ``scripts/build_datasets.py``).

Each task is a folder ``pefthub/data/builtin/<task>/`` with ``train.jsonl``,
``validation.jsonl``, ``test.jsonl`` and a ``manifest.json`` recording the sources
(package, version, path, SHA-256), split sizes, label names and the primary metric.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

BUILTIN_DIR = Path(__file__).parent / "builtin"
SPLITS = ("train", "validation", "test")


def builtin_tasks() -> list[str]:
    return sorted(p.parent.name for p in BUILTIN_DIR.glob("*/manifest.json"))


@cache
def manifest(task: str) -> dict[str, Any]:
    """The manifest of builtin ``task``; a clear error listing the builtin tasks otherwise."""
    path = BUILTIN_DIR / task / "manifest.json"
    if not path.is_file():
        raise ValueError(f"data.task: unknown builtin task {task!r}; builtin tasks: {builtin_tasks()}")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def split_files(task: str) -> dict[str, str]:
    """Paths of the JSONL files of builtin ``task``, by split (only the splits that exist)."""
    manifest(task)
    return {split: str(BUILTIN_DIR / task / f"{split}.jsonl") for split in SPLITS if (BUILTIN_DIR / task / f"{split}.jsonl").is_file()}

"""One module per builtin task, each with a ``build_<task>(out_dir) -> manifest`` function;
:func:`task_builders` is the registry the command line offers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dataset_build.tasks.amazon import build_amazon
from dataset_build.tasks.boolq import build_boolq
from dataset_build.tasks.ner import build_ner
from dataset_build.tasks.rte import build_rte
from dataset_build.tasks.sst2 import build_sst2
from dataset_build.tasks.vitaminc import build_vitaminc

TaskBuilder = Callable[[Path], dict[str, Any]]


def task_builders() -> dict[str, TaskBuilder]:
    """Registry of buildable tasks (``rte`` reads the built ``vitaminc``: build that first)."""
    return {
        "sst2": build_sst2,
        "amazon": build_amazon,
        "ner": build_ner,
        "boolq": build_boolq,
        "vitaminc": build_vitaminc,
        "rte": build_rte,
    }

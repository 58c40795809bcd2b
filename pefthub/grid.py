"""Experiment grids: ``pefthub grid -c configs/experiments/<name>.yaml``.

An experiment file expands **methods × tasks × backbones × seeds** (each method optionally
× its parameter budgets) into runs. Each run is an ordinary ``pefthub fit`` (with
``test_after_fit: true``) launched in a subprocess — one after another, ``--jobs N`` at once,
or as Ray tasks with ``--launcher ray`` — from a complete
config file the grid writes into the run's own directory, so any row of the results can be
repeated with ``pefthub fit -c runs/<experiment>/<run_id>/grid_config.yaml``.

Experiment file::

    name: fw_vs_adalora            # default: the file's stem; runs go to <runs_dir>/<name>/
    runs_dir: runs                 # default "runs" (relative to the working directory)
    seeds: [0, 1, 2]
    backbones: [minilm-l6]
    flops: true                    # measure the FLOP overhead (fvcore) at the end of training
    flop_seq_len: 128
    jobs: 1                        # runs at once on this machine (--jobs); see docs/grid.md
    launcher: local                # local | ray (--launcher)
    ray: {address: null, cpus_per_run: 1, gpus_per_run: 0, copy_back: false}
    tune: {params: {model.optimizer.lr: [1.0e-3, 3.0e-3]}}   # optional Optuna stage (pefthub.grid_tune)
    overrides:                     # dotted keys, applied to every run
      trainer.max_epochs: 3
      data.train_limit: 2000
    tasks:
      sst2:                        # the name used in run ids and the results table
        data:                      # optional: replaces the method config's `data` block
          class_path: pefthub.data.SentenceClassificationDataModule
          init_args: {task: sst2, max_length: 128, batch_size: 32}
        primary_metric: accuracy   # optional: default from the builtin task's manifest
        overrides: {}              # optional, dotted keys
    methods:
      lora:
        config: configs/lora/{task}.yaml   # a complete fit config; {task} is substituted
        overrides: {model.dropout: 0.05}   # optional
        budgets:                           # optional: one run per budget
          r2: {model.rank: 2, model.alpha: 4}
          r8: {model.rank: 8, model.alpha: 16}

A dotted key ``model.rank`` lands in ``model.init_args.rank`` (the ``class_path`` /
``init_args`` level is implied, as on LightningCLI's command line); ``trainer.max_epochs`` in
``trainer``. Overrides apply in the order: experiment, task, method, budget, ``--set``
(``--set fw_lora:model.warmup_steps=10`` applies to one method's runs).
Config paths are looked up relative to the working directory, then to the experiment file's
folder and its parents.

The grid owns a few keys of every run: ``seed_everything``, ``model.backbone``,
``test_after_fit``, the TensorBoard logger (``<runs_dir>/<name>/<run_id>/``, no version
folder), ``trainer.enable_progress_bar: false``, a checkpoint callback's ``monitor`` set to
``val/<primary metric>`` where the config monitors one, and two callbacks
(:mod:`pefthub.callbacks.grid_support`) for progress and FLOPs.

Restarts: a finished run leaves ``result.json`` (its row, plus a hash of its config); a
rerun of the grid skips it when the hash still matches and redoes it otherwise. An
unfinished or failed run's directory is cleared and the run starts again.

Results: ``<runs_dir>/<name>/results.csv`` (every finished run of the folder, whichever
invocation ran it) (and ``results.parquet`` with ``--parquet``),
one row per run: ids and axes, primary metric name and value, every ``test/*`` metric,
trainable parameters, adapter parameters and bytes (from the saved adapter files), FLOP
overhead, wall time, optimiser steps, median step time, and the hardware.

The code: :mod:`pefthub.grid_spec` (experiment files, expansion, checks),
:mod:`pefthub.grid_launch` (local and Ray launchers, the runner), :mod:`pefthub.grid_results`
(rows and the table), :mod:`pefthub.grid_tune` (the Optuna stage); this module is the command.
Full documentation with measured wall times: ``docs/grid.md``.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from pefthub.grid_launch import GridRunner, gpu_for_slot, threads_per_run
from pefthub.grid_results import (
    adapter_figures,
    collect_result,
    experiment_rows,
    hardware,
    read_scalars,
    write_results,
)
from pefthub.grid_spec import (
    AXES,
    CONFIG_NAME,
    EXPERIMENT_KEYS,
    FAILED_NAME,
    LAUNCHERS,
    LOG_NAME,
    PROGRESS_NAME,
    RESULT_NAME,
    RESULTS_NAME,
    GridConfigError,
    RunSpec,
    builtin_primary_metric,
    expand,
    load_experiment,
    set_dotted,
    validate,
)

__all__ = [
    "AXES", "CONFIG_NAME", "EXPERIMENT_KEYS", "FAILED_NAME", "LAUNCHERS", "LOG_NAME", "PROGRESS_NAME", "RESULT_NAME",
    "GridConfigError", "GridRunner", "RunSpec", "adapter_figures", "builtin_primary_metric", "collect_result",
    "expand", "experiment_rows", "gpu_for_slot", "hardware", "load_experiment", "main", "read_scalars", "set_dotted",
    "threads_per_run", "validate", "write_results",
]


def print_plan(runs: list[RunSpec], results: Path, runner: GridRunner, tuning: dict[str, str] | None = None) -> None:
    """The ``--dry-run`` listing: one line per run (with its status) and the command it runs;
    ``tuning``: the groups whose study is not done yet (their runs wait for it)."""
    print(f"{len(runs)} run(s); results -> {results}")
    tuning = tuning or {}
    for index, run in enumerate(runs, 1):
        if run.group in tuning:
            status = f"waits for tuning ({tuning[run.group]})"
        else:
            status = "finished" if runner.finished(run) is not None else "to run"
        print(f"[{index:>3}/{len(runs)}] {run.run_id:<56} {status:<30} primary metric: {run.primary_metric}")
    if runs:
        print("each run: " + " ".join(runner.command(runs[0])).replace(runs[0].run_id, "<run_id>"))


def _parse_set(items: list[str]) -> list[tuple[str, Any]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GridConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set data.train_limit=200")
        pairs.append((key.strip(), yaml.safe_load(value)))
    return pairs


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (a scheduler, `kill`): stop the runs in flight, as Ctrl-C does


def main(argv: list[str]) -> int:
    """``pefthub grid`` (see the module docstring and docs/grid.md); returns the exit code."""
    parser = argparse.ArgumentParser(prog="pefthub grid", description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", required=True, help="experiment YAML (configs/experiments/<name>.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (runs, status, command) and exit")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied last (YAML value), e.g. --set trainer.max_epochs=1; "
                        "METHOD:KEY=VALUE applies to one method's runs, e.g. --set fw_lora:model.warmup_steps=10")
    for axis in AXES:
        parser.add_argument(f"--{axis}", default=None, help=f"comma-separated subset of the experiment's {axis}")
    parser.add_argument("--name", default=None, help="experiment name (the runs folder); default: the file's `name`")
    parser.add_argument("--runs-dir", default=None, help="root folder of the runs (default: the file's runs_dir or ./runs)")
    parser.add_argument("--results", default=None, help="results CSV (default: <runs_dir>/<name>/results.csv)")
    parser.add_argument("--parquet", action="store_true", help="also write results.parquet (needs pyarrow)")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed run (runs in flight are stopped)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds after which one run is killed")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at once (default: the file's `jobs`, else 1 locally and all runs with Ray); "
                        "each local run gets OMP_NUM_THREADS = cores // jobs and, on GPUs, one GPU round-robin")
    parser.add_argument("--launcher", choices=LAUNCHERS, default=None, help="local processes or Ray tasks (default: the file's `launcher`, else local)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster to join (default: the file's ray.address, else RAY_ADDRESS, else a local instance)")
    parser.add_argument("--no-tune", action="store_true", help="skip the file's tuning stage (run the seeds with the configs' own values)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        if args.jobs is not None and args.jobs < 1:
            raise GridConfigError(f"--jobs must be >= 1, got {args.jobs}")
        experiment = load_experiment(args.config)
        only = {axis: getattr(args, axis).split(",") for axis in AXES if getattr(args, axis)}
        runs = expand(args.config, runs_dir=args.runs_dir, name=args.name, sets=_parse_set(args.set), only=only)
        tune = None
        if not args.no_tune:
            from pefthub.grid_tune import load_tune

            tune = load_tune(experiment.get("tune"), str(args.config), experiment["seeds"][0])
    except GridConfigError as error:
        print(f"pefthub grid: error: {error}", file=sys.stderr)
        return 2
    if not runs:
        print("pefthub grid: error: the selection leaves no run", file=sys.stderr)
        return 2
    try:
        validate(runs)
    except GridConfigError as error:
        print(f"pefthub grid: error: {error}", file=sys.stderr)
        return 2
    folder = runs[0].run_dir.parent
    results = Path(args.results) if args.results else folder / RESULTS_NAME
    ray_options = dict(experiment.get("ray") or {})
    if args.ray_address:
        ray_options["address"] = args.ray_address
    options = {"fail_fast": args.fail_fast, "timeout_s": args.timeout, "jobs": args.jobs or experiment.get("jobs"),
               "launcher": args.launcher or experiment.get("launcher", "local"), "ray_options": ray_options}
    runner = GridRunner(runs, results, parquet=args.parquet, progress=not args.no_progress, **options)
    if args.dry_run:
        tuning: dict[str, str] = {}
        if tune is not None:
            from pefthub.grid_tune import tuning_state

            runs, tuning = tuning_state(runs, tune, folder)
        print_plan(runs, results, runner, tuning)
        if tune is not None:
            print(f"tuning first: {sorted(tune.params)} over {tune.trials} trial(s) ({tune.sampler}) for each of "
                  f"{len({r.group for r in runs})} method/task/backbone group(s), a group's seed runs once its own "
                  f"study is done; studies in {folder / 'tuning.db'} ({len(tuning)} group(s) still tuning)")
        return 0
    previous = signal.signal(signal.SIGTERM, _interrupt) if _main_thread() else None
    try:
        if tune is not None:
            from pefthub.grid_tune import Tuner

            runner.tuner = Tuner(runs, tune, folder)
        rows = runner.run()
    except KeyboardInterrupt:
        print("pefthub grid: interrupted; rerun the same command to continue (finished runs are kept)", file=sys.stderr)
        return 130
    except GridConfigError as error:  # e.g. tune factors for a key a method's config lacks
        print(f"pefthub grid: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"pefthub grid: error: {error}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    failed = [r for r in rows if r.get("status") != "ok"]
    print(f"results: {results} ({len(rows) - len(failed)} finished, {len(failed)} failed)")
    return 1 if failed else 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()

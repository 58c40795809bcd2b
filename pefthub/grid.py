"""Experiment grids: ``pefthub grid -c configs/experiments/<name>.yaml``.

An experiment file expands **methods × tasks × backbones × seeds** (each method optionally
× its parameter budgets) into runs. Each run is an ordinary ``pefthub fit`` (with
``test_after_fit: true``) launched in a subprocess, one after another, from a complete
config file the grid writes into the run's own directory, so any row of the results can be
repeated with ``pefthub fit -c runs/<experiment>/<run_id>/grid_config.yaml``.

Experiment file::

    name: fw_vs_adalora            # default: the file's stem; runs go to <runs_dir>/<name>/
    runs_dir: runs                 # default "runs" (relative to the working directory)
    seeds: [0, 1, 2]
    backbones: [minilm-l6]
    flops: true                    # measure the FLOP overhead (fvcore) at the end of training
    flop_seq_len: 128
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

Results: ``<runs_dir>/<name>/results.csv`` (and ``results.parquet`` with ``--parquet``),
one row per run: ids and axes, primary metric name and value, every ``test/*`` metric,
trainable parameters, adapter parameters and bytes (from the saved adapter files), FLOP
overhead, wall time, optimiser steps, median step time, and the hardware.
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

AXES = ("methods", "budgets", "tasks", "backbones", "seeds")
CONFIG_NAME = "grid_config.yaml"
RESULT_NAME = "result.json"
FAILED_NAME = "failed.json"
PROGRESS_NAME = "progress.json"
LOG_NAME = "run.log"
BUILTIN_DIR = Path(__file__).resolve().parent / "data" / "builtin"
EXPERIMENT_KEYS = {"name", "description", "runs_dir", "seeds", "backbones", "tasks", "methods", "overrides", "flops", "flop_seq_len"}
TASK_KEYS = {"data", "primary_metric", "overrides"}
METHOD_KEYS = {"config", "overrides", "budgets", "label"}
FIXED_COLUMNS = [
    "experiment", "run_id", "method", "budget", "task", "backbone", "seed", "status",
    "primary_metric", "primary_value",
]
TAIL_COLUMNS = [
    "trainable_params", "adapter_params", "adapter_bytes", "flop_overhead", "host_flops", "adapted_flops",
    "flop_note", "wall_time_s", "steps", "median_step_time_s",
    "cpu", "cpu_cores", "omp_num_threads", "torch", "gpu", "run_dir", "config",
]


class GridConfigError(ValueError):
    """An experiment file that cannot be expanded; the message names the key and the fix."""


@dataclass
class RunSpec:
    """One run of the grid: its axes and the complete fit config it is launched with."""

    experiment: str
    method: str
    budget: str
    task: str
    backbone: str
    seed: int
    primary_metric: str
    run_dir: Path
    config: dict[str, Any] = field(repr=False)

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def config_hash(self) -> str:
        """Hash of the run's config without the paths that depend on where the grid lives."""
        portable = copy.deepcopy(self.config)
        portable["trainer"].pop("logger", None)
        callbacks = [c for c in portable["trainer"].get("callbacks") or [] if not str(c.get("class_path", "")).endswith("ProgressFile")]
        portable["trainer"]["callbacks"] = callbacks
        return hashlib.sha256(json.dumps(portable, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def axes(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment, "run_id": self.run_id, "method": self.method, "budget": self.budget,
            "task": self.task, "backbone": self.backbone, "seed": self.seed,
        }


# ---------------------------------------------------------------------- expansion


def set_dotted(config: dict[str, Any], key: str, value: Any) -> None:
    """``config[key] = value`` for a dotted key; a block with ``class_path`` takes the key
    under its ``init_args`` (so ``model.rank`` means ``model.init_args.rank``)."""
    parts = key.split(".")
    if not all(parts):
        raise GridConfigError(f"override key {key!r} is not a dotted key like 'data.train_limit'")
    node = config
    for depth, part in enumerate(parts):
        if isinstance(node, dict) and "class_path" in node and part not in ("class_path", "init_args"):
            node = node.setdefault("init_args", {})
        if depth == len(parts) - 1:
            node[part] = copy.deepcopy(value)
            return
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise GridConfigError(f"override {key!r}: {'.'.join(parts[: depth + 1])} is {child!r}, not a mapping")
        node = child


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridConfigError(f"{where} must be a mapping of dotted keys to values, got {type(value).__name__}")
    return value


def _check_keys(block: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise GridConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(allowed)}")


def _find_file(path: str, experiment_file: Path) -> Path:
    candidate = Path(path)
    if candidate.is_absolute():
        bases: list[Path] = [Path("/")]
    else:
        bases = [Path.cwd(), *experiment_file.resolve().parents]
    for base in bases:
        if (base / candidate).is_file():
            return (base / candidate).resolve()
    raise GridConfigError(f"{experiment_file}: config file {path!r} not found (looked in the working directory and above the experiment file)")


def builtin_primary_metric(task: str) -> str | None:
    """``primary_metric`` of a builtin task's manifest (``None`` for other tasks)."""
    manifest = BUILTIN_DIR / task / "manifest.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("primary_metric")
    return None


def _as_list(value: Any, where: str) -> list[Any]:
    if isinstance(value, list | tuple):
        if not value:
            raise GridConfigError(f"{where} is empty")
        return list(value)
    if value is None:
        raise GridConfigError(f"{where} is missing")
    return [value]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name))


def load_experiment(path: str | Path) -> dict[str, Any]:
    """Read and check an experiment file (keys, axes); raises :class:`GridConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise GridConfigError(f"experiment file {path} does not exist")
    experiment = yaml.safe_load(path.read_text()) or {}
    if not isinstance(experiment, dict):
        raise GridConfigError(f"{path}: an experiment file is a mapping (name, seeds, backbones, tasks, methods, ...)")
    _check_keys(experiment, EXPERIMENT_KEYS, str(path))
    for key in ("tasks", "methods"):
        if not isinstance(experiment.get(key), dict) or not experiment[key]:
            raise GridConfigError(f"{path}: `{key}` must be a non-empty mapping of names to settings")
    for name, task in experiment["tasks"].items():
        task = experiment["tasks"][name] = task or {}
        _check_keys(task, TASK_KEYS, f"{path}: tasks.{name}")
        if "data" in task and not (isinstance(task["data"], dict) and "class_path" in task["data"]):
            raise GridConfigError(f"{path}: tasks.{name}.data must be a data block with class_path and init_args")
    for name, method in experiment["methods"].items():
        if not isinstance(method, dict) or "config" not in method:
            raise GridConfigError(f"{path}: methods.{name} needs `config: <fit config path>` (may contain {{task}})")
        _check_keys(method, METHOD_KEYS, f"{path}: methods.{name}")
        budgets = method.get("budgets")
        if budgets is not None and (not isinstance(budgets, dict) or not budgets):
            raise GridConfigError(f"{path}: methods.{name}.budgets must be a non-empty mapping of budget names to overrides")
    experiment.setdefault("name", path.stem)
    experiment["seeds"] = [int(s) for s in _as_list(experiment.get("seeds", [0]), f"{path}: seeds")]
    experiment["backbones"] = [str(b) for b in _as_list(experiment.get("backbones"), f"{path}: backbones")]
    return experiment


def expand(
    experiment_file: str | Path,
    runs_dir: str | Path | None = None,
    name: str | None = None,
    sets: Iterable[tuple[str, Any]] = (),
    only: dict[str, list[str]] | None = None,
) -> list[RunSpec]:
    """The runs an experiment file describes, in execution order (task, backbone, method,
    budget, seed), each with its complete fit config.

    Args:
        experiment_file: the experiment YAML.
        runs_dir: root of the run directories (default: the file's ``runs_dir`` or ``runs``).
        name: experiment name (default: the file's ``name`` or stem).
        sets: extra ``(dotted key, value)`` overrides applied last (``--set``); a key
            ``<method>:<dotted key>`` applies to that method's runs only.
        only: restrict axes, e.g. ``{"methods": ["lora"], "seeds": ["0"]}`` (axes: methods,
            budgets, tasks, backbones, seeds; a method without budgets ignores ``budgets``).
    """
    experiment_file = Path(experiment_file)
    experiment = load_experiment(experiment_file)
    name = _safe(name or experiment["name"])
    root = Path(runs_dir or experiment.get("runs_dir") or "runs") / name
    sets = list(sets)
    for key, _ in sets:
        scope = key.rpartition(":")[0]
        if scope and scope not in experiment["methods"]:
            raise GridConfigError(f"--set {key}: {scope!r} is not one of the experiment's methods {list(experiment['methods'])}")
    only = {k: [str(v) for v in vs] for k, vs in (only or {}).items() if vs}
    for axis, chosen in only.items():
        if axis == "budgets":
            available = sorted({str(b) for m in experiment["methods"].values() for b in m.get("budgets") or {}})
        else:
            available = [str(v) for v in (experiment[axis] if axis in ("seeds", "backbones") else list(experiment[axis]))]
        missing = sorted(set(chosen) - set(available))
        if missing:
            raise GridConfigError(f"--{axis} {missing} not in the experiment's {axis} {available}")

    def chosen(axis: str, values: Iterable[Any]) -> list[Any]:
        return [v for v in values if axis not in only or str(v) in only[axis]]

    global_overrides = _mapping(experiment.get("overrides"), "overrides")
    flops = bool(experiment.get("flops", True))
    flop_seq_len = int(experiment.get("flop_seq_len", 128))
    runs: list[RunSpec] = []
    for task_name in chosen("tasks", experiment["tasks"]):
        task = experiment["tasks"][task_name]
        primary = task.get("primary_metric") or builtin_primary_metric(task_name)
        if primary is None:
            data_args = (task.get("data") or {}).get("init_args") or {}
            primary = data_args.get("primary_metric") or builtin_primary_metric(str(data_args.get("task", "")))
        if primary is None:
            raise GridConfigError(f"{experiment_file}: tasks.{task_name}: not a builtin task; set `primary_metric` (e.g. accuracy)")
        for backbone in chosen("backbones", experiment["backbones"]):
            for method_name in chosen("methods", experiment["methods"]):
                method = experiment["methods"][method_name]
                config_path = str(method["config"])
                if "{task}" not in config_path and "data" not in task:
                    raise GridConfigError(
                        f"{experiment_file}: methods.{method_name}.config has no {{task}} placeholder and "
                        f"tasks.{task_name} has no `data` block: the run would not know its data"
                    )
                base_file = _find_file(config_path.replace("{task}", task_name), experiment_file)
                base = yaml.safe_load(base_file.read_text()) or {}
                budgets = method.get("budgets") or {"": {}}
                if "budgets" in only and method.get("budgets"):
                    budgets = {b: o for b, o in budgets.items() if str(b) in only["budgets"]}
                for budget_name, budget_overrides in budgets.items():
                    for seed in chosen("seeds", experiment["seeds"]):
                        label = method_name + (f"_{budget_name}" if budget_name else "")
                        run_id = _safe(f"{label}__{task_name}__{backbone}__s{seed}")
                        config = copy.deepcopy(base)
                        if "data" in task:
                            config["data"] = copy.deepcopy(task["data"])
                        layers = [
                            ("overrides", global_overrides),
                            (f"tasks.{task_name}.overrides", _mapping(task.get("overrides"), f"tasks.{task_name}.overrides")),
                            (f"methods.{method_name}.overrides", _mapping(method.get("overrides"), f"methods.{method_name}.overrides")),
                            (f"methods.{method_name}.budgets.{budget_name}", _mapping(budget_overrides, f"methods.{method_name}.budgets.{budget_name}")),
                        ]
                        for _, overrides in layers:
                            for key, value in overrides.items():
                                set_dotted(config, str(key), value)
                        for key, value in sets:
                            scope, _, dotted = key.rpartition(":")
                            if not scope or scope == method_name:
                                set_dotted(config, dotted, value)
                        run_dir = root / run_id
                        _own_keys(config, backbone, seed, primary, run_dir, flops, flop_seq_len, base_file)
                        runs.append(
                            RunSpec(
                                experiment=name, method=method_name, budget=str(budget_name), task=task_name,
                                backbone=backbone, seed=int(seed), primary_metric=primary, run_dir=run_dir, config=config,
                            )
                        )
    return runs


def _own_keys(
    config: dict[str, Any], backbone: str, seed: int, primary: str, run_dir: Path, flops: bool, flop_seq_len: int, base_file: Path
) -> None:
    """Set the keys the grid owns in every run's config (see the module docstring)."""
    for block in ("model", "data", "trainer"):
        if not isinstance(config.get(block), dict):
            raise GridConfigError(f"{base_file}: a grid run needs a complete fit config with a `{block}` block")
    config["seed_everything"] = int(seed)
    config["test_after_fit"] = True
    set_dotted(config, "model.backbone", backbone)
    trainer = config["trainer"]
    trainer["enable_progress_bar"] = False
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": str(run_dir.parent), "name": run_dir.name, "version": ""},
    }
    callbacks = [copy.deepcopy(c) for c in trainer.get("callbacks") or []]
    for callback in callbacks:
        args = callback.get("init_args") if isinstance(callback, dict) else None
        if isinstance(args, dict) and args.get("monitor"):
            args["monitor"] = f"val/{primary}"
    callbacks.append({"class_path": "pefthub.callbacks.grid_support.ProgressFile", "init_args": {"path": str(run_dir / PROGRESS_NAME)}})
    if flops:
        callbacks.append({"class_path": "pefthub.callbacks.grid_support.FlopOverhead", "init_args": {"seq_len": flop_seq_len}})
    trainer["callbacks"] = callbacks


def validate(runs: list[RunSpec]) -> None:
    """Parse every run's config with ``pefthub fit``'s own parser (LightningCLI/jsonargparse:
    class paths, argument names and types) without instantiating anything, so a typo in an
    override fails before the first run rather than in the middle of the grid."""
    from jsonargparse import ArgumentError

    parser = _fit_parser()
    for run in runs:
        try:
            parser.parse_object(copy.deepcopy(run.config))
        except (ArgumentError, SystemExit, TypeError, ValueError) as error:
            first = str(error).strip().splitlines()[:6]
            raise GridConfigError(f"run {run.run_id}: its config does not parse as a `pefthub fit` config: " + " | ".join(first)) from error


@functools.lru_cache(maxsize=1)
def _fit_parser():
    """`pefthub fit`'s parser (built once per process: ~1 s)."""
    from jsonargparse import Namespace

    from pefthub.cli import PEFTHubCLI
    from pefthub.data.base import TaskDataModule
    from pefthub.methods.base import PEFTModule

    class _ParserOnly(PEFTHubCLI):
        """Builds `pefthub fit`'s parser (run=False: no subcommand level) and stops there."""

        def parse_arguments(self, parser, args) -> None:
            self.config = Namespace()

        def _set_seed(self) -> None:
            pass

        def before_instantiate_classes(self) -> None:
            pass

        def instantiate_classes(self) -> None:
            pass

    cli = _ParserOnly(PEFTModule, TaskDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                      auto_configure_optimizers=False)
    cli.parser.exit_on_error = False
    return cli.parser


# ---------------------------------------------------------------------- reading a finished run


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files directly under ``log_dir``:
    ``{tag: [(step, value), ...]}`` in logging order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, float(e.value)) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def adapter_figures(adapter_dir: Path) -> dict[str, Any]:
    """Bytes on disk of the saved adapter and the number of adapter scalars in it (the task
    head excluded)."""
    from safetensors import safe_open

    from pefthub.adapters.io import CONFIG_NAME as ADAPTER_CONFIG
    from pefthub.adapters.io import WEIGHTS_NAME

    weights = adapter_dir / WEIGHTS_NAME
    if not weights.is_file():
        return {}
    params = 0
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            if not key.startswith("head."):
                shape = handle.get_slice(key).get_shape()
                count = 1
                for size in shape:
                    count *= int(size)
                params += count
    size = weights.stat().st_size + (adapter_dir / ADAPTER_CONFIG).stat().st_size
    return {"adapter_params": params, "adapter_bytes": size}


def hardware(config: dict[str, Any] | None = None) -> dict[str, Any]:
    """CPU model and cores, OMP_NUM_THREADS, torch version, and the GPU name when the run asked for one."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = ""
    gpu = ""
    accelerator = str(((config or {}).get("trainer") or {}).get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda", "auto"):
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    threads = os.environ.get("OMP_NUM_THREADS", "")  # the runs inherit it; empty: torch's default (all cores)
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "omp_num_threads": threads, "torch": torch_version, "gpu": gpu}


def collect_result(run: RunSpec, wall_time_s: float) -> dict[str, Any]:
    """The results row of a finished run, from its TensorBoard events and adapter files."""
    scalars = read_scalars(run.run_dir)
    tests = {tag: values[-1][1] for tag, values in scalars.items() if tag.startswith("test/")}
    if not tests:
        raise RuntimeError(f"{run.run_dir}: no test/* metric in the event files (did test_after_fit run?)")
    primary_tag = f"test/{run.primary_metric}"
    if primary_tag not in tests:
        raise RuntimeError(f"{run.run_dir}: primary metric {primary_tag} not logged (logged: {sorted(tests)})")

    def last(tag: str) -> float | None:
        return scalars[tag][-1][1] if tag in scalars else None

    steps = max(step for step, _ in scalars[primary_tag])
    step_times = [v for _, v in scalars.get("train/step_time_s", [])]
    row: dict[str, Any] = {
        **run.axes(),
        "status": "ok",
        "primary_metric": run.primary_metric,
        "primary_value": tests[primary_tag],
        **dict(sorted(tests.items())),
        "trainable_params": last("budget/trainable_params"),
        **adapter_figures(run.run_dir / "adapter"),
        "flop_overhead": last("budget/flop_overhead"),
        "host_flops": last("budget/host_flops"),
        "adapted_flops": last("budget/adapted_flops"),
        "flop_note": "",
        "wall_time_s": round(wall_time_s, 3),
        "steps": steps,
        "median_step_time_s": statistics.median(step_times) if step_times else None,
        **hardware(run.config),
        "run_dir": str(run.run_dir),
        "config": str(run.run_dir / CONFIG_NAME),
    }
    if row["flop_overhead"] is None:
        flops_on = any(str(c.get("class_path", "")).endswith("FlopOverhead") for c in run.config["trainer"]["callbacks"])
        row["flop_note"] = "fvcore measurement failed (see run.log)" if flops_on else "not measured (flops: false)"
    for tag in sorted(scalars):
        if tag.startswith("budget/") and tag.split("/", 1)[1] not in row and tag not in ("budget/flop_seq_len",):
            row[tag] = last(tag)
    return row


# ---------------------------------------------------------------------- running


class GridRunner:
    """Runs the expanded grid sequentially, skipping finished runs, and writes the results."""

    def __init__(self, runs: list[RunSpec], results: Path, parquet: bool = False, fail_fast: bool = False,
                 timeout_s: float | None = None, python: str | None = None, progress: bool = True) -> None:
        self.runs = runs
        self.results = results
        self.parquet = parquet
        self.fail_fast = fail_fast
        self.timeout_s = timeout_s
        self.python = python or sys.executable
        self.progress = progress

    @staticmethod
    def finished(run: RunSpec) -> dict[str, Any] | None:
        """The stored row when ``run`` finished with the same config, else ``None``."""
        marker = run.run_dir / RESULT_NAME
        if not marker.is_file():
            return None
        stored = json.loads(marker.read_text())
        if stored.get("config_hash") != run.config_hash:
            return None
        return stored["row"]

    def command(self, run: RunSpec) -> list[str]:
        return [self.python, "-m", "pefthub.cli", "fit", "-c", str(run.run_dir / CONFIG_NAME)]

    def run_one(self, run: RunSpec, inner) -> dict[str, Any]:
        if run.run_dir.exists():
            shutil.rmtree(run.run_dir)  # an unfinished, failed or outdated attempt
        run.run_dir.mkdir(parents=True)
        (run.run_dir / CONFIG_NAME).write_text(
            f"# written by `pefthub grid` for run {run.run_id}; repeat with: pefthub fit -c {run.run_dir / CONFIG_NAME}\n"
            + yaml.safe_dump(run.config, sort_keys=False)
        )
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        start = time.perf_counter()
        with open(run.run_dir / LOG_NAME, "w") as log:
            process = subprocess.Popen(self.command(run), stdout=log, stderr=subprocess.STDOUT, env=env)
            code = None
            while code is None:
                try:
                    code = process.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    if self.timeout_s is not None and time.perf_counter() - start > self.timeout_s:
                        process.kill()
                        code = process.wait()
                        break
                self._update_inner(run, inner)
        wall = time.perf_counter() - start
        if code != 0:
            tail = (run.run_dir / LOG_NAME).read_text(errors="replace")[-2000:]
            failure = {"returncode": code, "wall_time_s": wall, "log_tail": tail}
            (run.run_dir / FAILED_NAME).write_text(json.dumps(failure, indent=2))
            return {**run.axes(), "status": f"failed (exit {code})", "wall_time_s": round(wall, 3), "run_dir": str(run.run_dir)}
        row = collect_result(run, wall)
        (run.run_dir / RESULT_NAME).write_text(json.dumps({"config_hash": run.config_hash, "row": row}, indent=2, default=str))
        return row

    @staticmethod
    def _update_inner(run: RunSpec, inner) -> None:
        if inner is None:
            return
        try:
            state = json.loads((run.run_dir / PROGRESS_NAME).read_text())
        except (OSError, ValueError):
            return
        if state.get("total") and inner.total != state["total"]:
            inner.reset(total=state["total"])
        inner.n = state.get("step", 0)
        inner.set_postfix_str(state.get("stage", ""), refresh=False)
        inner.refresh()

    def run(self) -> list[dict[str, Any]]:
        from tqdm.auto import tqdm

        rows: list[dict[str, Any]] = []
        failures = 0
        outer = tqdm(total=len(self.runs), desc="grid", unit="run", position=0, disable=not self.progress)
        for run in self.runs:
            stored = self.finished(run)
            if stored is not None:
                rows.append(stored)
                outer.write(f"skip  {run.run_id} (finished: {run.primary_metric}={stored['primary_value']:.4f})")
                outer.update(1)
                continue
            inner = tqdm(total=None, desc=run.run_id[:48], unit="step", position=1, leave=False, disable=not self.progress)
            try:
                row = self.run_one(run, inner)
            finally:
                inner.close()
            rows.append(row)
            if row["status"] == "ok":
                outer.write(f"done  {run.run_id}: {run.primary_metric}={row['primary_value']:.4f} in {row['wall_time_s']:.1f} s")
            else:
                failures += 1
                outer.write(f"FAIL  {run.run_id}: {row['status']}; log: {run.run_dir / LOG_NAME}")
            outer.update(1)
            write_results(rows, self.results, self.parquet)
            if failures and self.fail_fast:
                break
        outer.close()
        write_results(rows, self.results, self.parquet)
        return rows


def write_results(rows: list[dict[str, Any]], path: Path, parquet: bool = False) -> None:
    """One CSV (and optionally Parquet) with a fixed column order: the axes, the primary
    metric, every ``test/*`` metric, the budgets, timings and hardware, then other figures."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    tests = sorted(k for k in seen if k.startswith("test/"))
    columns = FIXED_COLUMNS + tests + TAIL_COLUMNS
    columns += sorted(k for k in seen if k not in columns)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    os.replace(tmp, path)
    if parquet:
        import pandas as pd

        pd.read_csv(path).to_parquet(path.with_suffix(".parquet"), index=False)


def print_plan(runs: list[RunSpec], results: Path, runner: GridRunner) -> None:
    """The ``--dry-run`` listing: one line per run (with its status) and the command it runs."""
    print(f"{len(runs)} run(s); results -> {results}")
    for index, run in enumerate(runs, 1):
        status = "finished" if runner.finished(run) is not None else "to run"
        print(f"[{index:>3}/{len(runs)}] {run.run_id:<56} {status:<9} primary metric: {run.primary_metric}")
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


def main(argv: list[str]) -> int:
    """``pefthub grid`` (see the module docstring); returns the exit code."""
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
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failed run")
    parser.add_argument("--timeout", type=float, default=None, help="seconds after which one run is killed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        only = {axis: getattr(args, axis).split(",") for axis in AXES if getattr(args, axis)}
        runs = expand(args.config, runs_dir=args.runs_dir, name=args.name, sets=_parse_set(args.set), only=only)
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
    results = Path(args.results) if args.results else runs[0].run_dir.parent / "results.csv"
    runner = GridRunner(runs, results, parquet=args.parquet, fail_fast=args.fail_fast, timeout_s=args.timeout,
                        progress=not args.no_progress)
    if args.dry_run:
        print_plan(runs, results, runner)
        return 0
    rows = runner.run()
    failed = [r for r in rows if r.get("status") != "ok"]
    print(f"results: {results} ({len(rows) - len(failed)} finished, {len(failed)} failed)")
    return 1 if failed else 0

"""Experiment files and their expansion into runs (the first half of ``pefthub grid``).

:func:`load_experiment` reads and checks an experiment file; :func:`expand` turns it into
:class:`RunSpec` objects, each holding the complete ``pefthub fit`` config of one run;
:func:`validate` parses every config with ``pefthub fit``'s own parser before anything runs.
The file format is documented in ``docs/grid.md``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

AXES = ("methods", "budgets", "tasks", "backbones", "seeds")
CONFIG_NAME = "grid_config.yaml"
RESULT_NAME = "result.json"
FAILED_NAME = "failed.json"
PROGRESS_NAME = "progress.json"
LOG_NAME = "run.log"
RESULTS_NAME = "results.csv"  # the experiment folder's table of finished runs (pefthub grid --results)
BUILTIN_DIR = Path(__file__).resolve().parent / "data" / "builtin"
EXPERIMENT_KEYS = {
    "name", "runs_dir", "seeds", "backbones", "tasks", "methods", "overrides", "flops", "flop_seq_len",
    "jobs", "launcher", "ray", "tune",
}
LAUNCHERS = ("local", "ray")
RAY_KEYS = {"address", "cpus_per_run", "gpus_per_run", "copy_back"}
TASK_KEYS = {"data", "primary_metric", "overrides"}
METHOD_KEYS = {"config", "overrides", "budgets"}
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
    extra: dict[str, Any] = field(default_factory=dict)  # more columns for the results row (e.g. the tuned values)

    @property
    def run_id(self) -> str:
        return self.run_dir.name

    @property
    def group(self) -> str:
        """The run id without the seed: the runs that differ only by seed (one tuning study each)."""
        return self.run_id.rsplit("__s", 1)[0]

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
    if "jobs" in experiment and not (isinstance(experiment["jobs"], int) and not isinstance(experiment["jobs"], bool) and experiment["jobs"] >= 1):
        raise GridConfigError(f"{path}: jobs must be a whole number >= 1 (runs at once on this machine), got {experiment['jobs']!r}")
    if experiment.get("launcher", "local") not in LAUNCHERS:
        raise GridConfigError(f"{path}: launcher must be one of {list(LAUNCHERS)}, got {experiment['launcher']!r}")
    ray_block = experiment.get("ray")
    if ray_block is not None:
        if not isinstance(ray_block, dict):
            raise GridConfigError(f"{path}: ray must be a mapping with some of {sorted(RAY_KEYS)}")
        _check_keys(ray_block, RAY_KEYS, f"{path}: ray")
        for key in ("cpus_per_run", "gpus_per_run"):
            value = ray_block.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
                raise GridConfigError(f"{path}: ray.{key} must be a number >= 0 (fractions share a device), got {value!r}")
    if experiment.get("tune") is not None and not isinstance(experiment["tune"], dict):
        raise GridConfigError(f"{path}: tune must be a mapping (params, trials, ...; see docs/grid.md)")
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

    from pefthub.cli_lightning import PEFTHubCLI
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

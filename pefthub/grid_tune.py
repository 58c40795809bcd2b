"""The grid's tuning stage: an Optuna search per method (per method × budget × task × backbone)
on validation, whose best values the seed runs are then trained and tested with.

Experiment file::

    tune:
      params:                       # dotted keys, as in `overrides`
        model.optimizer.lr: {low: 1.0e-4, high: 3.0e-2, log: true}   # a float range
        model.dropout: [0.0, 0.1]                                   # or a list of choices
        model.optimizer.lr: {factors: [0.3333, 1, 3]}   # or multiples of each group's own configured value
      trials: 8                     # per study (default: every combination for `grid`, else 8)
      sampler: tpe                  # tpe | random | grid (grid: lists only; every combination once, in order)
      seed: 0                       # the trials' training seed and the sampler's seed (default: the first seed)
      metric: val/accuracy          # default: val/<the task's primary metric>
      direction: maximize           # maximize | minimize

Each study lives in ``<runs_dir>/<name>/tuning.db`` (SQLite; ``load_if_exists``), so a rerun
continues it: finished trials are kept, a trial left running by a killed grid is run again
with its suggested values, and raising ``trials`` adds trials. A trial is an ordinary
``pefthub fit`` without the test (``<runs_dir>/<name>/tuning/<study>__tNNN/``) scored by the best
value of ``metric`` over its validations (the checkpoint the test would load). Every trial is
listed in ``tuning.csv``; each seed run's row carries ``tuned/<key>``, ``tune_metric``,
``tune_value`` and ``tune_trials``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import functools
import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pefthub.events import read_scalars
from pefthub.grid_spec import PROGRESS_NAME, GridConfigError, RunSpec, set_dotted

TUNE_KEYS = {"params", "trials", "sampler", "seed", "metric", "direction"}
SAMPLERS = ("tpe", "random", "grid")
DIRECTIONS = ("maximize", "minimize")
RANGE_KEYS = {"low", "high", "log"}
FACTOR_KEYS = {"factors"}
DB_NAME = "tuning.db"
TRIALS_NAME = "tuning.csv"


@dataclass(frozen=True)
class TuneSpec:
    """A checked ``tune:`` block."""

    params: dict[str, Any]
    trials: int
    sampler: str
    seed: int
    metric: str | None
    direction: str

    def key(self) -> str:
        """What the search is (``trials`` aside: raising it continues the same study)."""
        search = {k: v for k, v in dataclasses.asdict(self).items() if k != "trials"}
        return hashlib.sha256(json.dumps(search, sort_keys=True, default=str).encode()).hexdigest()[:8]


def load_tune(block: Any, where: str, default_seed: int) -> TuneSpec | None:
    """Check a ``tune:`` block; ``None`` when there is none. Bad input raises
    :class:`GridConfigError` naming the key and what it expects."""
    if block is None:
        return None
    if not isinstance(block, dict):
        raise GridConfigError(f"{where}: tune must be a mapping with some of {sorted(TUNE_KEYS)}")
    unknown = sorted(set(block) - TUNE_KEYS)
    if unknown:
        raise GridConfigError(f"{where}: tune: unknown key(s) {unknown}; expected some of {sorted(TUNE_KEYS)}")
    params = block.get("params")
    if not isinstance(params, dict) or not params:
        raise GridConfigError(f"{where}: tune.params must be a non-empty mapping of dotted keys to a list of values or {{low, high, log}}")
    for key, space in params.items():
        at = f"{where}: tune.params.{key}"
        if isinstance(space, list):
            if not space:
                raise GridConfigError(f"{at} is an empty list; expected the values to try")
        elif isinstance(space, dict) and "factors" in space:
            factors = space["factors"]
            if set(space) != FACTOR_KEYS or not isinstance(factors, list) or not factors or not all(
                isinstance(f, int | float) and not isinstance(f, bool) and f > 0 for f in factors
            ):
                raise GridConfigError(f"{at} must be {{factors: [<number > 0>, ...]}} (multiples of the configured value), got {space!r}")
        elif isinstance(space, dict):
            if set(space) - RANGE_KEYS or not {"low", "high"} <= set(space):
                raise GridConfigError(f"{at} must be {{low: <number>, high: <number>, log: <bool>}}, got keys {sorted(space)}")
            low, high = space["low"], space["high"]
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)) or not low < high:
                raise GridConfigError(f"{at}: expected numbers with low < high, got low={low!r} high={high!r}")
            if not isinstance(space.get("log", False), bool) or (space.get("log") and low <= 0):
                raise GridConfigError(f"{at}.log must be true or false, and a log range needs low > 0")
        else:
            raise GridConfigError(f"{at} must be a list of values or {{low, high, log}}, got {type(space).__name__}")
    sampler = block.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise GridConfigError(f"{where}: tune.sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    if sampler == "grid" and not all(isinstance(s, list) or "factors" in s for s in params.values()):
        raise GridConfigError(f"{where}: tune.sampler grid needs every tune.params entry to be a list of values or factors")
    combinations = math.prod(len(_choices(s)) for s in params.values()) if sampler == "grid" else 8
    trials = block.get("trials", combinations)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise GridConfigError(f"{where}: tune.trials must be a whole number >= 1, got {trials!r}")
    direction = block.get("direction", "maximize")
    if direction not in DIRECTIONS:
        raise GridConfigError(f"{where}: tune.direction must be one of {list(DIRECTIONS)}, got {direction!r}")
    metric = block.get("metric")
    if metric is not None and not (isinstance(metric, str) and metric.startswith("val/")):
        raise GridConfigError(f"{where}: tune.metric must be a validation metric like 'val/accuracy', got {metric!r}")
    seed = block.get("seed", default_seed)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise GridConfigError(f"{where}: tune.seed must be a whole number, got {seed!r}")
    return TuneSpec(params=dict(params), trials=trials, sampler=sampler, seed=seed, metric=metric, direction=direction)


def _choices(space: Any) -> list[Any]:
    return space["factors"] if isinstance(space, dict) else space


def get_dotted(config: dict[str, Any], key: str) -> Any:
    """The value a dotted key names (``model.rank`` reads ``model.init_args.rank``, as
    :func:`pefthub.grid_spec.set_dotted` writes it); ``None`` when absent."""
    node: Any = config
    for part in key.split("."):
        if isinstance(node, dict) and "class_path" in node and part not in ("class_path", "init_args"):
            node = node.get("init_args") or {}
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def resolve_factors(spec: TuneSpec, base: RunSpec) -> TuneSpec:
    """``spec`` with every ``{factors: [...]}`` space turned into the list of ``factor × value``,
    ``value`` being what the group's config sets for that key (rounded to 4 significant digits):
    "three learning rates around each method's own" in one block for every method."""
    params = {}
    for key, space in spec.params.items():
        if isinstance(space, dict) and "factors" in space:
            value = get_dotted(base.config, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise GridConfigError(
                    f"tune.params.{key}: factors multiply the configured value, but the config of {base.group} "
                    f"sets {key} to {value!r}; set a number there (or give this key a list / range)"
                )
            space = [float(f"{value * factor:.4g}") for factor in space["factors"]]
        params[key] = space
    return dataclasses.replace(spec, params=params)


def _sampler(spec: TuneSpec):
    import optuna

    if spec.sampler in ("grid", "random"):  # grid: every combination is enqueued (see tune_runs)
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed)


def _suggest(trial, spec: TuneSpec) -> dict[str, Any]:
    values = {}
    for key, space in spec.params.items():
        if isinstance(space, list):
            values[key] = trial.suggest_categorical(key, space)
        else:
            values[key] = trial.suggest_float(key, float(space["low"]), float(space["high"]), log=bool(space.get("log", False)))
    return values


def study_name(base: RunSpec, spec: TuneSpec) -> str:
    """``<group>-<hash>``: the hash covers the group's config (seed aside) and the tune block,
    so changing either starts a new study instead of mixing trials of different searches."""
    unseeded = dataclasses.replace(base, config={**base.config, "seed_everything": None})
    key = hashlib.sha256((unseeded.config_hash + spec.key()).encode()).hexdigest()[:8]
    return f"{base.group}-{key}"


def trial_run(base: RunSpec, name: str, number: int, values: dict[str, Any], spec: TuneSpec, folder: Path) -> RunSpec:
    """The run of one trial: the group's config with the trial's values and the tuning seed,
    validation only (no test), logging into its own folder under ``tuning/``."""
    config = copy.deepcopy(base.config)
    for key, value in values.items():
        set_dotted(config, key, value)
    config["seed_everything"] = spec.seed
    config["test_after_fit"] = False
    run_dir = folder / "tuning" / f"{name}__t{number:03d}"
    trainer = config["trainer"]
    trainer["logger"]["init_args"].update(save_dir=str(run_dir.parent), name=run_dir.name)
    callbacks = []
    for callback in trainer["callbacks"]:
        path = str(callback.get("class_path", ""))
        if path.endswith("FlopOverhead"):
            continue
        if path.endswith("ProgressFile"):
            callback = {**callback, "init_args": {**callback["init_args"], "path": str(run_dir / PROGRESS_NAME)}}
        callbacks.append(callback)
    trainer["callbacks"] = callbacks
    extra = {"group": base.group, "study": name, "trial": number, **{f"param/{k}": v for k, v in values.items()}}
    return dataclasses.replace(base, seed=spec.seed, run_dir=run_dir, config=config, extra=extra)


def trial_result(run: RunSpec, wall_time_s: float, threads: int | None, metric: str, direction: str) -> dict[str, Any]:
    """A trial's row: the best value of ``metric`` over its validations."""
    values = [v for _, v in read_scalars(run.run_dir).get(metric, [])]
    if not values:
        raise RuntimeError(f"{run.run_dir}: {metric} was never logged")
    best = max(values) if direction == "maximize" else min(values)
    return {**run.axes(), "status": "ok", "primary_metric": metric, "primary_value": best,
            "wall_time_s": round(wall_time_s, 3), "run_dir": str(run.run_dir), **run.extra}


class Tuner:
    """The tuning stage as work for the grid's slots (:class:`pefthub.grid_launch.GridRunner`).

    One Optuna study per group of runs (method × budget × task × backbone). A trial is asked
    when a slot frees, not in rounds, and a group's seed runs are released as soon as its own
    study is done, so one group trains its seeds while another is still tuning and no slot
    waits for the slowest trial of a round.

    Args:
        runs: the grid's runs (their seeds are the test runs; the trials use ``spec.seed``).
        spec: the checked ``tune:`` block.
        folder: the experiment folder (``tuning.db``, ``tuning.csv``, ``tuning/``).
    """

    def __init__(self, runs: list[RunSpec], spec: TuneSpec, folder: Path) -> None:
        try:
            import optuna
        except ImportError as error:
            raise RuntimeError("the tuning stage needs Optuna: pip install 'pefthub[cluster]'") from error
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.spec = spec
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(folder / DB_NAME).resolve()}"
        self.bases: dict[str, RunSpec] = {}
        for run in runs:
            self.bases.setdefault(run.group, run)
        self.names = {group: study_name(base, spec) for group, base in self.bases.items()}
        self.group_specs = {group: resolve_factors(spec, base) for group, base in self.bases.items()}
        self.studies = {
            group: optuna.create_study(study_name=self.names[group], storage=storage, direction=spec.direction,
                                       sampler=_sampler(spec), load_if_exists=True)
            for group in self.bases
        }
        if spec.sampler == "grid":  # Optuna's GridSampler stops the study from inside `tell`, which ask/tell cannot take
            for group, study in self.studies.items():
                params_of = self.group_specs[group].params
                combinations = [dict(zip(params_of, values, strict=True)) for values in itertools.product(*params_of.values())]
                for params in combinations[: spec.trials]:
                    study.enqueue_trial(params, skip_if_exists=True)
        states = optuna.trial.TrialState
        self._states = states
        self._finished = (states.COMPLETE, states.PRUNED, states.FAIL)
        self._spent = (*self._finished, states.RUNNING)  # a WAITING (enqueued) trial is not spent
        self._rerun: dict[str, list[tuple[int, dict[str, Any]]]] = {group: [] for group in self.bases}
        for group, study in self.studies.items():  # trials a killed grid left running: run them again
            for trial in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
                if set(trial.params) == set(spec.params):
                    self._rerun[group].append((trial.number, dict(trial.params)))
                else:
                    study.tell(trial.number, state=states.FAIL)
        self._in_flight = dict.fromkeys(self.bases, 0)

    def metric(self, run: RunSpec) -> str:
        return self.spec.metric or f"val/{run.primary_metric}"

    def trial_count(self) -> int:
        """Trials still to run over every study (an upper bound on the stage's work)."""
        return sum(max(0, self.spec.trials - len(s.get_trials(deepcopy=False, states=self._finished))) for s in self.studies.values())

    def done(self, group: str) -> bool:
        """Every trial of ``group``'s study has run (finished or failed) and none is in flight."""
        spent = self.studies[group].get_trials(deepcopy=False, states=self._spent)
        return not self._in_flight[group] and not self._rerun[group] and len(spent) >= self.spec.trials

    def next_trial(self, group: str) -> RunSpec | None:
        """The run of ``group``'s next trial (a left-over one first), or ``None`` when the study
        has asked all its trials (some may still be in flight)."""
        study = self.studies[group]
        if self._rerun[group]:
            number, values = self._rerun[group].pop(0)
        elif len(study.get_trials(deepcopy=False, states=self._spent)) < self.spec.trials:
            trial = study.ask()
            number, values = trial.number, _suggest(trial, self.group_specs[group])
        else:
            return None
        self._in_flight[group] += 1
        return trial_run(self.bases[group], self.names[group], number, values, self.spec, self.folder)

    def collect(self, run: RunSpec, wall_time_s: float, threads: int | None) -> dict[str, Any]:
        """A finished trial's row (see :func:`trial_result`)."""
        return trial_result(run, wall_time_s, threads, self.metric(run), self.spec.direction)

    def finish(self, run: RunSpec, row: dict[str, Any]) -> str:
        """Tell the study a trial's outcome (``row`` from the runner); returns the line to show."""
        group, number = run.extra["group"], run.extra["trial"]
        self._in_flight[group] -= 1
        values = {k.removeprefix("param/"): v for k, v in run.extra.items() if k.startswith("param/")}
        shown = " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        if row.get("status") == "ok":
            self.studies[group].tell(number, float(row["primary_value"]))
            line = f"trial {group} #{number}: {shown} -> {self.metric(run)}={row['primary_value']:.4f}"
        else:
            self.studies[group].tell(number, state=self._states.FAIL)
            line = f"trial {group} #{number}: {shown} failed; log: {run.run_dir / 'run.log'}"
        self.write_trials()
        return line

    def apply(self, runs: list[RunSpec]) -> tuple[list[RunSpec], str]:
        """``runs`` of one finished study with its best values applied and recorded as extra
        columns, and the line to show; ``RuntimeError`` when no trial finished."""
        group = runs[0].group
        study = self.studies[group]
        complete = study.get_trials(deepcopy=False, states=(self._states.COMPLETE,))
        if not complete:
            raise RuntimeError(f"tuning {group}: no trial finished (logs under {self.folder / 'tuning'})")
        best = study.best_trial
        tuned = with_best(runs, study, self.names[group], self.spec)
        return tuned, f"tuned {group}: {best.params} ({self.metric(runs[0])}={best.value:.4f}, trial #{best.number})"

    def write_trials(self) -> None:
        write_trials(self.studies, self.names, self.folder)


def with_best(runs: list[RunSpec], study: Any, name: str, spec: TuneSpec) -> list[RunSpec]:
    """``runs`` (one group) with the study's best values set and recorded as extra columns."""
    import optuna

    best = study.best_trial
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    tuned = []
    for run in runs:
        config = copy.deepcopy(run.config)
        for key, value in best.params.items():
            set_dotted(config, key, value)
        extra = {**run.extra, **{f"tuned/{k}": v for k, v in best.params.items()},
                 "tune_metric": spec.metric or f"val/{run.primary_metric}", "tune_value": best.value,
                 "tune_trials": len(complete), "tune_study": name}
        tuned.append(dataclasses.replace(run, config=config, extra=extra))
    return tuned


def tuning_state(runs: list[RunSpec], spec: TuneSpec, folder: Path) -> tuple[list[RunSpec], dict[str, str]]:
    """What ``tuning.db`` already settles, read without changing it (for ``--dry-run``): ``runs``
    with the values of each finished study applied, and each group still tuning -> ``"k/N trials"``."""
    try:
        import optuna
    except ImportError:
        return runs, {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = folder / DB_NAME
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    out, tuning = list(runs), {}
    for group in dict.fromkeys(run.group for run in runs):
        members = [run for run in runs if run.group == group]
        name = study_name(members[0], spec)
        try:
            study = optuna.load_study(study_name=name, storage=f"sqlite:///{path.resolve()}") if path.is_file() else None
        except KeyError:  # no such study yet
            study = None
        done = study.get_trials(deepcopy=False, states=finished) if study is not None else []
        if len(done) < spec.trials or not any(t.state == optuna.trial.TrialState.COMPLETE for t in done):
            tuning[group] = f"{len(done)}/{spec.trials} trials"
            continue
        by_id = {run.run_id: run for run in with_best(members, study, name, spec)}
        out = [by_id.get(run.run_id, run) for run in out]
    return out, tuning


def write_trials(studies: dict[str, Any], names: dict[str, str], folder: Path) -> None:
    """``tuning.csv``: every trial of every study (state, value, values tried, run folder)."""
    rows = []
    for group, study in studies.items():
        for trial in study.get_trials(deepcopy=False):
            rows.append({
                "group": group, "study": names[group], "trial": trial.number, "state": trial.state.name, "value": trial.value,
                **{f"param/{k}": v for k, v in trial.params.items()},
                "run_dir": str(folder / "tuning" / f"{names[group]}__t{trial.number:03d}"),
            })
    columns = list(functools.reduce(lambda seen, row: seen | dict.fromkeys(row), rows, {}))
    with open(folder / TRIALS_NAME, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns or ["group"], restval="")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)

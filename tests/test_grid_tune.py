"""The grid's Optuna tuning stage: the search space checks, a real tiny search that picks the
lr by validation, its continuation from the SQLite study after a kill, and the seed run that
trains with the choice and records it in results.csv."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import yaml

from pefthub.grid import GridConfigError, GridRunner, expand
from pefthub.grid import main as grid_main
from pefthub.grid_tune import (
    DB_NAME,
    TRIALS_NAME,
    Tuner,
    load_tune,
    resolve_factors,
    study_name,
    tuning_state,
)

REPO = Path(__file__).resolve().parents[1]
LR = "model.optimizer.lr"
CHOICES = [1.0e-5, 1.0e-2, 1.0e-3]


def _experiment(tmp_path: Path, tune: dict | None = None) -> Path:
    spec = yaml.safe_load((REPO / "configs" / "experiments" / "tiny.yaml").read_text())
    spec.update(name="tuned", seeds=[0], flops=False, methods={"lora": {"config": str(REPO / "configs" / "tiny" / "lora_sst2.yaml")}})
    if tune is not None:
        spec["tune"] = tune
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({}, "tune.params must be a non-empty mapping"),
        ({"params": {LR: []}}, "tune.params.model.optimizer.lr is an empty list"),
        ({"params": {LR: {"low": 1e-2, "high": 1e-4}}}, "expected numbers with low < high"),
        ({"params": {LR: {"low": 0, "high": 1, "log": True}}}, "a log range needs low > 0"),
        ({"params": {LR: {"low": 1e-4, "hi": 1}}}, r"must be \{low: <number>"),
        ({"params": {LR: {"low": 1e-4, "high": 1e-2}}, "sampler": "grid"}, "grid needs every tune.params entry to be a list"),
        ({"params": {LR: CHOICES}, "trials": 0}, "tune.trials must be a whole number >= 1"),
        ({"params": {LR: CHOICES}, "metric": "accuracy"}, "tune.metric must be a validation metric"),
        ({"params": {LR: CHOICES}, "sampler": "cmaes"}, "tune.sampler must be one of"),
        ({"params": {LR: CHOICES}, "trails": 3}, "tune: unknown key"),
        ({"params": {LR: {"factors": []}}}, r"must be \{factors: \[<number > 0>"),
        ({"params": {LR: {"factors": [0.5, -1]}}}, r"must be \{factors: \[<number > 0>"),
        ({"params": {LR: {"factors": [1], "low": 1}}}, r"must be \{factors: \[<number > 0>"),
    ],
)
def test_bad_tune_blocks_fail_with_the_key_named(block, message):
    with pytest.raises(GridConfigError, match=message):
        load_tune(block, "exp.yaml", 0)


def test_tune_defaults_and_the_dry_run_plan(tmp_path, capsys):
    spec = load_tune({"params": {LR: CHOICES, "model.dropout": [0.0, 0.1]}, "sampler": "grid"}, "exp.yaml", 3)
    assert spec.trials == 6 and spec.seed == 3 and spec.direction == "maximize" and spec.metric is None
    assert load_tune({"params": {LR: {"low": 1e-4, "high": 1e-2, "log": True}}}, "exp.yaml", 0).trials == 8
    assert load_tune(None, "exp.yaml", 0) is None
    experiment = _experiment(tmp_path, {"params": {LR: CHOICES}, "sampler": "grid"})
    assert grid_main(["-c", str(experiment), "--runs-dir", str(tmp_path / "runs"), "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "tuning first: ['model.optimizer.lr'] over 3 trial(s) (grid) for each of 1 method/task/backbone group(s)" in out
    assert "lora__sst2__tiny-bert__s0" in out and "waits for tuning (0/3 trials)" in out


def _trials(folder: Path) -> list[dict[str, str]]:
    with open(folder / TRIALS_NAME, newline="") as handle:
        return list(csv.DictReader(handle))


def _tune_and_run(runs, spec, folder, capsys) -> tuple[list, list[dict], list[str]]:
    """The grid's runner with the tuning stage: (the runs as tuned, their rows, the lines shown)."""
    runner = GridRunner(runs, folder / "results.csv", progress=False, jobs=2, tuner=Tuner(runs, spec, folder))
    capsys.readouterr()
    rows = runner.run()
    return runner.runs, rows, capsys.readouterr().out.splitlines()


def test_tuning_picks_the_lr_by_validation_and_continues_its_study(tmp_path, capsys):
    import optuna

    runs = expand(_experiment(tmp_path), runs_dir=tmp_path / "runs")
    folder = runs[0].run_dir.parent

    first = load_tune({"params": {LR: CHOICES}, "sampler": "grid", "trials": 2}, "exp.yaml", 0)
    tuned, _, lines = _tune_and_run(runs, first, folder, capsys)
    trials = _trials(folder)
    assert [(t["trial"], t["state"], float(t[f"param/{LR}"])) for t in trials] == [("0", "COMPLETE", 1e-5), ("1", "COMPLETE", 1e-2)]

    def check(tuned_runs, trials):
        values = {float(t[f"param/{LR}"]): float(t["value"]) for t in trials}
        chosen = tuned_runs[0].config["model"]["init_args"]["optimizer"]["init_args"]["lr"]
        assert values[chosen] == max(values.values())  # the best validation accuracy picked the lr
        assert tuned_runs[0].extra[f"tuned/{LR}"] == chosen and tuned_runs[0].extra["tune_trials"] == len(trials)
        assert tuned_runs[0].extra["tune_metric"] == "val/accuracy" and tuned_runs[0].seed == 0
        for trial in trials:  # each trial validated (no test) on the tuning seed with its own lr
            config = yaml.safe_load((Path(trial["run_dir"]) / "grid_config.yaml").read_text())
            assert config["test_after_fit"] is False and config["seed_everything"] == 0
            assert config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == float(trial[f"param/{LR}"])

    check(tuned, trials)
    assert runs[0].config["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.01  # the expansion is not changed
    # a grid killed during a trial leaves it RUNNING in the study; raising `trials` keeps the study
    more = load_tune({"params": {LR: CHOICES}, "sampler": "grid", "trials": 3}, "exp.yaml", 0)
    name = study_name(runs[0], more)
    assert name == study_name(runs[0], first)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder / DB_NAME}")
    study.enqueue_trial({LR: 1e-3})
    study.ask().suggest_categorical(LR, CHOICES)
    done = {t["run_dir"]: (Path(t["run_dir"]) / "result.json").stat().st_mtime_ns for t in trials}
    tuned, (row,), lines = _tune_and_run(runs, more, folder, capsys)
    assert [line.split(":")[0] for line in lines if line.startswith("trial ")] == ["trial lora__sst2__tiny-bert #2"]
    trials = _trials(folder)
    assert [(t["state"], float(t[f"param/{LR}"])) for t in trials] == [("COMPLETE", v) for v in CHOICES]
    assert all((Path(d) / "result.json").stat().st_mtime_ns == m for d, m in done.items())  # not rerun
    check(tuned, trials)
    # the seed run trains with the chosen lr and is tested; its row records the choice
    chosen = tuned[0].config["model"]["init_args"]["optimizer"]["init_args"]["lr"]
    assert row["status"] == "ok" and "test/accuracy" in row
    assert row[f"tuned/{LR}"] == chosen and row["tune_trials"] == 3 and row["tune_value"] == max(float(t["value"]) for t in trials)
    with open(folder / "results.csv", newline="") as handle:
        (stored,) = list(csv.DictReader(handle))
    assert float(stored[f"tuned/{LR}"]) == chosen and stored["tune_metric"] == "val/accuracy"
    # what --dry-run reads from the finished study: the chosen values, so the seed run shows as finished
    planned, still_tuning = tuning_state(runs, more, folder)
    assert still_tuning == {} and planned[0].config == tuned[0].config and GridRunner.finished(planned[0]) is not None
    assert tuning_state(runs, load_tune({"params": {LR: CHOICES}, "trials": 4}, "exp.yaml", 0), folder)[1] == {
        "lora__sst2__tiny-bert": "0/4 trials"}  # another search is another study
    assert yaml.safe_load((tuned[0].run_dir / "grid_config.yaml").read_text())["model"]["init_args"]["optimizer"]["init_args"]["lr"] == chosen


def test_factors_try_multiples_of_each_methods_own_lr(tmp_path):
    """`{factors: [...]}` tunes around every group's configured value (the fair protocol: three
    learning rates around each method's own), and the best validation score picks the value."""
    import math

    experiment = _experiment(tmp_path, {"params": {LR: {"factors": [0.1, 1, 10]}}, "sampler": "grid"})
    spec = yaml.safe_load(experiment.read_text())
    lora = str(REPO / "configs" / "tiny" / "lora_sst2.yaml")
    spec["methods"] = {"fast": {"config": lora, "overrides": {LR: 0.02}}, "slow": {"config": lora, "overrides": {LR: 0.0005}}}
    experiment.write_text(yaml.safe_dump(spec))
    runs = expand(experiment, runs_dir=tmp_path / "runs")
    tune = load_tune(spec["tune"], "exp.yaml", 0)
    assert tune.trials == 3
    by_method = {run.method: run for run in runs}
    assert resolve_factors(tune, by_method["fast"]).params[LR] == [0.002, 0.02, 0.2]
    assert resolve_factors(tune, by_method["slow"]).params[LR] == [5e-05, 0.0005, 0.005]

    best = {"fast": 0.2, "slow": 5e-05}  # a made-up validation surface peaking at these values
    tried: dict[str, list[float]] = {}

    tuner = Tuner(runs, tune, runs[0].run_dir.parent)
    tuned = []
    for group in dict.fromkeys(run.group for run in runs):  # the tuner driven by hand: each trial scored from its lr
        while not tuner.done(group):
            trial = tuner.next_trial(group)
            lr = trial.config["model"]["init_args"]["optimizer"]["init_args"]["lr"]
            tried.setdefault(trial.method, []).append(lr)
            tuner.finish(trial, {"status": "ok", "primary_value": -abs(math.log(lr / best[trial.method]))})
        tuned += tuner.apply([run for run in runs if run.group == group])[0]
    assert {m: sorted(v) for m, v in tried.items()} == {"fast": [0.002, 0.02, 0.2], "slow": [5e-05, 0.0005, 0.005]}
    assert {run.method: run.extra[f"tuned/{LR}"] for run in tuned} == best
    with pytest.raises(GridConfigError, match=r"tune.params.model.dropout: factors multiply the configured value.*fast"):
        resolve_factors(load_tune({"params": {"model.dropout": {"factors": [1, 2]}}}, "exp.yaml", 0),
                        dataclasses.replace(by_method["fast"], config={"model": {"init_args": {}}}))


def _fake_grid(tmp_path: Path, monkeypatch, score) -> tuple[GridRunner, list[dict], list[tuple[str, str]], list]:
    """Groups ``a_slow`` (each trial 8 polls) and ``b_fast`` (1 poll), 3 trials and 2 seeds each,
    run by :class:`GridRunner` with two jobs through a fake launcher; rows come from ``score``."""
    experiment = _experiment(tmp_path, {"params": {LR: {"factors": [0.5, 1, 2]}}, "sampler": "grid"})
    spec = yaml.safe_load(experiment.read_text())
    lora = str(REPO / "configs" / "tiny" / "lora_sst2.yaml")
    spec["methods"] = {"a_slow": {"config": lora}, "b_fast": {"config": lora}}  # the slow group comes first
    spec["seeds"] = [0, 1]
    experiment.write_text(yaml.safe_dump(spec))
    runs = expand(experiment, runs_dir=tmp_path / "runs")
    folder = runs[0].run_dir.parent
    tuner = Tuner(runs, load_tune(spec["tune"], "exp.yaml", 0), folder)
    events: list[tuple[str, str]] = []

    class Launcher:
        def start(self, run, command, slot):
            run.run_dir.mkdir(parents=True, exist_ok=True)
            events.append(("start", run.run_dir.name))
            return {"run": run, "polls": 8 if run.method == "a_slow" and "trial" in run.extra else 1}, 1, "fake"

        def poll(self, handle, run):
            handle["polls"] -= 1
            if handle["polls"]:
                return None
            events.append(("end", run.run_dir.name))
            return 0

        def kill(self, handle, run):
            return -9

        def close(self):
            pass

    runner = GridRunner(runs, folder / "results.csv", progress=False, jobs=2, tuner=tuner, collect=score)
    monkeypatch.setattr(runner, "_make_launcher", lambda work: (Launcher(), 2))
    monkeypatch.setattr(tuner, "collect", score)
    return runner, runner.run(), events, runs


def _lr(run) -> float:
    return run.config["model"]["init_args"]["optimizer"]["init_args"]["lr"]


def _score(run, wall, threads):  # validation rises with the lr: the largest factor wins
    return {**run.axes(), "status": "ok", "primary_value": _lr(run), "primary_metric": "accuracy", "wall_time_s": wall, **run.extra}


def test_a_tuned_groups_seeds_start_while_another_group_still_tunes(tmp_path, monkeypatch):
    """Trials and seed runs share the slots: with two jobs, the fast group's seed runs start
    (with its chosen lr) while the slow group's trials are still running, and no slot waits for
    a round's slowest trial. A fake launcher stands in for the processes."""
    runner, rows, events, runs = _fake_grid(tmp_path, monkeypatch, _score)
    assert [r["status"] for r in rows] == ["ok"] * 4
    base = _lr(runs[0])
    assert {r["method"]: r[f"tuned/{LR}"] for r in rows} == {"a_slow": 2 * base, "b_fast": 2 * base}
    names = [name for _, name in events]
    first_fast_seed = events.index(("start", next(r.run_dir.name for r in runner.runs if r.method == "b_fast")))
    last_slow_trial_end = max(i for i, (kind, name) in enumerate(events) if kind == "end" and name.startswith("a_slow") and "__t" in name)
    assert first_fast_seed < last_slow_trial_end, names  # the fast group did not wait for the slow group's study
    in_flight = 0
    for kind, _ in events:  # never more than two at once
        in_flight += 1 if kind == "start" else -1
        assert 0 <= in_flight <= 2
    assert len([e for e in events if e[0] == "start"]) == 6 + 4


def test_a_group_whose_trials_all_fail_does_not_stop_the_others(tmp_path, monkeypatch):
    def score(run, wall, threads):
        if run.method == "a_slow" and "trial" in run.extra:
            raise RuntimeError("val/accuracy was never logged")
        return _score(run, wall, threads)

    _, rows, events, _ = _fake_grid(tmp_path, monkeypatch, score)
    assert {r["method"]: r["status"] for r in rows} == {"a_slow": "failed (tuning)", "b_fast": "ok"}
    assert not any(name.startswith("a_slow") and "__t" not in name for _, name in events)  # its seeds never ran
    states = {(t["group"].split("__")[0], t["state"]) for t in _trials(tmp_path / "runs" / "tuned")}
    assert states == {("a_slow", "FAIL"), ("b_fast", "COMPLETE")}

"""`pefthub grid`: expansion, overrides, config checks, a real tiny grid (restart, failure,
results schema, --jobs 2, a killed grid, the Ray launcher), and every shipped experiment file."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from pefthub.grid import (
    CONFIG_NAME,
    FAILED_NAME,
    RESULT_NAME,
    GridConfigError,
    GridRunner,
    expand,
    experiment_rows,
    gpu_for_slot,
    load_experiment,
    set_dotted,
    threads_per_run,
    validate,
)
from pefthub.grid import main as grid_main
from pefthub.grid_launch import usable_cores

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "experiments" / "tiny.yaml"
EXPERIMENTS = sorted((REPO / "configs" / "experiments").glob("*.yaml"))
WALL_S: dict[str, float] = {}  # wall time of the tiny grid with --jobs 1 (the fixture), for the --jobs 2 comparison
LOAD: dict[str, float] = {}  # the 1-minute load average when it ended


def _grid_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`pefthub grid ...` as a user runs it (a subprocess)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pefthub.cli", "grid", *args, "--no-progress"], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _grid(args: list[str]) -> tuple[int, str, str]:
    """The grid command in this process (its runs are still subprocesses): saves the ~5 s
    interpreter start-up per call."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = grid_main([*args, "--no-progress"])
    return code, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------- expansion (no training)


def test_set_dotted_goes_through_class_path_blocks():
    config = {"model": {"class_path": "M", "init_args": {"rank": 8, "optimizer": {"class_path": "O", "init_args": {"lr": 1}}}}, "trainer": {}}
    set_dotted(config, "model.rank", 2)
    set_dotted(config, "model.optimizer.lr", 0.5)
    set_dotted(config, "model.init_args.alpha", 4)
    set_dotted(config, "trainer.max_epochs", 1)
    set_dotted(config, "trainer.logger.init_args.name", "x")
    assert config == {
        "model": {"class_path": "M", "init_args": {"rank": 2, "alpha": 4, "optimizer": {"class_path": "O", "init_args": {"lr": 0.5}}}},
        "trainer": {"max_epochs": 1, "logger": {"init_args": {"name": "x"}}},
    }
    with pytest.raises(GridConfigError, match="not a mapping"):
        set_dotted(config, "trainer.max_epochs.x", 1)


def test_tiny_grid_expands_methods_x_tasks_x_backbones_x_seeds(tmp_path):
    runs = expand(TINY, runs_dir=tmp_path)
    assert [r.run_id for r in runs] == [
        "lora__sst2__tiny-bert__s0", "lora__sst2__tiny-bert__s1", "glora__sst2__tiny-bert__s0", "glora__sst2__tiny-bert__s1",
    ]
    for run in runs:
        c = run.config
        assert run.run_dir == tmp_path / "tiny" / run.run_id
        assert c["seed_everything"] == run.seed and c["test_after_fit"] is True
        assert c["model"]["init_args"]["backbone"] == "tiny-bert"
        assert c["data"]["init_args"] == {"task": "sst2", "max_length": 32, "batch_size": 8, "train_limit": 32, "eval_limit": 32}
        assert c["trainer"]["max_epochs"] == 2 and c["trainer"]["enable_progress_bar"] is False
        assert c["trainer"]["logger"]["init_args"] == {"save_dir": str(tmp_path / "tiny"), "name": run.run_id, "version": ""}
        classes = [cb["class_path"] for cb in c["trainer"]["callbacks"]]
        assert classes[-2:] == ["pefthub.callbacks.grid_support.ProgressFile", "pefthub.callbacks.grid_support.FlopOverhead"]
    assert runs[0].config["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val/accuracy"
    assert runs[2].config["model"]["class_path"] == "pefthub.methods.GLoRAModule"
    # the config hash ignores where the runs live, and sees every setting
    assert expand(TINY, runs_dir=tmp_path / "elsewhere")[0].config_hash == runs[0].config_hash
    assert expand(TINY, runs_dir=tmp_path, sets=[("model.alpha", 3)])[0].config_hash != runs[0].config_hash
    validate(runs)


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_overrides_apply_in_order_and_budgets_multiply_runs(tmp_path):
    experiment = _write(tmp_path / "exp.yaml", {
        "name": "order", "seeds": [3], "backbones": ["tiny-bert", "tiny-llama"],
        "overrides": {"model.rank": 1, "model.alpha": 1, "trainer.max_epochs": 5},
        "tasks": {
            "sst2": {"overrides": {"model.alpha": 2, "data.train_limit": 7}},
            "boolq": {"data": {"class_path": "pefthub.data.PairClassificationDataModule", "init_args": {"task": "boolq"}}},
        },
        "methods": {"lora": {"config": str(REPO / "configs" / "lora" / "{task}.yaml"), "overrides": {"model.dropout": 0.3},
                             "budgets": {"r2": {"model.rank": 2}, "r4": {"model.rank": 4, "model.alpha": 9}}}},
    })
    runs = expand(experiment, runs_dir=tmp_path, sets=[("trainer.max_epochs", 1), ("lora:model.target_modules", ["query"])])
    assert len(runs) == 2 * 2 * 2  # tasks x backbones x budgets x 1 seed
    by_id = {r.run_id: r for r in runs}
    sst2 = by_id["lora_r4__sst2__tiny-llama__s3"].config
    assert sst2["model"]["init_args"]["rank"] == 4 and sst2["model"]["init_args"]["alpha"] == 9
    assert sst2["model"]["init_args"]["dropout"] == 0.3 and sst2["model"]["init_args"]["backbone"] == "tiny-llama"
    assert sst2["data"]["init_args"]["train_limit"] == 7 and sst2["data"]["init_args"]["task"] == "sst2"
    assert sst2["trainer"]["max_epochs"] == 1  # --set wins
    assert sst2["model"]["init_args"]["target_modules"] == ["query"]  # method-scoped --set
    with pytest.raises(GridConfigError, match="not one of the experiment's methods"):
        expand(experiment, runs_dir=tmp_path, sets=[("lorra:model.rank", 2)])
    boolq = by_id["lora_r2__boolq__tiny-bert__s3"].config
    assert boolq["model"]["init_args"]["alpha"] == 1 and boolq["model"]["init_args"]["rank"] == 2
    assert boolq["data"] == {"class_path": "pefthub.data.PairClassificationDataModule", "init_args": {"task": "boolq"}}
    assert {r.budget for r in runs} == {"r2", "r4"} and {r.method for r in runs} == {"lora"}
    only = expand(experiment, runs_dir=tmp_path, only={"tasks": ["boolq"], "backbones": ["tiny-bert"]})
    assert [r.run_id for r in only] == ["lora_r2__boolq__tiny-bert__s3", "lora_r4__boolq__tiny-bert__s3"]
    only = expand(experiment, runs_dir=tmp_path, only={"budgets": ["r4"], "backbones": ["tiny-bert"]})
    assert [r.run_id for r in only] == ["lora_r4__boolq__tiny-bert__s3", "lora_r4__sst2__tiny-bert__s3"]  # safe_dump sorted the tasks
    with pytest.raises(GridConfigError, match="not in the experiment's budgets"):
        expand(experiment, runs_dir=tmp_path, only={"budgets": ["r3"]})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": {"lora": {"config": "configs/tiny/lora_sst2.yaml", "rnak": 2}}}, "unknown key"),
        ({"methods": {"lora": {"config": "configs/tiny/lora_sst2.yaml"}}, "tasks": {"sst2": {}}}, "no `data` block"),
        ({"methods": {"lora": {"config": "configs/nowhere/{task}.yaml"}}}, "not found"),
        ({"tasks": {"mine": {"data": {"class_path": "pefthub.data.SentenceClassificationDataModule", "init_args": {"path": "x.csv"}}}}}, "primary_metric"),
        ({"seeds": []}, "seeds is empty"),
        # keys nothing read (a run is named by its method/budget/task/backbone/seed) are typos now
        ({"description": "LoRA vs GLoRA"}, r"bad.yaml: unknown key\(s\) \['description'\]"),
        ({"methods": {"lora": {"config": "configs/tiny/lora_sst2.yaml", "label": "LoRA"}}}, r"methods.lora: unknown key\(s\) \['label'\]"),
    ],
)
def test_bad_experiment_files_fail_with_the_key_named(tmp_path, change, message):
    base = yaml.safe_load(TINY.read_text())
    base.update(change)
    experiment = _write(tmp_path / "bad.yaml", base)
    with pytest.raises(GridConfigError, match=message):
        expand(experiment, runs_dir=tmp_path)


def test_an_override_typo_is_caught_before_any_run(tmp_path):
    code, _, err = _grid(["-c", str(TINY), "--runs-dir", str(tmp_path), "--set", "model.rnak=2"])
    assert code == 2
    assert "Option 'rnak' is not accepted" in err and "lora__sst2__tiny-bert__s0" in err
    assert not (tmp_path / "tiny").exists()


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.name)
def test_every_shipped_experiment_expands_and_each_run_parses_as_a_fit_config(experiment, tmp_path):
    runs = expand(experiment, runs_dir=tmp_path)
    spec = yaml.safe_load(experiment.read_text())
    if experiment.name != "tiny.yaml":
        assert len(spec["seeds"]) >= 3, "comparisons use at least 3 seeds (docs/design.md, section 5)"
    assert len({r.run_id for r in runs}) == len(runs)
    validate(runs)


# ---------------------------------------------------------------------- a real tiny grid


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory) -> Path:
    """The tiny grid run for real once (4 runs of `pefthub fit` on tiny-bert, ~25 s)."""
    work = tmp_path_factory.mktemp("grid")
    start = time.perf_counter()
    result = _grid_cli(["-c", str(TINY), "--runs-dir", str(work / "runs")], work)
    WALL_S["jobs1"] = time.perf_counter() - start
    LOAD["jobs1"] = os.getloadavg()[0]
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("done  ") == 4
    return work / "runs" / "tiny"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_results_file_has_one_row_per_run_with_the_schema(tiny_grid):
    rows = _rows(tiny_grid / "results.csv")
    header = list(rows[0])
    assert header[:14] == [
        "experiment", "run_id", "method", "budget", "task", "backbone", "seed", "status", "primary_metric", "primary_value",
        "test/accuracy", "test/f1_macro", "test/loss", "test/mcc",
    ]
    for column in ("trainable_params", "adapter_params", "adapter_bytes", "flop_overhead", "wall_time_s", "steps",
                   "median_step_time_s", "cpu", "cpu_cores", "torch", "config"):
        assert column in header
    assert [(r["method"], r["seed"]) for r in rows] == [("lora", "0"), ("lora", "1"), ("glora", "0"), ("glora", "1")]
    import torch

    from pefthub.budget import adapter_file_bytes, count_parameters, flop_overhead
    from pefthub.methods import LoRAModule

    lora = LoRAModule(backbone="tiny-bert", rank=4, alpha=8)
    expected_flops = flop_overhead(lora, seq_len=32)
    for row in rows:
        assert row["status"] == "ok" and row["primary_metric"] == "accuracy"
        assert row["primary_value"] == row["test/accuracy"]
        assert row["steps"] == "8"  # 32 examples / batch 8 x 2 epochs
        assert row["torch"] == torch.__version__ and int(row["cpu_cores"]) == os.cpu_count()
        run_dir = Path(row["run_dir"])
        assert int(row["adapter_bytes"]) == adapter_file_bytes(run_dir / "adapter")
        assert (run_dir / "grid_config.yaml").is_file() and (run_dir / "config.yaml").is_file()
    for row in rows[:2]:
        assert int(float(row["trainable_params"])) == count_parameters(lora, trainable_only=True)
        assert int(row["adapter_params"]) == count_parameters(lora.backbone, trainable_only=True)
        assert float(row["flop_overhead"]) == pytest.approx(expected_flops["overhead"], rel=1e-6)
    accuracies = {r["run_id"]: float(r["test/accuracy"]) for r in rows}
    assert all(0.0 <= a <= 1.0 for a in accuracies.values())


def test_a_restarted_grid_skips_finished_runs_and_redoes_the_rest(tiny_grid):
    work = tiny_grid.parent.parent
    markers = {p.parent.name: p.stat().st_mtime_ns for p in tiny_grid.glob(f"*/{RESULT_NAME}")}
    assert len(markers) == 4
    redo = tiny_grid / "glora__sst2__tiny-bert__s1"
    (redo / RESULT_NAME).unlink()
    before = _rows(tiny_grid / "results.csv")
    code, out, err = _grid(["-c", str(TINY), "--runs-dir", str(work / "runs")])
    assert code == 0, err[-3000:]
    assert out.count("skip  ") == 3 and out.count("done  ") == 1
    assert "done  glora__sst2__tiny-bert__s1" in out
    for name, mtime in markers.items():
        if name != redo.name:
            assert (tiny_grid / name / RESULT_NAME).stat().st_mtime_ns == mtime
    after = _rows(tiny_grid / "results.csv")
    # same seed, same config: the redone run reproduces its metrics exactly
    assert [r["test/accuracy"] for r in after] == [r["test/accuracy"] for r in before]
    runner = GridRunner(expand(TINY, runs_dir=work / "runs"), tiny_grid / "results.csv")
    assert all(runner.finished(run) is not None for run in runner.runs)
    changed = expand(TINY, runs_dir=work / "runs", sets=[("model.alpha", 5)])
    assert all(GridRunner.finished(run) is None for run in changed)  # another config: not finished
    code, dry, _ = _grid(["-c", str(TINY), "--runs-dir", str(work / "runs"), "--dry-run"])
    assert code == 0 and dry.count("finished") == 4 and "pefthub.cli fit -c" in dry


def test_a_failing_run_is_reported_and_not_marked_finished(tmp_path):
    code, out, _ = _grid(["-c", str(TINY), "--runs-dir", str(tmp_path), "--methods", "lora", "--seeds", "0", "--set", "model.rank=0"])
    assert code == 1
    run_dir = tmp_path / "tiny" / "lora__sst2__tiny-bert__s0"
    assert "FAIL  lora__sst2__tiny-bert__s0" in out
    assert not (run_dir / RESULT_NAME).exists()
    assert "model.rank must be >= 1" in json.loads((run_dir / FAILED_NAME).read_text())["log_tail"]
    rows = _rows(tmp_path / "tiny" / "results.csv")
    assert len(rows) == 1 and rows[0]["status"] == "failed (exit 1)"


# ---------------------------------------------------------------------- several runs at once, kills, Ray

COMPARED = ("primary_value", "test/accuracy", "test/f1_macro", "test/loss", "test/mcc", "steps", "trainable_params",
            "adapter_params", "adapter_bytes", "flop_overhead")


def test_jobs_2_gives_the_same_results_as_jobs_1_and_finishes_sooner(tiny_grid, tmp_path):
    start = time.perf_counter()
    result = _grid_cli(["-c", str(TINY), "--runs-dir", str(tmp_path / "runs"), "--jobs", "2"], tmp_path)
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("start ") == 4 and result.stdout.count("done  ") == 4
    one, two = _rows(tiny_grid / "results.csv"), _rows(tmp_path / "runs" / "tiny" / "results.csv")
    assert [r["run_id"] for r in two] == [r["run_id"] for r in one]  # grid order, whatever finished first
    for a, b in zip(one, two, strict=True):
        assert {k: a[k] for k in COMPARED} == {k: b[k] for k in COMPARED}, a["run_id"]
        assert b["omp_num_threads"] == str(threads_per_run(2, cap=os.environ.get("OMP_NUM_THREADS")))
    # the runs overlapped: the grid took well under the sum of its runs' own wall times
    serial = sum(float(r["wall_time_s"]) for r in two)
    assert wall < 0.8 * serial, f"--jobs 2 took {wall:.1f} s for runs of {serial:.1f} s in all: they did not overlap"
    # and, where the machine has the cores to spare, sooner than one at a time; on a machine
    # already busier than its cores (other work), two runs at once just take twice as long each
    busy = max(LOAD["jobs1"], os.getloadavg()[0]) > usable_cores()
    if not busy:
        assert wall < WALL_S["jobs1"], f"--jobs 2 took {wall:.1f} s, --jobs 1 {WALL_S['jobs1']:.1f} s"
    elif wall >= WALL_S["jobs1"]:
        warnings.warn(f"machine overloaded (load {os.getloadavg()[0]:.1f} on {usable_cores()} cores): --jobs 2 took "
                      f"{wall:.1f} s, --jobs 1 {WALL_S['jobs1']:.1f} s", stacklevel=1)


def _processes_running(path: str) -> list[int]:
    """Ids of the processes whose command line mentions ``path`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if path.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to see that no run outlives a killed grid")
def test_a_killed_grid_leaves_no_run_behind_and_resumes_where_it_stopped(tmp_path):
    args = ["-c", str(TINY), "--runs-dir", str(tmp_path / "runs"), "--methods", "lora"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    grid = subprocess.Popen([sys.executable, "-m", "pefthub.cli", "grid", *args, "--no-progress"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "runs" / "tiny"
    first, second = folder / "lora__sst2__tiny-bert__s0", folder / "lora__sst2__tiny-bert__s1"
    deadline = time.monotonic() + 300
    while not ((first / RESULT_NAME).is_file() and (second / CONFIG_NAME).is_file()):
        assert grid.poll() is None and time.monotonic() < deadline, "the grid ended before the second run started"
        time.sleep(0.2)
    grid.send_signal(signal.SIGKILL)  # no handler runs: the runs must die with their grid on their own
    grid.wait(timeout=60)
    config = str(second / CONFIG_NAME)
    deadline = time.monotonic() + 30
    while _processes_running(config) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_running(config), "a run outlived its killed grid"
    assert not (second / RESULT_NAME).exists()
    finished_at = (first / RESULT_NAME).stat().st_mtime_ns
    code, out, err = _grid(args)
    assert code == 0, err[-3000:]
    assert out.count("skip  ") == 1 and "skip  lora__sst2__tiny-bert__s0" in out and out.count("done  ") == 1
    assert (first / RESULT_NAME).stat().st_mtime_ns == finished_at
    assert [r["run_id"] for r in _rows(folder / "results.csv")] == [first.name, second.name]


def test_ray_launcher_runs_a_tiny_grid_on_a_local_instance(tiny_grid, tmp_path):
    import ray

    spec = yaml.safe_load(TINY.read_text())
    for method in spec["methods"].values():
        method["config"] = str(REPO / method["config"])
    spec["ray"] = {"cpus_per_run": 1, "copy_back": True}  # copy_back: the run folder travels back as a tar
    experiment = _write(tmp_path / "tiny.yaml", spec)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        code, out, err = _grid(["-c", str(experiment), "--runs-dir", str(tmp_path / "runs"), "--launcher", "ray", "--methods", "lora"])
    finally:
        ray.shutdown()
    assert code == 0, out[-2000:] + err[-3000:]
    assert out.count("(ray task cpus=1 gpus=0)") == 2 and out.count("done  ") == 2
    rows = _rows(tmp_path / "runs" / "tiny" / "results.csv")
    local = {r["run_id"]: r for r in _rows(tiny_grid / "results.csv")}
    assert [r["run_id"] for r in rows] == ["lora__sst2__tiny-bert__s0", "lora__sst2__tiny-bert__s1"]
    for row in rows:
        assert {k: row[k] for k in COMPARED} == {k: local[row["run_id"]][k] for k in COMPARED}
        assert row["omp_num_threads"] == "1"
        assert (Path(row["run_dir"]) / "adapter" / "adapter.safetensors").is_file()


@pytest.mark.gpu
def test_jobs_2_packs_two_runs_onto_one_gpu(tmp_path):
    """On a GPU machine: two runs at once, each pinned to a GPU round-robin (both on GPU 0 when
    there is one), with the GPU named in the results."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    code, out, err = _grid(["-c", str(TINY), "--runs-dir", str(tmp_path), "--methods", "lora", "--jobs", "2"])
    assert code == 0, err[-3000:]
    gpus = [str(i) for i in range(torch.cuda.device_count())]
    assert [line.split("gpu=")[1].rstrip(")") for line in out.splitlines() if line.startswith("start ")] == [gpus[0], gpus[1 % len(gpus)]]
    assert all(row["gpu"] == torch.cuda.get_device_name(0) for row in _rows(tmp_path / "tiny" / "results.csv"))


def test_thread_shares_and_gpu_packing():
    assert threads_per_run(1, cores=16) == 16 and threads_per_run(4, cores=16) == 4 and threads_per_run(3, cores=2) == 1
    assert threads_per_run(2, cores=16, cap="1") == 1 and threads_per_run(2, cores=16, cap="") == 8
    assert [gpu_for_slot(slot, ["0", "3"]) for slot in range(5)] == ["0", "3", "0", "3", "0"]
    assert gpu_for_slot(0, []) is None


def test_results_table_keeps_the_finished_runs_of_other_invocations(tmp_path):
    runs = expand(TINY, runs_dir=tmp_path, only={"methods": ["lora"]})
    folder = tmp_path / "tiny"
    for run_id in ("glora__sst2__tiny-bert__s0", "lora__sst2__tiny-bert__s1"):
        (folder / run_id).mkdir(parents=True)
        (folder / run_id / RESULT_NAME).write_text(json.dumps({"config_hash": "x", "row": {"run_id": run_id, "status": "ok"}}))
    (folder / "glora__sst2__tiny-bert__s1").mkdir()  # unfinished: no result.json
    this_time = [{"run_id": "lora__sst2__tiny-bert__s0", "status": "ok"}]
    merged = experiment_rows(this_time, runs, folder)
    # lora s1 belongs to this selection but did not run this time (outdated marker): left out
    assert [r["run_id"] for r in merged] == ["lora__sst2__tiny-bert__s0", "glora__sst2__tiny-bert__s0"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"jobs": 0}, "jobs must be a whole number >= 1"),
        ({"launcher": "slurm"}, "launcher must be one of"),
        ({"ray": {"cpus_per_run": -1}}, "ray.cpus_per_run must be a number >= 0"),
        ({"ray": {"num_cpus": 1}}, "ray: unknown key"),
        ({"tune": [1]}, "tune must be a mapping"),
    ],
)
def test_bad_launcher_settings_fail_with_the_key_named(tmp_path, change, message):
    spec = yaml.safe_load(TINY.read_text())
    spec.update(change)
    with pytest.raises(GridConfigError, match=message):
        load_experiment(_write(tmp_path / "bad.yaml", spec))
    code, _, err = _grid(["-c", str(tmp_path / "bad.yaml"), "--dry-run"])
    assert code == 2 and err.count("\n") == 1 and message.split()[0] in err


# ---------------------------------------------------------------------- analysis and the notebook


def test_noise_check_verdicts():
    from pefthub.analysis import noise_check

    apart = noise_check([0.80, 0.81, 0.79], [0.70, 0.71, 0.69])
    assert apart["delta"] == pytest.approx(0.10) and apart["combined_std"] == pytest.approx((2 * 0.01**2) ** 0.5)
    assert apart["verdict"] == "distinguishable"
    close = noise_check([0.80, 0.90, 0.70], [0.79, 0.88, 0.72])
    assert close["delta"] == pytest.approx(0.01 / 3) and close["verdict"] == "inside the noise"
    assert noise_check([0.8], [0.7, 0.6])["verdict"] == "too few seeds"
    assert noise_check([0.5, 0.5], [0.5, 0.5])["verdict"] == "inside the noise"


def test_analysis_loads_results_events_and_configs_of_the_tiny_grid(tiny_grid):
    import statistics

    from pefthub import analysis

    runs = analysis.load_runs(tiny_grid / "results.csv")
    assert list(runs["run_id"]) == [r["run_id"] for r in _rows(tiny_grid / "results.csv")]
    assert list(runs["cfg.model.class_path"]) == ["pefthub.methods.LoRAModule"] * 2 + ["pefthub.methods.GLoRAModule"] * 2
    assert list(runs["cfg.model.warmup_steps"].iloc[2:]) == [2, 2] and list(runs["cfg.seed_everything"]) == [0, 1, 0, 1]
    summary = analysis.summarize(runs).set_index("method")
    for method in ("lora", "glora"):
        values = list(runs[runs["method"] == method]["primary_value"])
        assert summary.loc[method, "mean"] == pytest.approx(statistics.mean(values))
        assert summary.loc[method, "std"] == pytest.approx(statistics.stdev(values))
        assert summary.loc[method, "n"] == 2
    scalars = analysis.load_scalars(runs, prefixes=("val/", "rank/", "importance/"))
    val = scalars[(scalars["tag"] == "val/accuracy") & (scalars["run_id"] == runs["run_id"][0])]
    assert list(val["step"]) == [3, 7]  # validation after each of the 2 epochs (4 steps each; steps count from 0)
    glora = runs.iloc[2]
    matrix = analysis.rank_matrix(scalars, glora["run_id"], glora["run_dir"])
    assert matrix.shape == (2, 6) and list(matrix.index) == [0, 1]
    assert list(matrix.columns) == ["attention.self.query", "attention.self.key", "attention.self.value",
                                    "attention.output.dense", "intermediate.dense", "output.dense"]
    # GLoRA's reallocation keeps the total rank: 12 matrices x rank 4, as in the saved adapter
    saved = json.loads((Path(glora["run_dir"]) / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
    assert matrix.to_numpy().sum() == sum(saved.values()) == 48
    importance = analysis.final_values(scalars[scalars["run_id"] == glora["run_id"]], "importance")
    per_matrix = importance[[analysis.site_of(n) is not None for n in importance["name"]]]
    assert len(per_matrix) == 12 and (per_matrix["value"] >= 0).all()
    compared = analysis.compare_to(runs, "lora")
    assert list(compared["method"]) == ["glora"] and compared["verdict"].iloc[0] in ("inside the noise", "distinguishable")


def test_compare_methods_notebook_executes_headless_on_the_tiny_grid(tiny_grid, monkeypatch, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("PEFTHUB_RESULTS", str(tiny_grid / "results.csv"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the figures
    notebook = nbformat.read(REPO / "notebooks" / "compare_methods.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit the notebook without outputs"
    NotebookClient(notebook, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"4 runs from {tiny_grid / 'results.csv'}; primary metric: accuracy" in text
    assert "sst2 glora:" in text and "vs lora" in text
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4  # metric vs budget, learning curves, GLoRA rank heat map, importance distributions


def test_results_are_written_as_csv_and_parquet_with_fixed_columns_first(tmp_path):
    import pandas as pd

    from pefthub.grid import write_results

    rows = [
        {"run_id": "b", "method": "m", "status": "ok", "test/f1": 0.5, "budget/x": 1.0, "primary_value": 0.5},
        {"run_id": "a", "method": "m", "status": "failed (exit 1)", "wall_time_s": 2.0},
    ]
    write_results(rows, tmp_path / "results.csv", parquet=True)
    header = (tmp_path / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:11] == ["experiment", "run_id", "method", "budget", "task", "backbone", "seed", "status",
                           "primary_metric", "primary_value", "test/f1"]
    assert header[-1] == "budget/x"
    frame = pd.read_parquet(tmp_path / "results.parquet")
    assert list(frame["run_id"]) == ["b", "a"] and list(frame.columns) == header

"""Running a grid's runs: several at once on this machine (``--jobs N``) or as Ray tasks on a
cluster (``--launcher ray``), skipping finished runs, one line per run started and finished.

Each run is ``python -m pefthub.cli fit -c <run_dir>/grid_config.yaml`` in its own process.
Locally, ``N`` slots share the machine: every run gets ``OMP_NUM_THREADS = cores // N`` (capped
by an ``OMP_NUM_THREADS`` already set), and when GPUs are visible and ``N > 1`` slot ``i`` gets
GPU ``i mod #GPUs`` through ``CUDA_VISIBLE_DEVICES`` (several runs per GPU when ``N`` exceeds
the GPUs). With Ray each run is a task asking for ``ray.cpus_per_run`` CPUs and
``ray.gpus_per_run`` GPUs (Ray sets ``CUDA_VISIBLE_DEVICES``). See ``docs/grid.md``.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pefthub.grid_results import collect_result, experiment_rows, write_results
from pefthub.grid_spec import (
    CONFIG_NAME,
    FAILED_NAME,
    LOG_NAME,
    PROGRESS_NAME,
    RESULT_NAME,
    RunSpec,
)

if TYPE_CHECKING:
    from pefthub.grid_tune import Tuner

Collect = Callable[[RunSpec, float, int | None], dict[str, Any]]


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_run(jobs: int, cores: int | None = None, cap: str | None = None) -> int:
    """``cores // jobs`` (at least 1), capped by ``cap`` (an ``OMP_NUM_THREADS`` value) when set."""
    share = max(1, (cores or usable_cores()) // jobs)
    if cap and cap.strip().isdigit() and int(cap) >= 1:
        share = min(share, int(cap))
    return share


def visible_gpus() -> list[str]:
    """The GPUs runs may use: ``CUDA_VISIBLE_DEVICES`` as set, else every device torch sees."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA is no GPU
        return []


def gpu_for_slot(slot: int, gpus: list[str]) -> str | None:
    """Round-robin packing: slot ``i`` runs on GPU ``gpus[i % len(gpus)]`` (``None``: no GPU)."""
    return gpus[slot % len(gpus)] if gpus else None


def _wants_one_gpu(config: dict[str, Any]) -> bool:
    """Whether a run may be pinned to one GPU: it does not ask for the CPU or for several devices."""
    trainer = config.get("trainer") or {}
    return str(trainer.get("accelerator", "auto")) in ("auto", "gpu", "cuda") and str(trainer.get("devices", "auto")) in ("1", "auto")


def _die_with_parent() -> None:
    """In a child before exec: get SIGKILL when the launching process dies (Linux), so killing
    the grid leaves no orphaned training process behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def write_run_config(run: RunSpec) -> None:
    """A fresh run directory holding the run's complete config (an older attempt is cleared)."""
    if run.run_dir.exists():
        shutil.rmtree(run.run_dir)  # an unfinished, failed or outdated attempt
    run.run_dir.mkdir(parents=True)
    (run.run_dir / CONFIG_NAME).write_text(config_text(run))


def config_text(run: RunSpec) -> str:
    return (
        f"# written by `pefthub grid` for run {run.run_id}; repeat with: pefthub fit -c {run.run_dir / CONFIG_NAME}\n"
        + yaml.safe_dump(run.config, sort_keys=False)
    )


@dataclass
class Started:
    """A run in flight: its launcher handle, slot, start time, thread count and whether it is a
    tuning trial (scored on validation, reported to the tuner, not a row of the results)."""

    run: RunSpec
    handle: Any
    slot: int
    start: float
    threads: int | None
    note: str
    trial: bool = False


class LocalLauncher:
    """Runs as child processes of this one."""

    def __init__(self, jobs: int, python: str) -> None:
        self.jobs = jobs
        self.python = python
        self.threads = threads_per_run(jobs, cap=os.environ.get("OMP_NUM_THREADS"))
        self.gpus = visible_gpus() if jobs > 1 else []

    def start(self, run: RunSpec, command: list[str], slot: int) -> tuple[Any, int | None, str]:
        write_run_config(run)
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(self.threads)}
        gpu = gpu_for_slot(slot, self.gpus) if _wants_one_gpu(run.config) else None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        log = open(run.run_dir / LOG_NAME, "w")  # noqa: SIM115 - closed in poll/kill
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        note = f"threads={self.threads}" + (f" gpu={gpu}" if gpu is not None else "")
        return (process, log), self.threads, note

    def poll(self, handle: Any, run: RunSpec) -> int | None:
        process, log = handle
        code = process.poll()
        if code is not None:
            log.close()
        return code

    def kill(self, handle: Any, run: RunSpec) -> int:
        process, log = handle
        process.kill()
        code = process.wait()
        log.close()
        return code

    def close(self) -> None:
        pass


def _ray_task(command: list[str], run_dir: str, config: str, env: dict[str, str], timeout_s: float | None, copy_back: bool) -> tuple[int, bytes | None]:
    """One run on a Ray worker: write its config, run it, and return the exit code and, with
    ``copy_back``, the run directory as a gzipped tar (for workers without the shared folder)."""
    folder = Path(run_dir)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / CONFIG_NAME).write_text(config)
    command = [sys.executable, *command[1:]]  # the worker's own interpreter
    with open(folder / LOG_NAME, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, preexec_fn=_die_with_parent)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    archive = None
    if copy_back:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(folder, arcname=".")
        archive = buffer.getvalue()
    return code, archive


class RayLauncher:
    """Runs as Ray tasks on the cluster ``ray.init()`` finds (``address``, else ``RAY_ADDRESS``,
    else a new local instance); an already initialised Ray is used as it is."""

    def __init__(self, address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0,
                 copy_back: bool = False, timeout_s: float | None = None) -> None:
        try:
            import ray
        except ImportError as error:
            raise RuntimeError("--launcher ray needs Ray: pip install 'pefthub[cluster]'") from error
        self.ray = ray
        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False)
        self.cpus = cpus_per_run
        self.gpus = gpus_per_run
        self.copy_back = copy_back
        self.timeout_s = timeout_s
        self.threads = max(1, int(cpus_per_run))
        self.task = ray.remote(_ray_task).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)

    def start(self, run: RunSpec, command: list[str], slot: int) -> tuple[Any, int | None, str]:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        env = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(self.threads)}
        ref = self.task.remote(command, str(run.run_dir), config_text(run), env, self.timeout_s, self.copy_back)
        return ref, self.threads, f"ray task cpus={self.cpus:g} gpus={self.gpus:g}"

    def poll(self, handle: Any, run: RunSpec) -> int | None:
        done, _ = self.ray.wait([handle], timeout=0)
        if not done:
            return None
        try:
            code, archive = self.ray.get(handle)
        except Exception as error:  # noqa: BLE001 - a lost worker or a cancelled task is a failed run
            run.run_dir.mkdir(parents=True, exist_ok=True)
            (run.run_dir / LOG_NAME).open("a").write(f"\nray task failed: {error!r}\n")
            return -1
        if archive is not None:
            if run.run_dir.exists():
                shutil.rmtree(run.run_dir)
            run.run_dir.mkdir(parents=True)
            with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12 / 3.11.4
                tar.extractall(run.run_dir, **safe)  # noqa: S202 - our own archive, filtered where Python can
        return code

    def kill(self, handle: Any, run: RunSpec) -> int:
        self.ray.cancel(handle, force=True)
        return -9

    def close(self) -> None:
        pass


class GridRunner:
    """Runs the expanded grid with ``jobs`` runs in flight, skipping finished runs, and keeps
    the results table of the experiment folder up to date.

    Args:
        runs: the expanded runs, in grid order.
        results: the results CSV (``None``: write none, as for tuning trials).
        parquet: also write ``results.parquet``.
        fail_fast: stop at the first failed run (runs in flight are killed).
        timeout_s: seconds after which one run is killed (counted as failed).
        python: interpreter of the local runs (default: this one).
        progress: progress bars (a per-run step bar only when ``jobs == 1``).
        jobs: runs at once (``None``: 1 locally, every run submitted at once with Ray).
        launcher: ``"local"`` or ``"ray"``.
        ray_options: ``address``, ``cpus_per_run``, ``gpus_per_run``, ``copy_back``.
        collect: builds a finished run's row (default :func:`collect_result`).
        tuner: the tuning stage (:class:`pefthub.grid_tune.Tuner`): its trials share the slots
            with the seed runs, and a group's seed runs start once its own study is done (with
            the chosen values); groups are served in grid order.
    """

    def __init__(self, runs: list[RunSpec], results: Path | None, parquet: bool = False, fail_fast: bool = False,
                 timeout_s: float | None = None, python: str | None = None, progress: bool = True,
                 jobs: int | None = None, launcher: str = "local", ray_options: dict[str, Any] | None = None,
                 collect: Collect | None = None, tuner: Tuner | None = None) -> None:
        self.runs = runs
        self.results = results
        self.parquet = parquet
        self.fail_fast = fail_fast
        self.timeout_s = timeout_s
        self.python = python or sys.executable
        self.progress = progress
        self.jobs = jobs
        self.launcher = launcher
        self.ray_options = dict(ray_options or {})
        self.collect = collect or collect_result
        self.tuner = tuner

    @staticmethod
    def finished(run: RunSpec) -> dict[str, Any] | None:
        """The stored row when ``run`` finished with the same config, else ``None``."""
        marker = run.run_dir / RESULT_NAME
        if not marker.is_file():
            return None
        try:
            stored = json.loads(marker.read_text())
        except ValueError:
            return None
        if stored.get("config_hash") != run.config_hash:
            return None
        return stored["row"]

    def command(self, run: RunSpec) -> list[str]:
        return [self.python, "-m", "pefthub.cli", "fit", "-c", str(run.run_dir / CONFIG_NAME)]

    def _make_launcher(self, pending: int) -> tuple[LocalLauncher | RayLauncher, int]:
        if self.launcher == "ray":
            options = {k: v for k, v in self.ray_options.items() if v is not None}
            return RayLauncher(timeout_s=self.timeout_s, **options), self.jobs or max(1, pending)
        jobs = self.jobs or 1
        return LocalLauncher(jobs, self.python), jobs

    def _finish(self, started: Started, code: int) -> dict[str, Any]:
        run = started.run
        wall = time.perf_counter() - started.start
        if code == 0:
            try:
                row = (self.tuner.collect if started.trial else self.collect)(run, wall, started.threads)
            except (RuntimeError, OSError, KeyError, ValueError) as error:
                code = 1
                (run.run_dir / LOG_NAME).open("a").write(f"\npefthub grid: reading the result failed: {error}\n")
            else:
                marker = {"config_hash": run.config_hash, "row": row}
                (run.run_dir / RESULT_NAME).write_text(json.dumps(marker, indent=2, default=str))
                return row
        log = run.run_dir / LOG_NAME
        tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
        failure = {"returncode": code, "wall_time_s": wall, "log_tail": tail}
        run.run_dir.mkdir(parents=True, exist_ok=True)
        (run.run_dir / FAILED_NAME).write_text(json.dumps(failure, indent=2))
        return {**run.axes(), "status": f"failed (exit {code})", "wall_time_s": round(wall, 3), "run_dir": str(run.run_dir)}

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

    def _write(self, rows_by_id: dict[str, dict[str, Any]]) -> None:
        if self.results is None:
            return
        ordered = [rows_by_id[r.run_id] for r in self.runs if r.run_id in rows_by_id]
        folder = self.runs[0].run_dir.parent if self.runs else self.results.parent
        write_results(experiment_rows(ordered, self.runs, folder), self.results, self.parquet)

    def run(self) -> list[dict[str, Any]]:
        """Run every unfinished run (and, with a tuner, the trials still to run); the rows of
        this invocation's runs, in grid order."""
        from tqdm.auto import tqdm

        rows: dict[str, dict[str, Any]] = {}
        total = len(self.runs)
        index_of = {run.run_id: index for index, run in enumerate(self.runs, 1)}
        groups = list(dict.fromkeys(run.group for run in self.runs))
        untuned = set(groups) if self.tuner is not None else set()
        outer = tqdm(total=total, desc="grid", unit="run", position=0, disable=not self.progress)
        pending: list[RunSpec] = []

        def release(runs: list[RunSpec]) -> None:  # seed runs ready to start, finished ones skipped
            for run in runs:
                stored = self.finished(run)
                if stored is None:
                    pending.append(run)
                    continue
                rows[run.run_id] = {**stored, **run.extra}  # e.g. tune_trials grew while the choice stayed
                outer.write(f"skip  {run.run_id} (finished: {run.primary_metric}={stored['primary_value']:.4f})")
                outer.update(1)

        def tuned(group: str) -> None:  # the group's study is done: its seed runs take the chosen values
            untuned.discard(group)
            members = [run for run in self.runs if run.group == group]
            try:
                members, line = self.tuner.apply(members)
            except RuntimeError as error:
                for run in members:
                    rows[run.run_id] = {**run.axes(), "status": "failed (tuning)", "run_dir": str(run.run_dir)}
                    outer.write(f"FAIL  {run.run_id}: {error}")
                    outer.update(1)
                return
            outer.write(line)
            by_id = {run.run_id: run for run in members}
            self.runs = [by_id.get(run.run_id, run) for run in self.runs]
            release(members)

        def next_work() -> tuple[RunSpec, bool] | None:  # (run, is a trial), groups in grid order
            for group in groups:
                while group in untuned:
                    if self.tuner.done(group):
                        tuned(group)
                        break
                    trial = self.tuner.next_trial(group)
                    if trial is None:  # its last trials are in flight
                        break
                    stored = self.finished(trial)
                    if stored is None:
                        return trial, True
                    outer.write(self.tuner.finish(trial, stored))  # finished before a kill was told
                if group in untuned:
                    continue
                for position, run in enumerate(pending):
                    if run.group == group:
                        return pending.pop(position), False
            return None

        if self.tuner is None:
            release(self.runs)
        if not pending and not untuned:
            outer.close()
            self._write(rows)
            return [rows[r.run_id] for r in self.runs if r.run_id in rows]
        work = len(pending) + (self.tuner.trial_count() + len(self.runs) if self.tuner is not None else 0)
        launcher, jobs = self._make_launcher(work)
        in_flight: dict[int, Started] = {}  # slot -> run
        failures = 0
        stopping = False
        inner = None
        try:
            while True:
                while not stopping and len(in_flight) < jobs:
                    found = next_work()
                    if found is None:
                        break
                    run, trial = found
                    slot = min(set(range(jobs)) - set(in_flight))
                    handle, threads, note = launcher.start(run, self.command(run), slot)
                    in_flight[slot] = Started(run, handle, slot, time.perf_counter(), threads, note, trial)
                    what = f"trial {run.extra['group']} #{run.extra['trial']}" if trial else f"{run.run_id} [{index_of[run.run_id]}/{total}]"
                    outer.write(f"start {what} ({note})")
                    if jobs == 1 and self.progress and self.launcher == "local":
                        inner = tqdm(total=None, desc=run.run_id[:48], unit="step", position=1, leave=False)
                if not in_flight:
                    break
                for slot, started in list(in_flight.items()):
                    code = launcher.poll(started.handle, started.run)
                    if code is None and self.timeout_s is not None and time.perf_counter() - started.start > self.timeout_s:
                        code = launcher.kill(started.handle, started.run)
                    if code is None:
                        self._update_inner(started.run, inner)
                        continue
                    del in_flight[slot]
                    if inner is not None:
                        inner.close()
                        inner = None
                    run = started.run
                    row = self._finish(started, code)
                    if started.trial:
                        outer.write(self.tuner.finish(run, row))
                        continue
                    rows[run.run_id] = row
                    if row["status"] == "ok":
                        outer.write(f"done  {run.run_id}: {row.get('primary_metric', run.primary_metric)}={row['primary_value']:.4f} in {row['wall_time_s']:.1f} s")
                    else:
                        failures += 1
                        outer.write(f"FAIL  {run.run_id}: {row['status']}; log: {run.run_dir / LOG_NAME}")
                    outer.update(1)
                    self._write(rows)
                    if failures and self.fail_fast and not stopping:
                        stopping = True
                        for other in in_flight.values():
                            launcher.kill(other.handle, other.run)
                            outer.write(f"stop  {other.run.run_id} (--fail-fast)")
                        in_flight.clear()
                if in_flight:
                    time.sleep(0.2)
        finally:
            for other in in_flight.values():  # interrupted (Ctrl-C, SIGTERM): no orphaned runs
                launcher.kill(other.handle, other.run)
            if inner is not None:
                inner.close()
            launcher.close()
            outer.close()
            if self.tuner is not None:
                self.tuner.write_trials()
        self._write(rows)
        return [rows[r.run_id] for r in self.runs if r.run_id in rows]

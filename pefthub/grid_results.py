"""Reading a finished grid run (TensorBoard events, adapter files, hardware) into its
results row, and writing the results table."""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
from importlib import metadata
from pathlib import Path
from typing import Any

from pefthub.events import read_scalars
from pefthub.grid_spec import CONFIG_NAME, FIXED_COLUMNS, RESULT_NAME, TAIL_COLUMNS, RunSpec

# ---------------------------------------------------------------------- reading a finished run


def adapter_figures(adapter_dir: Path) -> dict[str, Any]:
    """Bytes on disk of the saved adapter and the number of adapter scalars in it (the task
    head excluded)."""
    from safetensors import safe_open

    from pefthub.adapters.io import WEIGHTS_NAME
    from pefthub.budget import adapter_file_bytes

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
    return {"adapter_params": params, "adapter_bytes": adapter_file_bytes(adapter_dir)}


def hardware(config: dict[str, Any] | None = None, threads: int | None = None) -> dict[str, Any]:
    """CPU model and cores, the run's OMP_NUM_THREADS (``threads``, else this process's), torch
    version, and the GPU name when the run asked for one."""
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
    if threads is None:
        threads = os.environ.get("OMP_NUM_THREADS", "")  # empty: torch's default (all cores)
    return {"cpu": cpu, "cpu_cores": os.cpu_count(), "omp_num_threads": threads, "torch": torch_version, "gpu": gpu}


def collect_result(run: RunSpec, wall_time_s: float, threads: int | None = None) -> dict[str, Any]:
    """The results row of a finished run, from its TensorBoard events and adapter files
    (``threads``: the OMP_NUM_THREADS it ran with)."""
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
        **hardware(run.config, threads),
        "run_dir": str(run.run_dir),
        "config": str(run.run_dir / CONFIG_NAME),
        **run.extra,
    }
    if row["flop_overhead"] is None:
        flops_on = any(str(c.get("class_path", "")).endswith("FlopOverhead") for c in run.config["trainer"]["callbacks"])
        row["flop_note"] = "fvcore measurement failed (see run.log)" if flops_on else "not measured (flops: false)"
    for tag in sorted(scalars):
        if tag.startswith("budget/") and tag.split("/", 1)[1] not in row and tag not in ("budget/flop_seq_len",):
            row[tag] = last(tag)
    return row


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


def experiment_rows(rows: list[dict[str, Any]], runs: list[RunSpec], folder: Path) -> list[dict[str, Any]]:
    """``rows`` (this invocation's runs, in grid order) followed by every other finished run of
    the experiment ``folder`` (its ``<run_id>/result.json``, by run id), so the table holds all
    finished runs whichever invocation ran them. A stored run whose id is in ``runs`` but not in
    ``rows`` (not reached this time, e.g. after ``--fail-fast``) has an outdated config and is left out."""
    have = {row.get("run_id") for row in rows}
    selected = {run.run_id for run in runs}
    others = []
    for marker in sorted(folder.glob(f"*/{RESULT_NAME}")):
        run_id = marker.parent.name
        if run_id in have or run_id in selected:
            continue
        try:
            others.append(json.loads(marker.read_text())["row"])
        except (OSError, ValueError, KeyError):
            continue  # a marker being written by another invocation right now
    return [*rows, *others]

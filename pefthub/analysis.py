"""Load finished runs into pandas for analysis: the grid's results file, every run's TensorBoard
scalars and its saved ``config.yaml``; summaries over seeds and a noise check.

Nothing here trains or re-evaluates: notebooks (``notebooks/compare_methods.ipynb``) only plot
what these functions return.

- :func:`load_runs` — the results CSV/Parquet of ``pefthub grid`` with each run's resolved
  config flattened into ``cfg.*`` columns (one row per run);
- :func:`load_scalars` — every logged scalar of those runs as a long table
  (``run_id, method, budget, task, backbone, seed, tag, step, value``);
- :func:`summarize` — mean ± std (and n) of a metric per method/budget/task/backbone;
- :func:`noise_check` / :func:`compare_to` — is a difference between two methods larger than
  the seed-to-seed noise?
- :func:`rank_matrix`, :func:`final_values` — AdaLoRA/GLoRA rank patterns (``rank/*``) as a
  depth × module-type matrix, and final ``importance/*`` values.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

GROUP = ("method", "budget", "task", "backbone")
RUN_COLUMNS = ("run_id", "method", "budget", "task", "backbone", "seed")


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model": {"init_args": {"rank": 8}}}`` → ``{"model.rank": 8}`` (``init_args`` dropped,
    lists kept as JSON strings so the table stays flat)."""
    flat: dict[str, Any] = {}
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "init_args":
                flat.update(_flatten(value, prefix))
                continue
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    key = prefix[:-1]
    flat[key] = json.dumps(config) if isinstance(config, list) else config
    return flat


def load_config(run_dir: str | Path) -> dict[str, Any]:
    """The config LightningCLI saved for a run (``config.yaml``; the grid's
    ``grid_config.yaml`` when that is missing), flattened (see :func:`_flatten`)."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "grid_config.yaml"):
        path = run_dir / name
        if path.is_file():
            return _flatten(yaml.safe_load(path.read_text()) or {})
    return {}


def load_runs(results: str | Path, with_config: bool = True) -> pd.DataFrame:
    """One row per run: the grid's results file, plus ``cfg.<key>`` columns from each run's saved
    config. ``run_dir`` paths in the file that do not exist are looked up next to it
    (``<folder of results>/<run_id>``), so a results folder can be moved."""
    results = Path(results)
    frame = pd.read_parquet(results) if results.suffix == ".parquet" else pd.read_csv(results)
    if frame.empty:
        return frame
    frame["budget"] = frame["budget"].fillna("").astype(str)
    frame["run_dir"] = [str(_run_dir(results, row)) for row in frame.itertuples()]
    if with_config:
        configs = [load_config(path) for path in frame["run_dir"]]
        config_frame = pd.DataFrame(configs, index=frame.index).add_prefix("cfg.")
        frame = pd.concat([frame, config_frame], axis=1)
    return frame


def _run_dir(results: Path, row: Any) -> Path:
    path = Path(str(getattr(row, "run_dir", "")))
    if path.is_dir():
        return path
    return results.parent / str(row.run_id)


def read_event_scalars(run_dir: str | Path) -> pd.DataFrame:
    """``tag, step, value`` of every scalar in the event files directly under ``run_dir``."""
    from pefthub.events import read_scalars

    rows = [(tag, step, value) for tag, values in read_scalars(run_dir).items() for step, value in values]
    return pd.DataFrame(rows, columns=["tag", "step", "value"])


def load_scalars(runs: pd.DataFrame, prefixes: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table of every run's logged scalars whose tag starts with one of ``prefixes``
    (all when ``None``), with the run's axes as columns."""
    parts = []
    for row in runs.itertuples():
        scalars = read_event_scalars(row.run_dir)
        if prefixes is not None:
            scalars = scalars[scalars["tag"].str.startswith(tuple(prefixes))]
        for column in RUN_COLUMNS:
            scalars[column] = getattr(row, column)
        parts.append(scalars)
    if not parts:
        return pd.DataFrame(columns=[*RUN_COLUMNS, "tag", "step", "value"])
    return pd.concat(parts, ignore_index=True)[[*RUN_COLUMNS, "tag", "step", "value"]]


def summarize(runs: pd.DataFrame, metric: str = "primary_value", by: Sequence[str] = GROUP,
              extra: Iterable[str] = ("trainable_params", "adapter_bytes", "flop_overhead", "wall_time_s")) -> pd.DataFrame:
    """Mean, standard deviation (sample, ddof 1; NaN for one seed) and n of ``metric`` per
    group, with the mean of each ``extra`` column, and a ``mean ± std`` text column."""
    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    grouped = ok.groupby(list(by), dropna=False, sort=False)
    table = grouped[metric].agg(mean="mean", std="std", n="count")
    for column in extra:
        if column in ok:
            table[column] = grouped[column].mean()
    table["mean ± std"] = [_pm(m, s) for m, s in zip(table["mean"], table["std"], strict=True)]
    return table.reset_index()


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}" if not math.isnan(std) else f"{mean:.4f} (1 seed)"


def noise_check(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> dict[str, Any]:
    """Is ``mean(a) − mean(b)`` distinguishable from seed noise?

    Two criteria, both reported: the difference against the combined standard deviation
    ``sqrt(std_a² + std_b²)`` (a difference smaller than that is inside the noise), and
    Welch's unequal-variance t-test (when scipy is installed and each side has ≥ 2 values).
    The verdict is ``inside the noise`` when either says so (``|Δ| <`` combined std, or
    ``p ≥ alpha``), ``distinguishable`` otherwise, ``too few seeds`` with fewer than 2 values
    on a side.
    """
    a, b = [float(x) for x in a], [float(x) for x in b]
    result: dict[str, Any] = {"n_a": len(a), "n_b": len(b), "delta": float("nan"), "combined_std": float("nan"),
                              "p_welch": float("nan"), "verdict": "too few seeds"}
    if not a or not b:
        return result
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    result["delta"] = mean_a - mean_b
    if len(a) < 2 or len(b) < 2:
        return result
    std_a = pd.Series(a).std()
    std_b = pd.Series(b).std()
    result["combined_std"] = math.sqrt(std_a**2 + std_b**2)
    try:
        from scipy.stats import ttest_ind

        if std_a > 0 or std_b > 0:
            result["p_welch"] = float(ttest_ind(a, b, equal_var=False).pvalue)
    except ImportError:
        pass
    inside = abs(result["delta"]) < result["combined_std"] or (not math.isnan(result["p_welch"]) and result["p_welch"] >= alpha)
    if result["combined_std"] == 0:
        inside = result["delta"] == 0
    result["verdict"] = "inside the noise" if inside else "distinguishable"
    return result


def compare_to(runs: pd.DataFrame, reference: str, metric: str = "primary_value",
               within: Sequence[str] = ("budget", "task", "backbone"), alpha: float = 0.05) -> pd.DataFrame:
    """Each method against ``reference`` (a method name) within each ``within`` group (seeds
    are the samples): Δ mean, combined std, Welch p and the :func:`noise_check` verdict.
    A method without budgets is compared with every budget of the reference, and vice versa."""
    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    rows = []
    keys = [k for k in within if k != "budget"]
    for group, frame in ok.groupby(keys, sort=False) if keys else [((), ok)]:
        group = group if isinstance(group, tuple) else (group,)
        ref = frame[frame["method"] == reference]
        for (method, budget), own in frame.groupby(["method", "budget"], sort=False):
            if method == reference:
                continue
            same_budget = ref[ref["budget"] == budget] if "budget" in within and budget in set(ref["budget"]) else ref
            if same_budget.empty:
                continue
            check = noise_check(own[metric], same_budget[metric], alpha)
            rows.append({**dict(zip(keys, group, strict=True)), "method": method, "budget": budget, "reference": reference,
                         "mean": own[metric].mean(), "reference_mean": same_budget[metric].mean(), **check})
    return pd.DataFrame(rows)


def final_values(scalars: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """The last logged value of every ``<prefix>/<name>`` tag per run: columns ``run_id`` (and
    the run's axes), ``name``, ``value``."""
    tagged = scalars[scalars["tag"].str.startswith(prefix + "/")]
    if tagged.empty:
        return pd.DataFrame(columns=[*RUN_COLUMNS, "name", "value"])
    last = tagged.sort_values("step").groupby(["run_id", "tag"], sort=False).tail(1).copy()
    last["name"] = last["tag"].str.slice(len(prefix) + 1)
    return last[[*RUN_COLUMNS, "name", "value"]].reset_index(drop=True)


_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.(.+)$")


def site_of(name: str, sites: dict[str, dict] | None = None) -> tuple[int, str] | None:
    """(depth, module type) of an adapted module name: from the adapter file's ``sites`` when
    given, else parsed from the name (``encoder.layer.3.attention.self.query`` → (3,
    ``attention.self.query``)); ``None`` for a name that is not a layer's module."""
    if sites and name in sites:
        return int(sites[name]["depth"]), str(sites[name]["module_type"])
    match = _LAYER.search(name)
    return (int(match.group(1)), match.group(2)) if match else None


def adapter_sites(run_dir: str | Path) -> dict[str, dict]:
    """``sites`` of a run's saved adapter (name → depth, module_type, d_in, d_out), or ``{}``."""
    path = Path(run_dir) / "adapter" / "adapter_config.json"
    if not path.is_file():
        return {}
    return {site["name"]: site for site in json.loads(path.read_text()).get("sites", [])}


def rank_matrix(scalars: pd.DataFrame, run_id: str, run_dir: str | Path | None = None) -> pd.DataFrame:
    """The run's final rank per adapted matrix (``rank/<module>`` scalars) as a depth × module
    type matrix (rows: depth, columns: module type)."""
    values = final_values(scalars[scalars["run_id"] == run_id], "rank")
    sites = adapter_sites(run_dir) if run_dir is not None else {}
    if sites:
        position = {name: i for i, name in enumerate(sites)}
        values = values.sort_values("name", key=lambda names: names.map(lambda n: position.get(n, len(position))))
    cells = []
    for row in values.itertuples():
        site = site_of(row.name, sites)
        if site is not None:
            cells.append({"depth": site[0], "module_type": site[1], "rank": row.value})
    if not cells:
        return pd.DataFrame()
    frame = pd.DataFrame(cells)
    order = list(dict.fromkeys(frame["module_type"]))  # the model's order, not alphabetical
    matrix = frame.pivot_table(index="depth", columns="module_type", values="rank", aggfunc="first")
    return matrix[order]

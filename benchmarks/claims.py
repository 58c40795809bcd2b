"""Every proposal's head-to-head claim, its measured value and a verdict, from run records.

    python benchmarks/claims.py --grid runs/claims_sst2 \
        --step-time runs/bench/step_time_cpu_quiet.csv \
        --transfer runs/unihyper-transfer-full/records.jsonl --out docs/claims.md

Inputs (any may be missing: the claims that need it are then "not testable yet"):

- ``--grid``: a ``pefthub grid`` experiment folder (``results.csv``; each run's
  ``grid_config.yaml`` says its schedule; ``tuning.csv``, the tuning stage's trials), e.g.
  ``configs/experiments/claims_sst2.yaml``'s, or its committed copy made by
  ``benchmarks/export_grid.py`` (``results/claims_sst2``).
- ``--step-time``: ``benchmarks/step_time.py``'s CSV (aten ops and median time per training step).
- ``--transfer``: ``benchmarks/unihyper_transfer.py``'s ``records.jsonl`` (source, transfer,
  satlora and flops records).

Rules, written into the document: two methods are "≈" when their mean test scores differ by at
most ``--tolerance`` (1 accuracy point); "A > B" holds when the mean difference is positive and
larger than twice its standard error (Welch); "at LoRA's cost / speed" holds when a training step
dispatches at most 1.10 × LoRA's aten ops (a small model's GPU step costs ≈ 20 µs per op). A verdict
needs ≥ 3 seeds per method at the full schedule (the shipped configs: ``--full-epochs`` epochs on
every training row); anything less is reported with its values as "not testable yet".
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pefthub.grid_spec import RESULTS_NAME
from pefthub.grid_tune import TRIALS_NAME

HELD, NOT_HELD, UNTESTED = "held", "not held", "not testable yet"
OPS_SLACK = 1.10  # "at LoRA's cost": at most 10 % more aten ops per training step
STEP_VARIANTS = {"lora": "pefthub_lora", "adalora": "pefthub_adalora", "fw_lora": "fw_lora", "iw_lora": "iw_lora",
                 "glora": "glora", "unihyperlora": "unihyperlora", "full": "full_finetune"}


@dataclass
class Scores:
    """One method's test scores over seeds, and whether every run had the full schedule."""

    method: str
    values: list[float]
    full: bool
    schedule: str
    lr: str = ""

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    def mean_std(self) -> str:
        """``mean ± std``; one seed has no spread, so none is shown."""
        return f"{self.mean:.4f} ± {self.std:.4f}" if len(self.values) > 1 else f"{self.mean:.4f} (one seed)"

    def shown(self) -> str:
        per_seed = " / ".join(f"{v:.4f}" for v in self.values)
        lr = f", lr {self.lr}" if self.lr else ""
        return f"{self.method} {self.mean_std()} ({per_seed}; n={len(self.values)}{lr})"

    def testable(self) -> str | None:
        """Why these scores cannot carry a verdict, or None."""
        if len(self.values) < 3:
            return f"{self.method}: {len(self.values)} seed(s), 3 needed"
        if not self.full:
            return f"{self.method}: short schedule ({self.schedule})"
        return None


@dataclass
class Verdict:
    proposal: str
    claim: str
    measured: str
    verdict: str
    why: str


def _schedule(config_path: str, full_epochs: int) -> tuple[bool, str]:
    """Whether a run had the full schedule (``full_epochs`` epochs, no row or step limit)."""
    path = Path(config_path)
    if not path.is_file():
        return False, f"config {path} missing"
    config = yaml.safe_load(path.read_text())
    trainer = config.get("trainer") or {}
    data = (config.get("data") or {}).get("init_args") or {}
    epochs, max_steps, limit = trainer.get("max_epochs"), trainer.get("max_steps"), data.get("train_limit")
    shown = f"{epochs} epoch(s)" + (f", max_steps {max_steps}" if max_steps not in (None, -1) else "") + (
        f", {limit} train rows" if limit else ", all train rows")
    return epochs is not None and epochs >= full_epochs and max_steps in (None, -1) and not limit, shown


def read_grid(folder: Path, task: str, full_epochs: int) -> dict[str, Scores]:
    """Test scores per method (budget ``default`` or the method's only budget) from ``results.csv``."""
    path = folder / RESULTS_NAME
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["status"] == "ok" and r["task"] == task]
    scores: dict[str, Scores] = {}
    for row in sorted(rows, key=lambda r: (r["method"], int(r["seed"]))):
        config = Path(row["config"])
        if not config.is_absolute() and not config.is_file() and (folder / config).is_file():
            config = folder / config  # an exported copy (benchmarks/export_grid.py): relative to the folder
        full, shown = _schedule(str(config), full_epochs)
        entry = scores.setdefault(row["method"], Scores(row["method"], [], True, shown, row.get("tuned/model.optimizer.lr", "")))
        entry.values.append(float(row["primary_value"]))
        entry.full = entry.full and full
        if not full:
            entry.schedule = shown
    return scores


def read_trials(folder: Path) -> list[dict[str, str]]:
    """The tuning stage's trials (``tuning.csv``), if the grid tuned."""
    path = folder / TRIALS_NAME
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["state"] != "WAITING"]  # queued, not started: no values yet
    return sorted(rows, key=lambda r: (r["group"], int(r["trial"])))


def read_step_time(path: Path | None) -> dict[str, dict[str, str]]:
    if path is None or not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {row["variant"]: row for row in csv.DictReader(handle)}


def read_records(path: Path | None) -> list[dict[str, Any]]:
    if path is None or not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _missing(grid: dict[str, Scores], *methods: str) -> tuple[str, str, str] | None:
    absent = [m for m in methods if m not in grid]
    return ("no runs", UNTESTED, f"no grid runs of {', '.join(absent)}") if absent else None


def greater(grid: dict[str, Scores], first: str, second: str) -> tuple[str, str, str]:
    """(measured, verdict, why) for "first > second"."""
    if missing := _missing(grid, first, second):
        return missing
    a, b = grid[first], grid[second]
    delta = a.mean - b.mean
    se = math.sqrt(a.std**2 / len(a.values) + b.std**2 / len(b.values))
    measured = f"{a.shown()} vs {b.shown()}; Δ {delta * 100:+.2f} points (2·SE {2 * se * 100:.2f})"
    reason = a.testable() or b.testable()
    if reason:
        return measured, UNTESTED, reason
    if delta > 0 and delta > 2 * se:
        return measured, HELD, "Δ > 0 and Δ > 2·SE"
    return measured, NOT_HELD, "Δ ≤ 0" if delta <= 0 else "Δ > 0 but within 2·SE (seed noise)"


def approx(grid: dict[str, Scores], first: str, second: str, tolerance: float) -> tuple[str, str, str]:
    """(measured, verdict, why) for "first ≈ second" (|Δ mean| ≤ tolerance)."""
    if missing := _missing(grid, first, second):
        return missing
    a, b = grid[first], grid[second]
    delta = a.mean - b.mean
    measured = f"{a.shown()} vs {b.shown()}; Δ {delta * 100:+.2f} points"
    reason = a.testable() or b.testable()
    if reason:
        return measured, UNTESTED, reason
    within = abs(delta) <= tolerance
    return measured, HELD if within else NOT_HELD, f"abs(Δ) {'≤' if within else '>'} {tolerance * 100:g} point(s)"


def op_cost(method: str, steps: dict[str, dict[str, str]]) -> tuple[str, str, str]:
    """(measured, verdict, why) for "``method`` at LoRA's cost" (aten ops per step ≤ 1.10 × LoRA's)."""
    own, lora = steps.get(STEP_VARIANTS[method]), steps.get("pefthub_lora")
    if own is None or lora is None:
        return "no step-time record", UNTESTED, "run benchmarks/step_time.py"
    ratio = float(own["aten_ops"]) / float(lora["aten_ops"])
    time_ratio = float(own["median_step_s"]) / float(lora["median_step_s"])
    measured = (f"{int(own['aten_ops']):,} vs LoRA's {int(lora['aten_ops']):,} aten ops per step ({ratio:.2f}×); "
                f"{own['device']} step time {time_ratio:.2f}× LoRA's")
    return measured, HELD if ratio <= OPS_SLACK else NOT_HELD, f"ops ratio {'≤' if ratio <= OPS_SLACK else '>'} {OPS_SLACK:.2f}"


def both(*parts: tuple[str, str, str]) -> tuple[str, str, str]:
    """A claim made of several parts holds when every part holds."""
    measured = "; ".join(dict.fromkeys(p[0] for p in parts))
    verdicts = [p[1] for p in parts]
    verdict = NOT_HELD if NOT_HELD in verdicts else UNTESTED if UNTESTED in verdicts else HELD
    return measured, verdict, "; ".join(dict.fromkeys(p[2] for p in parts))


def _seeds_ok(records: list[dict[str, Any]]) -> str | None:
    seeds = {r.get("seed") for r in records}
    return None if len(seeds) >= 3 else f"{len(seeds)} seed(s), 3 needed"


def _full_transfer(sources: list[dict[str, Any]], full_epochs: int) -> str | None:
    short = [s for s in sources if s.get("train_examples") is not None or (s.get("epochs") or 0) < full_epochs]
    if short:
        s = short[0]
        return f"short schedule (source {s.get('train_examples') or 'all'} rows, {s.get('epochs')} epoch(s))"
    return None


def unihyper_claims(records: list[dict[str, Any]], grid: dict[str, Scores], tolerance: float,
                    full_epochs: int) -> list[Verdict]:
    proposal = "UniHyperLoRA"
    sources = [r for r in records if r["what"] == "source"]
    flops = [r for r in records if r["what"] == "flops"]
    transfers = [r for r in records if r["what"] == "transfer" and "zero_shot_accuracy" in r]
    out = []
    if sources:
        largest = max(r["adapter_bytes"] for r in sources)
        out.append(Verdict(proposal, "adapter file 0.97 MB, within the 1 MB budget",
                           f"{largest:,} bytes (largest of {len(sources)} saved source adapters)",
                           HELD if largest <= 1_000_000 else NOT_HELD, "≤ 1,000,000 bytes"))
        ks = [r["atoms_per_token"] for r in sources if r.get("atoms_per_token") is not None]
        if ks:
            k = statistics.fmean(ks)
            reason = _seeds_ok(sources) or _full_transfer(sources, full_epochs)
            verdict = UNTESTED if reason else HELD if abs(k - 1.8) <= 0.2 else NOT_HELD
            presets = sorted({r.get("preset", "default") for r in sources})
            out.append(Verdict(proposal, "k ≈ 1.8 atoms fire per token", f"E[k] {k:.2f} (presets {presets})", verdict,
                               reason or "|E[k] − 1.8| ≤ 0.2"))
    else:
        out.append(Verdict(proposal, "adapter file 0.97 MB, within the 1 MB budget", "no source record", UNTESTED,
                           "run benchmarks/unihyper_transfer.py"))
    if flops:
        inference = statistics.fmean(r["overhead"] for r in flops)
        training = statistics.fmean(r["per_forward_overhead"] for r in flops if "per_forward_overhead" in r)
        out.append(Verdict(proposal, "+8 % FLOPs over the host's forward",
                           f"+{inference:.1%} with cached projectors (inference); +{training:.1%} per training forward (fvcore, 128 tokens)",
                           HELD if inference <= 0.08 else NOT_HELD, "inference overhead ≤ 8 %"))
    reason = (_seeds_ok(sources) or _full_transfer(sources, full_epochs)) if sources else "no source record"
    source_acc = {r["seed"]: r["test_accuracy_fp32"] for r in sources}
    hosts = sorted({r["host"] for r in transfers if r["host"] not in {s["host"] for s in sources}})
    for host in hosts:
        rows = [r for r in transfers if r["host"] == host and r["seed"] in source_acc]
        drops = [source_acc[r["seed"]] - r["zero_shot_accuracy"] for r in rows]
        if not drops:
            continue
        drop = statistics.fmean(drops)
        out.append(Verdict(proposal, f"≤ 1 % zero-shot accuracy drop on {host}",
                           f"drop {drop * 100:.2f} points (mean over {len(drops)} seed(s))",
                           UNTESTED if reason else HELD if drop <= 0.01 else NOT_HELD, reason or "drop ≤ 1 point"))
        tuned = [r["after_delta_accuracy"] for r in rows if "after_delta_accuracy" in r]
        per_host = [r["test_accuracy"] for r in records if r["what"] == "satlora" and r["host"] == host]
        if tuned and per_host:
            delta = statistics.fmean(tuned) - statistics.fmean(per_host)
            short_delta = any((r.get("delta_steps") or 0) < 500 for r in rows)
            why = reason or ("δθ phase under 500 steps" if short_delta else None)
            out.append(Verdict(proposal, f"δθ tuning matches per-host training on {host}",
                               f"after δθ {statistics.fmean(tuned):.4f} vs SAT-LoRA trained on the host {statistics.fmean(per_host):.4f} "
                               f"(Δ {delta * 100:+.2f} points)",
                               UNTESTED if why else HELD if delta >= -tolerance else NOT_HELD,
                               why or f"Δ ≥ −{tolerance * 100:g} point(s)"))
    if not hosts:
        out.append(Verdict(proposal, "≤ 1 % zero-shot drop; δθ matches per-host training", "no transfer record", UNTESTED,
                           "run benchmarks/unihyper_transfer.py with --targets"))
    return out


def evaluate(grid: dict[str, Scores], steps: dict[str, dict[str, str]], records: list[dict[str, Any]],
             tolerance: float = 0.01, full_epochs: int = 3) -> list[Verdict]:
    rows = [
        Verdict("AdaLoRA", "AdaLoRA > LoRA at equal budget", *greater(grid, "adalora", "lora")),
        Verdict("FW-LoRA", "FW-LoRA ≈ AdaLoRA at LoRA's cost",
                *both(approx(grid, "fw_lora", "adalora", tolerance), op_cost("fw_lora", steps))),
        Verdict("IW-LoRA", "IW-LoRA ≈ AdaLoRA > LoRA",
                *both(approx(grid, "iw_lora", "adalora", tolerance), greater(grid, "iw_lora", "lora"))),
        Verdict("GLoRA", "GLoRA ≈ AdaLoRA at LoRA speed",
                *both(approx(grid, "glora", "adalora", tolerance), op_cost("glora", steps))),
    ]
    return rows + unihyper_claims(records, grid, tolerance, full_epochs)


def render(verdicts: list[Verdict], grid: dict[str, Scores], command: str, sources: list[str], tolerance: float,
           trials: list[dict[str, str]] | None = None) -> str:
    lines = [
        "# Claims: what each proposal says, what was measured",
        "",
        f"Generated by `{command}` — do not edit by hand; rerun it when the records change.",
        f"Records read: {', '.join(sources) or 'none'}.",
        "",
        f"Rules: \"A ≈ B\" holds when the mean test scores differ by at most {tolerance * 100:g} point(s); "
        "\"A > B\" when the mean difference is positive and larger than twice its standard error (Welch); "
        f"\"at LoRA's cost / speed\" when a training step dispatches at most {OPS_SLACK:.2f} × LoRA's aten ops "
        "(a small model's GPU step costs ≈ 20 µs per op, so ops predict GPU time). A verdict needs 3 seeds per "
        "method at the full schedule (the shipped configs); fewer seeds or a shortened run is shown as "
        "\"not testable yet\" with its values.",
        "",
        "| proposal | claim | measured | verdict | rule / why |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {v.proposal} | {v.claim} | {v.measured} | **{v.verdict}** | {v.why} |" for v in verdicts]
    if grid:
        lines += ["", "## Test scores per method", "", "| method | mean ± std | per seed | chosen lr | schedule |", "|---|---|---|---|---|"]
        for s in sorted(grid.values(), key=lambda s: -s.mean):
            lines.append(f"| {s.method} | {s.mean_std()} | {' / '.join(f'{v:.4f}' for v in s.values)} | "
                         f"{s.lr or '—'} | {'full' if s.full else s.schedule} |")
    if trials:
        params = sorted({k for t in trials for k in t if k.startswith("param/") and t[k]})
        lines += ["", "## Tuning trials (one seed, scored on validation: the best validation value of the run)", "",
                  "| group | " + " | ".join(p.removeprefix("param/") for p in params) + " | state | validation |",
                  "|---|" + "---|" * (len(params) + 2)]
        for t in trials:
            value = f"{float(t['value']):.4f}" if t.get("value") else "—"
            lines.append(f"| {t['group']} | " + " | ".join(t.get(p) or "—" for p in params) + f" | {t['state']} | {value} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=Path, help="a pefthub grid experiment folder (results.csv)")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--step-time", type=Path, help="benchmarks/step_time.py's CSV")
    parser.add_argument("--transfer", type=Path, help="benchmarks/unihyper_transfer.py's records.jsonl")
    parser.add_argument("--tolerance", type=float, default=0.01, help="'≈' margin on test accuracy (0.01 = 1 point)")
    parser.add_argument("--full-epochs", type=int, default=3, help="epochs of the full schedule (the shipped configs')")
    parser.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    args = parser.parse_args(argv)
    grid = read_grid(args.grid, args.task, args.full_epochs) if args.grid else {}
    verdicts = evaluate(grid, read_step_time(args.step_time), read_records(args.transfer), args.tolerance, args.full_epochs)
    command = "python benchmarks/claims.py " + " ".join(sys.argv[1:] if argv is None else argv)
    sources = [str(p) for p in (args.grid, args.step_time, args.transfer) if p is not None]
    trials = read_trials(args.grid) if args.grid else []
    text = render(verdicts, grid, command.strip(), sources, args.tolerance, trials)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}: " + ", ".join(f"{sum(v.verdict == k for v in verdicts)} {k}" for k in (HELD, NOT_HELD, UNTESTED)))
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""LoRA r=8 vs FW-LoRA, IW-LoRA and GLoRA (R_total = LoRA's total rank) on builtin sst2, several seeds.

Each run is the shipped config (``configs/<method>/sst2.yaml``) through the ``pefthub`` CLI,
with the same overrides for every method: the seed, optional ``--warmup_steps`` for the three
importance methods (their warm-up/calibration length, scaled down with the run), optional
``data.train_limit`` / ``trainer.max_epochs`` / ``data.max_length`` (for CPU budgets), no
validation and no checkpoint callbacks, so ``--test_after_fit`` tests the *final* weights of
both methods on the real GLUE SST-2 dev set (872 sentences). Results are read back from the
TensorBoard event files and the saved adapter_config.json.

Run:  python benchmarks/importance_vs_lora_sst2.py --seeds 0 1 2 --train_limit 2000 --max_epochs 2 --warmup_steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("lora", "fw_lora", "iw_lora", "glora")


def run(method: str, seed: int, args, out: Path) -> dict:
    name = f"{method}-s{seed}"
    command = [
        sys.executable, "-m", "pefthub.cli", "fit", "-c", str(REPO / "configs" / method / "sst2.yaml"),
        "--seed_everything", str(seed), "--test_after_fit", "true",
        "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", str(args.max_epochs),
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", name,
        "--data.max_length", str(args.max_length),
    ]
    if args.train_limit:
        command += ["--data.train_limit", str(args.train_limit)]
    if args.backbone:
        command += ["--model.backbone", args.backbone]
    if args.warmup_steps and method != "lora":
        command += ["--model.warmup_steps", str(args.warmup_steps)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    from pefthub.events import read_scalars

    run_dir = out / name / "version_0"
    scalars = read_scalars(run_dir)
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    record = {
        "method": method, "seed": seed, "wall_s": round(wall, 1),
        "test_accuracy": scalars["test/accuracy"][-1][1],
        "final_total_rank": sum(adapter["rank_pattern"].values()),
    }
    if method == "glora":
        record["rank_pattern"] = adapter["rank_pattern"]
        record["removed_adapters"] = sum(r == 0 for r in adapter["rank_pattern"].values())
    if method in ("fw_lora", "iw_lora"):
        weights = [row["penalty_weight"] for row in adapter["importance"].values()]
        record["penalty_weight_range"] = [min(weights), max(weights)]
        if "train/regularization" in scalars:
            record["final_regularization"] = scalars["train/regularization"][-1][1]
    print(json.dumps(record), flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train_limit", type=int, default=None)
    parser.add_argument("--max_epochs", type=int, default=3)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup_steps", type=int, default=None, help="warm-up steps of fw/iw/glora (default: the config's)")
    parser.add_argument("--backbone", default=None, help="override the configs' backbone (e.g. tiny-bert for a smoke test)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--out", default="runs/importance_vs_lora")
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    records = [run(method, seed, args, out) for seed in args.seeds for method in args.methods]
    print("\nmethod   | test accuracy (mean ± std over seeds) | per seed")
    for method in args.methods:
        accs = [r["test_accuracy"] for r in records if r["method"] == method]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{method:8s} | {statistics.fmean(accs):.4f} ± {spread:.4f} | {', '.join(f'{a:.4f}' for a in accs)}")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": records}, indent=2))


if __name__ == "__main__":
    main()

"""LoRA r=8 vs AdaLoRA (final budget = LoRA's total rank) on builtin sst2, several seeds.

Each run is the shipped config (``configs/lora/sst2.yaml`` / ``configs/adalora/sst2.yaml``)
through the ``pefthub`` CLI, with the same overrides for both methods: the seed, optional
``--train_subset N`` / ``trainer.max_epochs`` / ``data.max_length`` (for CPU budgets), no
validation and no checkpoint callbacks, so ``--test_after_fit`` tests the *final* weights of
both methods on the real GLUE SST-2 dev set (872 sentences). Results are read back from the
TensorBoard event files and the saved adapter_config.json.

``--train_subset N`` trains on N rows drawn at random (seed 0, the same rows for every run)
from the builtin sst2 train split, written as a JSONL file and read with ``format: jsonl``.
Not ``data.train_limit``: that takes the *first* N rows of train.jsonl, and the shipped
file is ordered (its first 2,000 rows are 96 % positive).

Run:  python benchmarks/adalora_vs_lora_sst2.py --seeds 0 1 2 --train_subset 2000 --max_epochs 1
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


def run(method: str, seed: int, args, out: Path) -> dict:
    name = f"{method}-s{seed}"
    command = [
        sys.executable, "-m", "pefthub.cli", "fit", "-c", str(REPO / "configs" / method / "sst2.yaml"),
        "--seed_everything", str(seed), "--test_after_fit", "true",
        "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", str(args.max_epochs),
        "--trainer.logger.init_args.save_dir", str(out), "--trainer.logger.init_args.name", name,
        "--data.max_length", str(args.max_length), "--model.backbone", args.backbone,
    ]
    if args.train_subset:
        builtin = REPO / "pefthub" / "data" / "builtin" / "sst2"
        command += [
            "--data.task", "null", "--data.format", "jsonl", "--data.train_file", str(out / "sst2_train_subset.jsonl"),
            "--data.validation_file", str(builtin / "validation.jsonl"), "--data.test_file", str(builtin / "test.jsonl"),
            "--data.text_field", "text", "--data.label_field", "label", "--data.label_names", "[negative, positive]",
        ]
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
    if method == "adalora":
        record["final_active_adapter_params"] = scalars["budget/active_adapter_params"][-1][1]
        record["rank_pattern"] = adapter["rank_pattern"]
    print(json.dumps(record), flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train_subset", type=int, default=None, help="train on N random rows of sst2 train (seed 0)")
    parser.add_argument("--max_epochs", type=int, default=3)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backbone", default="minilm-l6", help="tiny-bert for a smoke test")
    parser.add_argument("--out", default="runs/adalora_vs_lora")
    args = parser.parse_args()
    out = (REPO / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.train_subset:
        import random

        rows = (REPO / "pefthub" / "data" / "builtin" / "sst2" / "train.jsonl").read_text(encoding="utf-8").splitlines()
        subset = random.Random(0).sample(rows, args.train_subset)
        (out / "sst2_train_subset.jsonl").write_text("\n".join(subset) + "\n", encoding="utf-8")
        labels = [json.loads(row)["label"] for row in subset]
        print(f"train subset: {len(subset)} rows, {sum(labels)} positive", flush=True)
    records = [run(method, seed, args, out) for seed in args.seeds for method in ("lora", "adalora")]
    print("\nmethod   | test accuracy (mean ± std over seeds) | per seed")
    for method in ("lora", "adalora"):
        accs = [r["test_accuracy"] for r in records if r["method"] == method]
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{method:8s} | {statistics.fmean(accs):.4f} ± {spread:.4f} | {', '.join(f'{a:.4f}' for a in accs)}")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "runs": records}, indent=2))


if __name__ == "__main__":
    main()

"""benchmarks/step_time.py: every variant runs, side by side, and lands in the CSV."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("step_time_benchmark", REPO / "benchmarks" / "step_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_time_benchmark_runs_every_variant_on_tiny_bert(tmp_path):
    bench = _load_benchmark()
    out = tmp_path / "step_time"
    summary = bench.main([
        "--backbone", "tiny-bert", "--steps", "4", "--warmup", "1", "--glora-warmup", "2",
        "--batch-size", "4", "--seq-len", "16", "--out", str(out),
    ])
    with open(out.with_suffix(".csv"), newline="") as handle:
        rows = {row["variant"]: row for row in csv.DictReader(handle)}
    assert list(rows) == list(bench.VARIANTS)
    for name, row in rows.items():
        assert row["timed_steps"] == "3" and float(row["median_step_s"]) > 0, name
        assert float(row["p25_step_s"]) <= float(row["median_step_s"]) <= float(row["p75_step_s"]), name
        assert float(row["state_mb"]) > 0 and not math.isnan(float(row["peak_step_mb"])), name
        assert int(row["aten_ops"]) > 0 and int(row["host_syncs"]) >= 0, name  # the middle round is op-counted
    assert float(rows["floor"]["ratio_to_floor"]) == 1.0
    # the HF PEFT references train exactly the same number of parameters
    assert rows["pefthub_lora"]["trainable_params"] == rows["hf_peft_lora"]["trainable_params"]
    assert rows["pefthub_adalora"]["trainable_params"] == rows["hf_peft_adalora"]["trainable_params"]
    assert int(rows["floor"]["trainable_params"]) == 66  # the head only: 32 hidden x 2 classes + 2
    from pefthub.backbones import load_backbone

    backbone, _ = load_backbone("tiny-bert")
    assert int(rows["full_finetune"]["trainable_params"]) == sum(p.numel() for p in backbone.parameters()) + 66
    lora, hf = float(rows["pefthub_lora"]["median_step_s"]), float(rows["hf_peft_lora"]["median_step_s"])
    assert summary["pefthub_lora_over_hf_peft_lora"] == lora / hf
    assert out.with_suffix(".png").stat().st_size > 10_000
    # the fused adapter layer dispatches fewer ops than HF PEFT's LoRA and adds no host sync
    assert int(rows["pefthub_lora"]["aten_ops"]) < int(rows["hf_peft_lora"]["aten_ops"])
    assert rows["pefthub_lora"]["host_syncs"] == rows["floor"]["host_syncs"]
    assert summary["aten_ops"]["pefthub_lora"] == int(rows["pefthub_lora"]["aten_ops"])

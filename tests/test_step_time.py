"""benchmarks/step_time.py: every variant runs, side by side, and lands in the CSV; the timing
core reports the medians, quartiles and ratios of the durations it measured (a fake clock)."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import math
from pathlib import Path

import pytest
import torch

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
    _assert_plot_shows_every_colour(out.with_suffix(".png"))
    # the fused adapter layer dispatches fewer ops than HF PEFT's LoRA and adds no host sync
    assert int(rows["pefthub_lora"]["aten_ops"]) < int(rows["hf_peft_lora"]["aten_ops"])
    assert rows["pefthub_lora"]["host_syncs"] == rows["floor"]["host_syncs"]
    assert summary["aten_ops"]["pefthub_lora"] == int(rows["pefthub_lora"]["aten_ops"])


def _assert_plot_shows_every_colour(path: Path) -> None:
    """The PNG decodes at the figure's size (12 x 4.5 in at 110 dpi) and shows bars in each of
    the plot's colours: the floor (grey), pefthub (blue) and HF PEFT (red)."""
    import matplotlib.image

    pixels = matplotlib.image.imread(path)[..., :3]
    assert pixels.shape[:2] == (495, 1320)
    for colour in ("#888888", "#1f77b4", "#d62728"):
        rgb = torch.tensor([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        close = (torch.from_numpy(pixels.copy()) - rgb).abs().amax(dim=-1) < 2 / 255
        assert close.sum() > 100, f"no {colour} bar in {path}"


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _FakeVariant:
    """Takes ``durations[round]`` seconds of the fake clock per step; logs the call order."""

    def __init__(self, name: str, durations: list[float], clock: _FakeClock, calls: list) -> None:
        self.name, self.durations, self.clock, self.calls = name, durations, clock, calls
        self.times: list[float] = []

    def step(self, batch: int, autocast, counter=None) -> None:
        self.calls.append((batch, self.name, counter is not None))
        with counter if counter is not None else contextlib.nullcontext():
            torch.ones(2).add_(1)  # one aten op for the counted round
        self.clock.now += self.durations[batch]


def test_the_timing_core_reports_medians_quartiles_and_both_ratios_of_what_it_measured():
    bench = _load_benchmark()
    clock, calls = _FakeClock(), []
    # round 0: warm-up (1000 s), round 3: the op-counted middle round (500 s); neither timed
    durations = {
        "floor": [1000, 1, 2, 500, 3, 4],
        "pefthub_lora": [1000, 3, 2, 500, 9, 4],
        "hf_peft_lora": [1000, 2, 4, 500, 2, 4],
    }
    variants = [_FakeVariant(name, d, clock, calls) for name, d in durations.items()]
    counts = bench.run_rounds(variants, batches=list(range(6)), warmup=1, steps=5,
                              autocast_factory=contextlib.nullcontext, clock=clock)
    assert [v.times for v in variants] == [[1, 2, 3, 4], [3, 2, 9, 4], [2, 4, 2, 4]]
    # the order rotates by one each round; round 3 is counted (with a counter), not timed
    assert [name for batch, name, _ in calls if batch == 1] == ["pefthub_lora", "hf_peft_lora", "floor"]
    assert [name for batch, name, _ in calls if batch == 2] == ["hf_peft_lora", "floor", "pefthub_lora"]
    assert {(name, counted) for batch, name, counted in calls if batch == 3} == {(n, True) for n in durations}
    assert sorted(counts) == sorted(durations) and all(c.total >= 1 for c in counts.values())

    columns = bench.timing_columns(variants)
    floor, lora, hf = columns["floor"], columns["pefthub_lora"], columns["hf_peft_lora"]
    assert (floor["timed_steps"], floor["median_step_s"], floor["p25_step_s"], floor["p75_step_s"]) == (4, 2.5, 1.25, 3.75)
    assert lora["median_step_s"] == 3.5 and hf["median_step_s"] == 3.0
    assert floor["ratio_to_floor"] == 1.0 and floor["paired_ratio_to_floor"] == 1.0
    assert lora["ratio_to_floor"] == pytest.approx(3.5 / 2.5)
    assert lora["paired_ratio_to_floor"] == 2.0  # median of 3/1, 2/2, 9/3, 4/4
    assert lora["ratio_to_hf_peft"] == pytest.approx(3.5 / 3.0)
    assert lora["paired_ratio_to_hf_peft"] == 1.25  # median of 3/2, 2/4, 9/2, 4/4
    assert math.isnan(floor["ratio_to_hf_peft"]) and math.isnan(hf["ratio_to_hf_peft"])  # no reference

    summary = bench.ratio_summary(variants)
    assert summary["pefthub_lora_over_hf_peft_lora"] == pytest.approx(3.5 / 3.0)
    assert summary["pefthub_lora_over_floor"] == pytest.approx(3.5 / 2.5)
    assert summary["pefthub_adalora_over_pefthub_lora"] is None  # AdaLoRA did not run
    assert summary["paired"]["pefthub_lora_over_hf_peft_lora"] == 1.25
    assert summary["paired"]["pefthub_lora_over_floor"] == 2.0
    assert math.isnan(summary["paired"]["pefthub_adalora_over_pefthub_lora"])

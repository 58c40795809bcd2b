"""The issue-6 transfer benchmark and its table, end to end on tiny hosts (seconds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_transfer_benchmark_records_and_table(tmp_path):
    bench = _run([str(REPO / "benchmarks" / "unihyper_transfer.py"), "--source", "tiny-bert", "--targets", "tiny-bert-h48-l3",
                  "--train-limit", "32", "--delta-steps", "2", "--seeds", "0", "1", "--new-tasks", "amazon",
                  "--new-task-hosts", "tiny-bert-h48-l3", "--out", "out"], tmp_path)
    assert bench.returncode == 0, bench.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records if r["what"] == "source"] == [0, 1]
    assert (tmp_path / "out" / "seed0" / "adapter" / "adapter.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "fits must not write into the working directory"
    assert (tmp_path / "out" / "seed0" / "fits" / "delta-tiny-bert-h48-l3" / "adapter" / "adapter.safetensors").is_file()
    transfers = [r for r in records if r["what"] == "transfer"]
    assert {(r["seed"], r["host"]) for r in transfers} == {(s, h) for s in (0, 1) for h in ("tiny-bert", "tiny-bert-h48-l3")}
    assert all(("after_delta_accuracy" in r) == (r["host"] != "tiny-bert") for r in transfers)
    new_task = {(r["seed"], r["mode"]): r for r in records if r["what"] == "new_task"}
    assert set(new_task) == {(s, m) for s in (0, 1) for m in ("delta+head", "head_only")}
    assert new_task[0, "delta+head"]["delta_params"] > 0 and new_task[0, "head_only"]["delta_params"] == 0
    assert new_task[0, "delta+head"]["new_head_params"] == new_task[0, "head_only"]["new_head_params"] == 256 * 2 + 2  # the portable head reads canonical (d0 = 256) space

    # --reuse-source transfers the saved adapter again without training the source
    again = _run([str(REPO / "benchmarks" / "unihyper_transfer.py"), "--source", "tiny-bert", "--targets", "tiny-bert-h48-l3",
                  "--train-limit", "32", "--delta-steps", "0", "--seeds", "0", "--reuse-source", "--out", "out"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()][len(records):]
    assert [r["what"] for r in rerun] == ["transfer"]
    first = next(r for r in transfers if r["seed"] == 0 and r["host"] == "tiny-bert-h48-l3")
    assert rerun[0]["zero_shot_accuracy"] == first["zero_shot_accuracy"]

    table = _run([str(REPO / "benchmarks" / "unihyper_table.py"), "--records", "out/records.jsonl"], tmp_path)
    assert table.returncode == 0, table.stderr[-3000:]
    zero_shots = [r["zero_shot_accuracy"] for r in transfers if r["host"] == "tiny-bert"]
    mean = sum(zero_shots) / 2
    row = next(line for line in table.stdout.splitlines() if line.startswith("| tiny-bert |"))
    assert f"{mean:.3f} ± " in row and "(2)" in row
    assert "| amazon (accuracy) | tiny-bert-h48-l3 |" in table.stdout

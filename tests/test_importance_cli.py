"""FW-LoRA, IW-LoRA and GLoRA through the `pefthub` command (tiny configs, subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "method", "tags"),
    [
        ("fw_lora", "importance_lora", ["train/regularization", "importance/step_mean", "delta_norm/encoder.layer.0.attention.self.query"]),
        ("iw_lora", "importance_lora", ["train/regularization", "importance/encoder.layer.1.output.dense", "delta_norm/encoder.layer.1.output.dense"]),
        ("glora", "glora", ["rank/encoder.layer.0.intermediate.dense", "rank/total", "importance/encoder.layer.0.output.dense"]),
    ],
)
def test_tiny_config_fits_and_logs_the_phase_change(tmp_path, name, method, tags):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    config = REPO / "configs" / "tiny" / f"{name}_sst2.yaml"
    result = subprocess.run([sys.executable, "-m", "pefthub.cli", "fit", "-c", str(config)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / f"tiny-{name}" / "version_0"
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["method"] == method and adapter["importance"] is not None

    from pefthub.events import event_tags, read_scalars

    scalars = read_scalars(run_dir)
    logged = event_tags(run_dir)
    for tag in tags:
        assert tag in logged["scalars"], f"{tag} not logged; scalars: {sorted(logged['scalars'])[:20]}..."
    assert any(t.startswith("importance/") for t in logged["histograms"]), logged["histograms"]
    assert "importance/table/text_summary" in logged["tensors"], logged["tensors"]
    if method == "glora":
        assert "rank/reallocated_heatmap" in logged["images"]
        ranks = [scalars[f"rank/{n}"][-1][1] for n in adapter["rank_pattern"]]
        assert ranks == [float(r) for r in adapter["rank_pattern"].values()]
        assert sum(adapter["rank_pattern"].values()) == adapter["total_rank"] == 12 * 4
    else:
        penalty = scalars["train/regularization"]
        assert penalty[0][0] >= 2 and all(value > 0 for _, value in penalty[1:])  # on after the 2-step warm-up

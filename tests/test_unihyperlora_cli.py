"""UniHyperLoRA through the `pefthub` command: source fit, then zero-shot test on another host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pefthub.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_fit_tiny_config_then_zero_shot_on_a_wider_deeper_host(tmp_path):
    fit = _run(["fit", "-c", str(REPO / "configs" / "tiny" / "unihyperlora_sst2.yaml")], tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    adapter = run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["method"] == "unihyperlora" and config["hyper"]["num_atoms"] == 16
    assert "backbone" not in config and "tiny-bert" not in json.dumps(config)

    from pefthub.events import read_scalars

    scalars = sorted(read_scalars(run_dir))
    for tag in ("budget/atoms_per_token", "budget/expected_atoms", "budget/adapter_file_bytes", "budget/delta_params", "train/regularization"):
        assert tag in scalars, f"{tag} not logged; logged: {scalars}"

    test = _run(
        ["test", "-c", str(REPO / "configs" / "unihyperlora" / "transfer_sst2.yaml"), "--model.init_adapter", str(adapter),
         "--model.backbone", "tiny-bert-h48-l3", "--data.eval_limit", "16", "--data.max_length", "32"],
        tmp_path,
    )
    assert test.returncode == 0, test.stderr[-3000:]
    assert "test/accuracy" in test.stdout

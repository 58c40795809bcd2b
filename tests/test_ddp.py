"""DDP on CPU (gloo, 2 processes) trains LoRA to the same weights as 1 process with the
doubled batch: each rank averages its half, DDP averages the ranks, so every optimiser step
sees the same mean gradient. Tolerance: atol 1e-5 (only float summation order differs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
COMMON = [
    "-c", str(REPO / "configs" / "tiny" / "lora_sst2.yaml"),
    "--trainer.max_epochs", "1", "--trainer.deterministic", "false", "--trainer.enable_progress_bar", "false",
    "--model.dropout", "0", "--model.head_dropout", "0",  # no randomness that differs between ranks
    "--data.train_limit", "48",
]


def _fit(cwd: Path, *extra: str) -> dict[str, torch.Tensor]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "pefthub.cli", "fit", *COMMON, *extra], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = cwd.glob("runs/tiny/version_*/checkpoints/last.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3  # 48 examples / 16 per step
    return state["state_dict"]


def test_two_process_ddp_equals_one_process_with_double_batch(tmp_path):
    (tmp_path / "single").mkdir(), (tmp_path / "ddp").mkdir()
    single = _fit(tmp_path / "single", "--data.batch_size", "16")
    ddp = _fit(tmp_path / "ddp", "--data.batch_size", "8", "--trainer.strategy", "ddp", "--trainer.devices", "2",
               "--trainer.accelerator", "cpu")
    assert single.keys() == ddp.keys()
    moved = 0.0
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], atol=1e-5, rtol=0, msg=name)
        moved = max(moved, float(single[name].abs().max()))
    assert moved > 0

"""Kill-and-resume: a LoRA run killed with SIGKILL and resumed with `--ckpt_path last`
ends with the same trainable weights as an uninterrupted run (bit for bit, on CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny" / "lora_sst2.yaml"
ARGS = ["-c", str(CONFIG), "--trainer.max_epochs", "3", "--trainer.deterministic", "true",
        "--model.dropout", "0.1", "--model.head_dropout", "0.2"]  # dropout: RNG state must be restored too


def _command(*extra: str) -> list[str]:
    return [sys.executable, "-m", "pefthub.cli", "fit", *ARGS, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _final_weights(run_root: Path) -> dict[str, torch.Tensor]:
    """The trainable tensors after the last step (last.ckpt), loaded without unpickling code."""
    (checkpoint,) = run_root.glob("runs/tiny/version_*/checkpoints/last.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["global_step"] == 3 * 4  # 3 epochs x 4 batches: last.ckpt holds the final step
    return state["state_dict"]


def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference_dir.mkdir(), resumed_dir.mkdir()
    reference = subprocess.run(_command(), cwd=reference_dir, env=_env(), capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr[-3000:]

    process = subprocess.Popen(_command(), cwd=resumed_dir, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = resumed_dir / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed_mid_run = process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert killed_mid_run, "the run finished before it could be killed; make it longer"

    resumed = subprocess.run(_command("--ckpt_path", "last"), cwd=resumed_dir, env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    assert not (resumed_dir / "runs" / "tiny" / "version_1").exists(), "the resumed run must log beside the killed one"
    expected, actual = _final_weights(reference_dir), _final_weights(resumed_dir)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=0, rtol=0, msg=name)

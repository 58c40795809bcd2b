"""`pefthub fit` + test on tiny-bert for each task family, in a subprocess, from the shipped configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# family -> (config, metrics the test run must print)
FAMILIES = {
    "sentence": ("amazon", ["test/accuracy", "test/f1_macro", "test/mcc"]),
    "pair": ("boolq", ["test/accuracy", "test/f1_macro"]),
    "token": ("ner", ["test/accuracy", "test/entity_f1", "test/entity_precision", "test/entity_recall", "test/entity_f1/person"]),
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pefthub.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fit_and_test_each_task_family_through_the_cli(family, tmp_path):
    task, metrics = FAMILIES[family]
    result = _run(
        [
            "fit", "-c", str(REPO / "configs" / "lora" / f"{task}.yaml"),
            "--model.backbone", "tiny-bert",
            "--trainer.max_epochs", "1",
            "--trainer.limit_val_batches", "2",
            "--trainer.limit_test_batches", "2",
            "--trainer.enable_progress_bar", "false",
            "--data.max_length", "32",
            "--data.batch_size", "8",
            "--data.train_limit", "32",
            "--data.eval_limit", "32",
        ],  # fmt: skip
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for metric in metrics:
        assert metric in result.stdout, f"{metric} not printed:\n{result.stdout[-2000:]}"
    run_dir = tmp_path / "runs" / f"lora-{task}" / "version_0"
    best = list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert best, "ModelCheckpoint did not save a best checkpoint (is it monitoring the primary metric?)"
    adapter = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    manifest = json.loads((REPO / "pefthub" / "data" / "builtin" / task / "manifest.json").read_text())
    assert adapter["label_names"] == manifest["label_names"]
    assert adapter["task_type"] == ("token_classification" if family == "token" else "sequence_classification")

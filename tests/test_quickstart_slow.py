"""The README quickstart on the real MiniLM-L6 (minutes on 2 CPU cores)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_reaches_85_percent_on_sst2_dev(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    result = subprocess.run(
        [sys.executable, "-m", "pefthub.cli", "fit", "-c", str(REPO / "configs" / "quickstart.yaml")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(re.search(r"test/accuracy\s*│\s*([0-9.]+)", result.stdout).group(1))
    print(f"quickstart SST-2 dev accuracy: {accuracy:.4f}")
    assert accuracy >= 0.85

"""The `pefthub` command end to end on tiny-bert: runs in subprocesses (as a user runs them);
config parsing and flag errors in-process (``pefthub.cli.main``), which is the same code path
without ~15 s of imports per call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# experiment grids (configs/experiments/) are not fit configs: tests/test_grid.py parses them;
# trainer fragments (configs/trainer/) are parsed on top of a tiny fit config below
CONFIGS = sorted(p for p in (REPO / "configs").rglob("*.yaml") if "trainer" not in p.parts and "experiments" not in p.parts)
TRAINER_FRAGMENTS = sorted((REPO / "configs" / "trainer").glob("*.yaml"))


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pefthub.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _run_here(args: list[str], cwd: Path, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """``pefthub ARGS`` in this process (``--print_config`` and argument errors exit before
    anything is built): the exit code and the captured output, shaped like :func:`_run`'s."""
    from pefthub.cli import main

    monkeypatch.chdir(cwd)
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(key, "1")
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["pefthub", *args], code, out, err)


def test_fit_then_test_through_the_cli_writes_logs_checkpoint_and_adapter(tmp_path):
    config = REPO / "configs" / "tiny" / "lora_sst2.yaml"
    fit = _run(["fit", "-c", str(config)], tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny" / "version_0"
    events = list(run_dir.glob("events.out.tfevents.*"))
    assert events, f"no TensorBoard event file in {run_dir}"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    adapter_config = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["method"] == "lora" and adapter_config["backbone"] == "tiny-bert"

    from pefthub.events import read_scalars

    logged = sorted(read_scalars(run_dir))
    for tag in ("train/loss_step", "val/accuracy", "train/lr", "budget/trainable_params", "budget/adapter_bytes", "train/step_time_s"):
        assert tag in logged, f"{tag} not logged; logged: {logged}"

    test = _run(["test", "-c", str(config), "--ckpt_path", str(checkpoint)], tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    assert "test/accuracy" in test.stdout


def test_fit_with_test_after_fit_prints_test_metrics(tmp_path):
    config = REPO / "configs" / "tiny" / "lora_sst2.yaml"
    result = _run(["fit", "-c", str(config), "--test_after_fit", "true", "--trainer.enable_checkpointing", "false",
                   "--trainer.callbacks", "[]"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/accuracy" in result.stdout


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_parses_with_a_tiny_backbone(config, tmp_path, capsys, monkeypatch):
    result = _run_here(["fit", "-c", str(config), "--model.backbone", "tiny-bert", "--print_config"], tmp_path, capsys, monkeypatch)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "backbone: tiny-bert" in result.stdout


@pytest.mark.parametrize("fragment", TRAINER_FRAGMENTS, ids=lambda p: p.name)
def test_every_trainer_fragment_parses_on_top_of_a_fit_config(fragment, tmp_path, capsys, monkeypatch):
    import yaml

    result = _run_here(["fit", "-c", str(REPO / "configs" / "tiny" / "lora_sst2.yaml"), "-c", str(fragment), "--print_config"],
                       tmp_path, capsys, monkeypatch)
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = yaml.safe_load(result.stdout)["trainer"]
    for key, value in yaml.safe_load(fragment.read_text())["trainer"].items():
        if isinstance(value, dict):  # class_path + init_args: printed with every default filled in
            assert resolved[key]["class_path"] == value["class_path"]
            assert value.get("init_args", {}).items() <= resolved[key]["init_args"].items(), f"trainer.{key}"
        elif key != "callbacks":  # a list of classes, expanded the same way
            assert resolved[key] == value, f"trainer.{key}: {resolved[key]!r} != {value!r} from {fragment.name}"


def test_deepspeed_strategy_names_are_registered():
    from lightning.pytorch.strategies import StrategyRegistry

    import pefthub.cli  # noqa: F401  (registers them)

    for name, stage in (("deepspeed_cpu", 2), ("deepspeed_cpu_stage_1", 1), ("deepspeed_cpu_stage_2", 2), ("deepspeed_cpu_stage_3", 3)):
        assert StrategyRegistry[name]["strategy"].__name__ == "DeepSpeedCPUStrategy"
        assert StrategyRegistry[name]["init_params"] == {"stage": stage}


def test_unknown_flag_suggests_the_closest_key(tmp_path, capsys, monkeypatch):
    result = _run_here(["fit", "-c", str(REPO / "configs" / "tiny" / "lora_sst2.yaml"), "--model.rnak", "4"], tmp_path, capsys, monkeypatch)
    assert result.returncode == 2
    assert "unknown key 'model.rnak' in flag --model.rnak; did you mean 'rank'?" in result.stderr


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("model:\n  init_args:\n    rnak: 4\n", "unknown key 'model.init_args.rnak' in {path}; did you mean 'rank'?"),
        ("data:\n  init_args:\n    batchsize: 4\n", "unknown key 'data.init_args.batchsize' in {path}; did you mean 'batch_size'?"),
        ("trainer:\n  max_epoch: 4\n", "unknown key 'trainer.max_epoch' in {path}; did you mean 'max_epochs'?"),
    ],
)
def test_yaml_key_typo_names_file_and_closest_key(tmp_path, yaml_text, message, capsys, monkeypatch):
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml_text)
    result = _run_here(["fit", "-c", str(REPO / "configs" / "tiny" / "lora_sst2.yaml"), "-c", str(typo)], tmp_path, capsys, monkeypatch)
    assert result.returncode == 2
    assert message.format(path=typo) in result.stderr
    assert not (tmp_path / "runs").exists(), "nothing may be started or written"

"""DeepSpeed on CPU (``deepspeed_cpu*``, gloo, 2 processes) on tiny-bert, through the CLI.

- ZeRO-2 trains LoRA to the same weights as DDP with the same global batch (2 ranks × 8):
  measured equal bit for bit (both reduce the same two fp32 gradients over gloo and Adam sees
  the same mean); the test allows atol 1e-6 for a different reduction order on other builds.
- ZeRO-3 trains LoRA to the DDP weights within atol 1e-5 (parameters are gathered and
  gradients reduce-scattered: float summation order differs).
- a DeepSpeed run SIGKILLed mid-training and resumed with ``--ckpt_path last`` ends with the
  weights, optimiser shards and counters of the uninterrupted run, bit for bit (dropout off:
  the RNG state in a checkpoint is rank 0's, so rank 1's dropout masks would differ after a
  resume, under DDP as well).
- test-after-fit reads the best DeepSpeed checkpoint; the adapter is exported from it; a
  DeepSpeed checkpoint tests under a single-process run and vice versa (weights only); resuming
  across layouts and the gradient-reading methods stop with one line before the first step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("deepspeed")

from pefthub.checkpoint_io import is_deepspeed_checkpoint, read_checkpoint  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny"
COMMON = [
    "-c", str(TINY / "lora_sst2.yaml"),
    "--trainer.deterministic", "false", "--trainer.accelerator", "cpu",
    "--model.dropout", "0", "--model.head_dropout", "0",  # no randomness that differs between ranks
    "--data.train_limit", "48", "--data.batch_size", "8",  # 2 ranks x 8: 3 steps per epoch
]
TWO_RANKS = ["--trainer.devices", "2"]
ZERO2_FIT = ["fit", *COMMON, *TWO_RANKS, "--trainer.max_epochs", "2", "--trainer.strategy", "deepspeed_cpu"]


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.run([sys.executable, "-m", "pefthub.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _checkpoints(root: Path) -> Path:
    (folder,) = root.glob("runs/*/version_0/checkpoints")
    return folder


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(checkpoint)["state_dict"]


def _assert_close(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], atol: float) -> None:
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=atol, rtol=0, msg=name)
    assert max(float(t.abs().max()) for t in expected.values()) > 0


@pytest.fixture(scope="module")
def ddp(tmp_path_factory) -> dict[str, torch.Tensor]:
    """Final weights of a 2-process DDP run (the reference every DeepSpeed run is held to)."""
    root = tmp_path_factory.mktemp("ddp")
    result = _run(["fit", *COMMON, *TWO_RANKS, "--trainer.max_epochs", "2", "--trainer.strategy", "ddp"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    return _weights(_checkpoints(root) / "last.ckpt")


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A 2-process ZeRO-2 fit with test-after-fit (2 epochs, a checkpoint at the end of each);
    also the uninterrupted reference of the resume test."""
    root = tmp_path_factory.mktemp("zero2")
    result = _run([*ZERO2_FIT, "--test_after_fit", "true"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, result


def test_zero2_trains_lora_to_the_ddp_weights(ddp, zero2_run):
    root, _ = zero2_run
    last = _checkpoints(root) / "last.ckpt"
    assert is_deepspeed_checkpoint(last)
    # ZeRO-2 really partitioned: one optimiser shard per rank, each holding half the fp32 weights
    shards = sorted(p.name for p in (last / "checkpoint").glob("zero_pp_rank_*_optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    state = read_checkpoint(last)
    assert state["global_step"] == 6 and state["pefthub"]["method"] == "lora"
    _assert_close(ddp, state["state_dict"], atol=1e-6)


def test_zero2_best_checkpoint_feeds_test_after_fit_and_the_adapter(zero2_run):
    root, result = zero2_run
    folder = _checkpoints(root)
    assert "test/accuracy" in result.stdout
    (best,) = [p for p in folder.iterdir() if p.name.startswith("epoch=")]
    assert is_deepspeed_checkpoint(best)
    assert f"Restoring states from the checkpoint path at {best.relative_to(root)}" in result.stderr
    assert not list(folder.glob("*.partial")) and not list(folder.glob("*.old"))

    from safetensors.torch import load_file

    adapter = load_file(root / "runs" / "tiny" / "version_0" / "adapter" / "adapter.safetensors")
    weights = _weights(best)
    assert set(adapter) == set(weights)  # LoRA's adapter file: every trainable tensor (adapters + head)
    for name, tensor in weights.items():
        assert torch.equal(adapter[name], tensor), name


def test_checkpoints_cross_strategies_for_weights_only(ddp, zero2_run, tmp_path):
    root, _ = zero2_run
    deepspeed_last = _checkpoints(root) / "last.ckpt"
    # a DeepSpeed directory, tested by a plain single-process run
    single = _run(["test", *COMMON, "--ckpt_path", str(deepspeed_last)], tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    assert "(weights only)" in single.stderr and "test/accuracy" in single.stdout
    # ... but resuming it needs DeepSpeed: one line, nothing trained
    resume = _run(["fit", *COMMON, "--ckpt_path", str(deepspeed_last)], tmp_path / "resume")
    assert resume.returncode == 1
    assert resume.stderr.strip().splitlines()[-1].startswith(f"pefthub: error: ckpt_path {deepspeed_last} is a DeepSpeed checkpoint")
    assert not list((tmp_path / "resume").glob("runs/*/version_*/checkpoints"))


def test_zero2_killed_run_resumes_to_the_uninterrupted_result(zero2_run, tmp_path):
    args = ZERO2_FIT
    # killed right after step 4: last.ckpt is the end-of-epoch-0 one (step 3), step 4 is lost
    kill = ["--trainer.callbacks+=cli_forkserver.SigkillAtStep", "--trainer.callbacks.step=4"]
    killed = _run([*args, *kill], tmp_path / "resumed")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    interrupted = _checkpoints(tmp_path / "resumed") / "last.ckpt"
    assert read_checkpoint(interrupted)["global_step"] == 3
    resumed = _run([*args, "--ckpt_path", "last"], tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {interrupted.relative_to(tmp_path / 'resumed')}" in resumed.stderr

    expected_dir, actual_dir = _checkpoints(zero2_run[0]) / "last.ckpt", _checkpoints(tmp_path / "resumed") / "last.ckpt"
    expected, actual = read_checkpoint(expected_dir), read_checkpoint(actual_dir)
    assert expected["global_step"] == actual["global_step"] == 6
    assert expected["loops"] == actual["loops"]
    _assert_close(expected["state_dict"], actual["state_dict"], atol=0)
    for rank in (0, 1):  # fp32 master weights and Adam moments of each rank's partition
        name = f"checkpoint/zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        optimiser = [_optimizer_shard(d / name) for d in (expected_dir, actual_dir)]
        assert torch.equal(optimiser[0]["single_partition_of_fp32_groups"][0], optimiser[1]["single_partition_of_fp32_groups"][0])
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(optimiser[0]["base_optimizer_state"]["state"][0][key], optimiser[1]["base_optimizer_state"]["state"][0][key])


def _optimizer_shard(path: Path) -> dict:
    # DeepSpeed pickles three of its own classes into its optimiser shards; allow just those
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, map_location="cpu", weights_only=True)["optimizer_state_dict"]


def test_zero3_trains_lora_to_the_ddp_weights_and_exports_it(ddp, tmp_path):
    result = _run(["fit", *COMMON, *TWO_RANKS, "--trainer.max_epochs", "2", "--trainer.strategy", "deepspeed_cpu_stage_3",
                   "--test_after_fit", "true"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test/accuracy" in result.stdout
    last = _checkpoints(tmp_path) / "last.ckpt"
    state = read_checkpoint(last)  # consolidated from the two ranks' fp32 shards
    assert state["global_step"] == 6
    _assert_close(ddp, state["state_dict"], atol=1e-5)

    from safetensors.torch import load_file

    adapter = load_file(tmp_path / "runs" / "tiny" / "version_0" / "adapter" / "adapter.safetensors")
    (best,) = [p for p in _checkpoints(tmp_path).iterdir() if p.name.startswith("epoch=")]
    weights = _weights(best)
    assert set(adapter) == set(weights)
    for name, tensor in weights.items():
        assert torch.equal(adapter[name], tensor), name


# --------------------------------------------------------------------------- refusals


def test_adalora_stops_before_the_first_step_under_deepspeed(tmp_path):
    result = _run(["fit", "-c", str(TINY / "adalora_sst2.yaml"), "--trainer.strategy", "deepspeed_cpu"], tmp_path)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("pefthub: error: method 'adalora' (AdaLoRAModule) cannot train under DeepSpeed (ZeRO stage 2)")
    assert "p.grad" in last_line
    assert not list(tmp_path.glob("runs/*/version_*/checkpoints")), "nothing may be trained or written"


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize(
    "module_class, method",
    [("AdaLoRAModule", "adalora"), ("ImportanceLoRAModule", "importance_lora"), ("GLoRAModule", "glora")],
)
def test_gradient_reading_methods_are_refused_at_every_zero_stage(module_class, method, stage):
    import pefthub.methods as methods
    from pefthub.deepspeed_support import check_method_supported
    from pefthub.strategies import DeepSpeedCPUStrategy

    module = object.__new__(getattr(methods, module_class))  # only its class is looked at
    with pytest.raises(ValueError, match=rf"^method '{method}' \({module_class}\) cannot train under DeepSpeed \(ZeRO stage {stage}\): .*p\.grad"):
        check_method_supported(module, DeepSpeedCPUStrategy(stage=stage))
    check_method_supported(module, "ddp")  # other strategies: nothing to refuse


@pytest.mark.parametrize("module_class, method", [("UniHyperLoRAModule", "unihyperlora"), ("SATLoRAModule", "satlora")])
def test_parameter_reading_methods_are_refused_under_zero3_only(module_class, method):
    import pefthub.methods as methods
    from pefthub.deepspeed_support import check_method_supported
    from pefthub.strategies import DeepSpeedCPUStrategy

    module = object.__new__(getattr(methods, module_class))
    with pytest.raises(ValueError, match=rf"^method '{method}' \({module_class}\) cannot train under DeepSpeed \(ZeRO stage 3\): .*BudgetCheck"):
        check_method_supported(module, DeepSpeedCPUStrategy(stage=3))
    check_method_supported(module, DeepSpeedCPUStrategy(stage=2))  # measured equal to DDP under ZeRO-2


def test_deepspeed_cpu_refuses_a_gpu_accelerator_in_one_line():
    from lightning.pytorch.accelerators import CUDAAccelerator

    from pefthub.strategies import DeepSpeedCPUStrategy

    strategy = DeepSpeedCPUStrategy()
    strategy.accelerator = CUDAAccelerator()
    with pytest.raises(ValueError, match="deepspeed_cpu needs trainer.accelerator: cpu, got CUDAAccelerator"):
        strategy.setup_environment()

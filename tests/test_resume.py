"""Kill-and-resume for every method, and atomic checkpoint writes.

Each case runs ``pefthub fit`` three times on tiny-bert, each in its own process: an
uninterrupted reference run; a run SIGKILLed mid-training (right after optimiser step
``KILL_AT``, between two checkpoints, so the step after the last checkpoint is lost and must be
replayed); and ``pefthub fit ... --ckpt_path last`` resuming it. The final checkpoints must be
equal bit for bit, not just the trainable tensors: optimiser and scheduler state, loop
counters, RNG state, the checkpoint callback's scores, the data loader's position and every
method's own state (AdaLoRA's allocator and masks, the FW/IW/GLoRA importance EMAs, GLoRA's
rank pattern, δθ). So must the final logged validation metrics and the adapter files. CPU with
deterministic algorithms and dropout on (the dropout masks depend on the restored RNG state).

Checkpoints are written every ``CHECKPOINT_EVERY`` steps (a validation each time), so the
killed run's ``last.ckpt`` holds step ``KILL_AT - 1``: mid-epoch, before each method's phase
change (``PHASE_STEP``), which the resumed run then crosses; one LoRA case is killed just after
an end-of-epoch checkpoint instead, and one GLoRA case after its reallocation. The kill comes from :class:`cli_forkserver.SigkillAtStep`,
so it lands at the same step however loaded the machine is. The runs are forked from a process
that has imported ``pefthub.cli`` already (:class:`cli_forkserver.ForkServer`): 3 runs × 11 cases
would otherwise spend ~200 s importing Lightning.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cli_forkserver import ForkServer

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
STEPS_PER_EPOCH = 4  # the tiny configs: train_limit 32, batch_size 8
EPOCHS = 4
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH
CHECKPOINT_EVERY = 2  # val_check_interval: a validation and a last.ckpt every 2 steps
KILL_AT = 7  # killed right after step 7: last.ckpt holds step 6 (mid-epoch), step 7 is lost
PHASE_STEP = 10  # the optimiser step at which the phase-changing methods change phase
COMMON = [
    "--trainer.deterministic", "true",
    "--trainer.val_check_interval", str(CHECKPOINT_EVERY),
    "--model.dropout", "0.1", "--model.head_dropout", "0.2",  # dropout: RNG state must be restored too
]


def _adalora_pruned(checkpoint: dict[str, Any]) -> bool:
    masks = [v for k, v in checkpoint["state_dict"].items() if k.endswith("rank_mask")]
    assert masks, "no AdaLoRA rank_mask in the checkpoint"
    return not all(bool(mask.all()) for mask in masks)


def _importance_frozen(checkpoint: dict[str, Any]) -> bool:
    (state,) = [s for key, s in checkpoint["callbacks"].items() if key.startswith("ImportanceWarmup")]
    return bool(state["estimator"]["frozen"])


def _glora_reallocated(checkpoint: dict[str, Any]) -> bool:
    return bool(checkpoint["pefthub_rank_pattern"]["reallocated"]) and _importance_frozen(checkpoint)


@dataclass(frozen=True)
class Case:
    config: str
    args: tuple[str, ...] = ()
    # has the method's phase changed in this checkpoint? (None: a method without a phase change)
    phase_done: Callable[[dict[str, Any]], bool] | None = None
    delta: bool = False  # the UniHyperLoRA δθ phase: needs a source adapter
    kill_at: int = KILL_AT


CASES = {
    "lora": Case("tiny/lora_sst2.yaml"),
    # killed after the first step of epoch 1: last.ckpt is the end-of-epoch-0 one
    "lora_epoch_end": Case("tiny/lora_sst2.yaml", kill_at=STEPS_PER_EPOCH + 1),
    # budget: b0 while t <= 0.625 T = 10, cut over steps 11..13, final masks from step 14 (tfinal 0.125 T)
    "adalora": Case("tiny/adalora_sst2.yaml", ("--model.tinit", "0.625", "--model.tfinal", "0.125"), _adalora_pruned),
    "fw_lora": Case("tiny/fw_lora_sst2.yaml", ("--model.warmup_steps", str(PHASE_STEP)), _importance_frozen),
    "iw_lora": Case("tiny/iw_lora_sst2.yaml", ("--model.warmup_steps", str(PHASE_STEP)), _importance_frozen),
    "glora": Case("tiny/glora_sst2.yaml", ("--model.warmup_steps", str(PHASE_STEP)), _glora_reallocated),
    # and killed after the reallocation: the resumed run rebuilds the new shapes and optimiser first
    "glora_reallocated": Case(
        "tiny/glora_sst2.yaml", ("--model.warmup_steps", str(PHASE_STEP)), _glora_reallocated, kill_at=PHASE_STEP + 3
    ),
    "unihyperlora": Case("tiny/unihyperlora_sst2.yaml"),
    "satlora": Case("tiny/satlora_sst2.yaml"),
    "vera": Case("tiny/vera_sst2.yaml"),  # A, B regenerated from the seed on resume, not stored
    "unihyperlora_delta": Case("unihyperlora/delta_sst2.yaml", delta=True),
}


@pytest.fixture(scope="module")
def servers():
    """Two fork servers: the reference run and the run to kill go side by side."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    pair = ForkServer(env), ForkServer(env)
    yield pair
    for server in pair:
        server.close()


@pytest.fixture(scope="module")
def source_adapter(tmp_path_factory, servers) -> Path:
    """A UniHyperLoRA adapter trained on tiny-bert (the tiny config), for the δθ phase."""
    root = tmp_path_factory.mktemp("source")
    returncode, stderr = servers[0].run(["fit", "-c", str(CONFIGS / "tiny" / "unihyperlora_sst2.yaml")], root)
    assert returncode == 0, stderr[-3000:]
    (adapter,) = root.glob("runs/*/version_0/adapter")
    return adapter


def _delta_config(tmp_path: Path) -> Path:
    """The shipped δθ config with the phase shortened to TOTAL_STEPS (a list entry, so not a CLI flag)."""
    config = yaml.safe_load((CONFIGS / "unihyperlora" / "delta_sst2.yaml").read_text())
    (delta,) = [c for c in config["trainer"]["callbacks"] if c["class_path"].endswith("DeltaTuning")]
    delta["init_args"]["steps"] = TOTAL_STEPS
    path = tmp_path / "delta_sst2.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _case_args(case: Case, tmp_path: Path, request) -> list[str]:
    if not case.delta:
        return ["-c", str(CONFIGS / case.config), "--trainer.max_epochs", str(EPOCHS), *COMMON, *case.args]
    source = request.getfixturevalue("source_adapter")
    return [
        "-c", str(_delta_config(tmp_path)), *COMMON,
        # a wider and deeper host than the source's tiny-bert (32 wide, 2 layers)
        "--model.init_adapter", str(source), "--model.backbone", "tiny-bert-h48-l3",
        "--model.max_flop_overhead", "null", "--test_after_fit", "false",
        "--data.max_length", "32", "--data.batch_size", "8", "--data.train_limit", "32", "--data.eval_limit", "32",
        "--trainer.limit_val_batches", "2", "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
    ]


def _last_checkpoint(run_root: Path) -> dict[str, Any]:
    """last.ckpt of the run, loaded without unpickling code."""
    (path,) = run_root.glob("runs/*/version_*/checkpoints/last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=True)


def _differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Where two checkpoint trees differ (tensors compared bit for bit, with dtype and shape)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if expected.keys() != actual.keys():
            return [f"{path}: keys {sorted(map(str, expected.keys() ^ actual.keys()))} not in both"]
        return [d for key in expected for d in _differences(expected[key], actual[key], f"{path}/{key}")]
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        if len(expected) != len(actual):
            return [f"{path}: length {len(expected)} != {len(actual)}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual, strict=True)) for d in _differences(e, a, f"{path}[{i}]")]
    if isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor):
        same = expected.dtype == actual.dtype and expected.shape == actual.shape and torch.equal(expected, actual)
        return [] if same else [f"{path}: tensors differ"]
    return [] if type(expected) is type(actual) and expected == actual else [f"{path}: {expected!r} != {actual!r}"]


def _final_val_metrics(run_root: Path) -> dict[str, float]:
    """The last logged value of every ``val/*`` scalar (event files in write order: a resumed
    run appends a second file to the killed run's folder)."""
    from pefthub.events import read_scalars

    final: dict[str, tuple[int, float]] = {}
    for events in sorted(run_root.glob("runs/*/version_0/events.out.tfevents.*"), key=lambda p: int(p.name.split(".")[3])):
        for tag, values in read_scalars(events).items():
            if tag.startswith("val/"):
                for step, value in values:
                    if step >= final.get(tag, (-1, 0.0))[0]:
                        final[tag] = (step, value)
    return {tag: value for tag, (step, value) in final.items()}


@pytest.mark.parametrize("method", list(CASES))
def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path, request, servers, method):
    case = CASES[method]
    args = ["fit", *_case_args(case, tmp_path, request)]
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference_dir.mkdir(), resumed_dir.mkdir()
    started = time.perf_counter()
    # the reference and the run to kill are independent: run them side by side
    servers[0].start(args, reference_dir)
    kill = ["--trainer.callbacks+=cli_forkserver.SigkillAtStep", f"--trainer.callbacks.step={case.kill_at}"]
    killed = servers[1].run([*args, *kill], resumed_dir)
    reference = servers[0].wait(reference_dir)
    assert reference[0] == 0, reference[1][-3000:]
    assert killed[0] == -signal.SIGKILL, killed[1][-3000:]

    interrupted = _last_checkpoint(resumed_dir)
    assert interrupted["global_step"] == case.kill_at - 1  # the step after it was lost
    if case.phase_done is not None:
        before = interrupted["global_step"] < PHASE_STEP
        assert case.phase_done(interrupted) is not before, f"the phase change should {'not ' * before}have happened"

    returncode, stderr = servers[1].run([*args, "--ckpt_path", "last"], resumed_dir)
    assert returncode == 0, stderr[-3000:]
    assert "resuming from" in stderr
    assert "not resumable" not in stderr  # Lightning's warning for a loader restarted mid-epoch
    assert not list(resumed_dir.glob("runs/*/version_1")), "the resumed run must log beside the killed one"

    expected, actual = _last_checkpoint(reference_dir), _last_checkpoint(resumed_dir)
    assert expected["global_step"] == actual["global_step"] == TOTAL_STEPS
    if case.phase_done is not None:
        assert case.phase_done(actual), "the resumed run did not cross the phase change"
    differences = _differences(expected, actual)
    assert not differences, "\n".join(differences[:20])

    expected_metrics, actual_metrics = _final_val_metrics(reference_dir), _final_val_metrics(resumed_dir)
    assert "val/accuracy" in expected_metrics and expected_metrics == actual_metrics
    (expected_adapter,) = reference_dir.glob("runs/*/version_0/adapter")
    (actual_adapter,) = resumed_dir.glob("runs/*/version_0/adapter")
    for name in ("adapter.safetensors", "adapter_config.json"):
        assert (expected_adapter / name).read_bytes() == (actual_adapter / name).read_bytes(), name
    print(f"{method}: {time.perf_counter() - started:.1f} s")


# --------------------------------------------------------------------------- atomic saves


def test_an_interrupted_save_leaves_the_previous_last_checkpoint_loadable(tmp_path, monkeypatch):
    """A save that dies half-way through writing (here: the writer raises after half the bytes,
    as a SIGKILL or a full disk would stop it) must not touch the existing ``last.ckpt``."""
    import lightning.fabric.plugins.io.torch_io as torch_io
    from lightning.pytorch import Trainer
    from lightning.pytorch.demos.boring_classes import BoringModel

    from pefthub.callbacks.checkpoint import BestAndLastCheckpoint

    class DieInSecondSave(BoringModel):
        def on_train_epoch_end(self) -> None:
            if self.current_epoch == 1:  # epoch 0's last.ckpt exists: make the next write die midway
                def half_write(checkpoint: dict, filepath) -> None:
                    import io

                    buffer = io.BytesIO()
                    torch.save(checkpoint, buffer)
                    with open(filepath, "wb") as f:
                        f.write(buffer.getvalue()[: buffer.tell() // 2])
                    raise OSError("killed mid-save")

                monkeypatch.setattr(torch_io, "_atomic_save", half_write)

    callback = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = Trainer(
        accelerator="cpu", max_epochs=3, limit_train_batches=2, limit_val_batches=0, callbacks=[callback],
        logger=False, enable_progress_bar=False, enable_model_summary=False,
    )
    with pytest.raises(OSError, match="killed mid-save"):
        trainer.fit(DieInSecondSave())
    last = tmp_path / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["epoch"] == 0 and state["global_step"] == 2  # epoch 0's save, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the partial write was removed


# --------------------------------------------------------------------------- loader position


def test_a_restored_loader_yields_the_rest_of_its_epoch_only():
    from pefthub.data.resumable import ResumableDataLoader, SkippingSampler

    data = list(range(22))

    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(data, batch_size=4, sampler=SkippingSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3))

    full = loader()
    full.sampler.set_epoch(1)
    batches = [b.tolist() for b in full]
    interrupted = loader()
    interrupted.sampler.set_epoch(1)
    seen = iter(interrupted)
    first_two = [next(seen).tolist(), next(seen).tolist()]
    state = interrupted.state_dict()
    assert first_two == batches[:2] and state == {"epoch": 1, "batches": 2}

    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    assert [b.tolist() for b in resumed] == batches[2:]
    assert resumed.state_dict() == {"epoch": 1, "batches": len(batches)}  # counts the skipped batches too
    resumed.sampler.set_epoch(2)
    assert len([b for b in resumed]) == len(batches)  # the next epoch is whole again

    finished = loader()
    finished.load_state_dict({"epoch": 1, "batches": len(batches)})  # saved at the end of the epoch
    finished.sampler.set_epoch(1)
    assert [b.tolist() for b in finished] == batches  # nothing to skip: no pass is left empty

"""Atomic replacement of directory checkpoints (DeepSpeed writes one directory per checkpoint),
without DeepSpeed: :func:`pefthub.callbacks.checkpoint.replace_path` and a save that dies midway."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

from pefthub.callbacks.checkpoint import BestAndLastCheckpoint, replace_path


def _directory(path: Path, text: str) -> Path:
    (path / "checkpoint").mkdir(parents=True)
    (path / "checkpoint" / "shard.pt").write_text(text)
    return path


def test_a_directory_replaces_the_old_one_and_leaves_nothing_behind(tmp_path):
    old, new = _directory(tmp_path / "last.ckpt", "old"), _directory(tmp_path / "last.ckpt.partial", "new")
    replace_path(new, old)
    assert (old / "checkpoint" / "shard.pt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_directory_save_that_dies_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Each save writes a directory (as DeepSpeed does); the third one writes one file and dies."""
    saves = []

    def directory_save(trainer, filepath, weights_only=False, storage_options=None) -> None:
        saves.append(filepath)
        _directory(Path(filepath), f"step {trainer.global_step}")
        if len(saves) == 3:
            raise OSError("killed mid-save")

    monkeypatch.setattr(Trainer, "save_checkpoint", directory_save)
    callback = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    trainer = Trainer(
        accelerator="cpu", max_epochs=3, limit_train_batches=2, limit_val_batches=0, callbacks=[callback],
        logger=False, enable_progress_bar=False, enable_model_summary=False,
    )
    with pytest.raises(OSError, match="killed mid-save"):
        trainer.fit(BoringModel())
    assert all(s.endswith(".partial") for s in saves)  # never written in place
    assert (tmp_path / "last.ckpt" / "checkpoint" / "shard.pt").read_text() == "step 4"  # epoch 1's, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the partial directory was removed

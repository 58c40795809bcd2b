"""Test support: :class:`StopAfterEpochs`, a Lightning callback (added with
``--trainer.callbacks+=stop_early.StopAfterEpochs``, ``tests/`` on ``PYTHONPATH``) that ends a
fit after its first epochs *without* changing ``trainer.max_epochs``. The learning-rate schedule
is then the full run's, so a slow test can check the start of a long recipe in minutes; a
shorter ``max_epochs`` would compress the schedule and test a different recipe.
"""

from __future__ import annotations

from lightning.pytorch import Callback, LightningModule, Trainer


class StopAfterEpochs(Callback):
    """Stop training once ``epochs`` epochs have finished (their validation included).

    Args:
        epochs: how many epochs to train before stopping.
    """

    def __init__(self, epochs: int) -> None:
        if epochs < 1:
            raise ValueError(f"StopAfterEpochs: epochs must be >= 1, got {epochs}")
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True

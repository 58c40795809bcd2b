"""Whether the current training batch is one Lightning writes logs on.

Reading a value back from the GPU (``.item()``, ``float(t)``, ``.tolist()``) makes the host wait
for every queued kernel, so per-step statistics are only read back — and only logged — on
these batches. The rule is Lightning's own (``trainer.log_every_n_steps``, counted in
optimiser steps, its ``should_update_logs``), so a value logged here is a value Lightning
writes; it holds in every hook of one training batch, from ``on_train_batch_start`` to
``on_train_batch_end``.
"""

from __future__ import annotations

from lightning.pytorch import Trainer


def is_logging_step(trainer: Trainer | None) -> bool:
    """True when ``trainer`` will write the metrics logged during the current training batch
    (always True without a trainer: a module used on its own)."""
    if trainer is None:
        return True
    connector = getattr(trainer, "_logger_connector", None)
    if connector is not None:
        return bool(connector.should_update_logs)
    return trainer.global_step % max(1, trainer.log_every_n_steps) == 0

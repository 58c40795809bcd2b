"""Progress as plain lines, for logs: what replaces the live bar when stdout is not a terminal.

A live bar (Rich or TQDM) redraws one line in place; written to a file (``nohup``, ``tee``, CI)
it shows nothing useful until the run ends. :class:`PlainProgress` prints one line per
interval instead, e.g.::

    pefthub: epoch 0 · step 420/2105 (20%) · loss 0.4123 · 6.9 steps/s · eta 4m04s

The loss is the last value Lightning logged (read on logging steps only, so no extra device
sync). The CLI swaps it in for the bar when stdout is not a TTY (``PEFTHUB_PROGRESS_SECONDS``
sets the interval, default 30 s).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from pefthub.callbacks.logging_step import is_logging_step


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class PlainProgress(Callback):
    """Print a plain progress line at most every ``min_interval_s`` seconds of training (and
    at the first and last step), and one line per validation result.

    Args:
        min_interval_s: seconds between two lines (0: every logging step).
    """

    def __init__(self, min_interval_s: float = 30.0) -> None:
        self.min_interval_s = min_interval_s
        self._started = 0.0
        self._last = float("-inf")
        self._first_step = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._started = time.monotonic()
        self._first_step = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        now = time.monotonic()
        step, total = trainer.global_step, max(1, int(trainer.estimated_stepping_batches))
        due = now - self._last >= self.min_interval_s or step in (self._first_step + 1, total)
        if not due or not is_logging_step(trainer):
            return
        self._last = now
        done = max(1, step - self._first_step)
        rate = done / max(1e-9, now - self._started)
        parts = [f"epoch {trainer.current_epoch}", f"step {step}/{total} ({100 * step / total:.0f}%)"]
        loss = trainer.callback_metrics.get("train/loss_step", trainer.callback_metrics.get("train/loss"))
        if loss is not None:
            parts.append(f"loss {float(loss):.4f}")
        parts.append(f"{rate:.2f} steps/s")
        parts.append(f"eta {_duration((total - step) / rate)}")
        print("pefthub: " + " · ".join(parts), file=sys.stdout, flush=True)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        if values:
            shown = " · ".join(f"{k} {v:.4f}" for k, v in sorted(values.items()))
            print(f"pefthub: validation at step {trainer.global_step}: {shown}", file=sys.stdout, flush=True)

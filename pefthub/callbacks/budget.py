"""Check an adapter against its byte and FLOP budgets when fit starts, and log the figures."""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from pefthub.budget import BudgetError, flop_overhead

__all__ = ["BudgetCheck", "BudgetError"]  # BudgetError lives in pefthub.budget; this import path stays


class BudgetCheck(Callback):
    """At fit start, measure the adapter file's bytes (``pl_module.adapter_file_bytes()``, what
    ``save_adapter`` writes) and the host forward's extra FLOPs (fvcore, with and without the
    adapter, inference-style: see :func:`pefthub.budget.flop_overhead`), log them as
    ``budget/adapter_file_bytes`` and ``budget/flop_overhead``, and stop with a
    :class:`BudgetError` naming both figures when one exceeds its limit.

    Args:
        max_adapter_bytes: byte budget (null: not checked, still logged).
        max_flop_overhead: FLOP budget as a fraction of the host forward (0.10 = 10 %); null
            skips the (few-second) fvcore measurement.
        seq_len: tokens of the measured sequence.
    """

    def __init__(self, max_adapter_bytes: int | None = 1_000_000, max_flop_overhead: float | None = 0.10, seq_len: int = 128) -> None:
        self.max_adapter_bytes = max_adapter_bytes
        self.max_flop_overhead = max_flop_overhead
        self.seq_len = seq_len
        self.figures: dict[str, float] = {}

    def measure(self, pl_module: LightningModule) -> dict[str, float]:
        figures = {"budget/adapter_file_bytes": float(pl_module.adapter_file_bytes())}
        if self.max_flop_overhead is not None:
            flops = flop_overhead(pl_module, seq_len=self.seq_len)
            figures.update(
                {
                    "budget/host_flops": flops["host_flops"],
                    "budget/adapted_flops": flops["adapted_flops"],
                    "budget/flop_overhead": flops["overhead"],
                }
            )
        return figures

    def check(self, figures: dict[str, float]) -> None:
        problems = []
        size = figures["budget/adapter_file_bytes"]
        if self.max_adapter_bytes is not None and size > self.max_adapter_bytes:
            problems.append(f"adapter file is {size:,.0f} bytes, over the budget max_adapter_bytes={self.max_adapter_bytes:,}")
        overhead = figures.get("budget/flop_overhead")
        if self.max_flop_overhead is not None and overhead is not None and overhead > self.max_flop_overhead:
            problems.append(
                f"adapter adds {overhead:.1%} FLOPs to the host forward (fvcore, seq_len={self.seq_len}), "
                f"over the budget max_flop_overhead={self.max_flop_overhead:.1%}"
            )
        if problems:
            raise BudgetError("; ".join(problems) + " (raise the limit, set it to null, or shrink the adapter)")

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.figures = self.measure(pl_module)
        for logger in trainer.loggers:
            logger.log_metrics(self.figures, step=trainer.global_step)
        shown = ", ".join(f"{k.split('/')[-1]}={v:,.4g}" for k, v in self.figures.items())
        rank_zero_info(f"budget: {shown}")
        self.check(self.figures)

    def state_dict(self) -> dict[str, Any]:
        return {"figures": dict(self.figures)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.figures = dict(state_dict.get("figures", {}))

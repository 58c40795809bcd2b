"""Callbacks: phase changes, budgets and run bookkeeping."""

from pefthub.callbacks.adapter_export import SaveAdapter
from pefthub.callbacks.importance_warmup import ImportanceWarmup
from pefthub.callbacks.rank_allocation import AdaLoRARankAllocation
from pefthub.callbacks.rank_reallocation import RankReallocation
from pefthub.callbacks.timing import StepTimer

__all__ = ["AdaLoRARankAllocation", "ImportanceWarmup", "RankReallocation", "SaveAdapter", "StepTimer"]

"""Callbacks: phase changes, budgets and run bookkeeping."""

from pefthub.callbacks.adapter_export import SaveAdapter
from pefthub.callbacks.timing import StepTimer

__all__ = ["SaveAdapter", "StepTimer"]

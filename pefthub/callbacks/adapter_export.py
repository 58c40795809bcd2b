"""Save the trained adapter (safetensors + JSON) next to the run's logs when fit ends."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


@contextlib.contextmanager
def full_parameters(module: LightningModule) -> Iterator[None]:
    """Under ZeRO-3 (parameters partitioned, ``ds_id`` set), gather every parameter on every
    rank for the duration, and afterwards re-partition them from rank 0's values; elsewhere
    nothing. A collective: every rank must enter it."""
    partitioned = [p for p in module.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0):
        yield


class SaveAdapter(Callback):
    """At the end of ``fit``, write the adapter of the best checkpoint (when a
    ``ModelCheckpoint`` tracked one) or of the final weights to ``<log_dir>/adapter``, with
    ``usage.json`` (backbone and its weights' SHA-256, labels, max length: :mod:`pefthub.adapter_card`).
    The best checkpoint may be a file or a DeepSpeed directory (consolidated, ZeRO-3 too).

    Args:
        dirpath: where to write; default ``<trainer.log_dir>/adapter``.
        use_best: reload the best checkpoint's adapter weights before saving.
    """

    def __init__(self, dirpath: str | None = None, use_best: bool = True) -> None:
        self.dirpath = dirpath
        self.use_best = use_best

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        # trainer.log_dir is a collective under DDP: every rank must ask before rank 0 writes
        directory = Path(self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "adapter")
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.use_best else ""
        with full_parameters(pl_module):  # every rank gathers under ZeRO-3; rank 0 writes
            if not trainer.is_global_zero:
                return
            if best:
                pl_module.load_trainable_from_checkpoint(best)
            path = pl_module.save_adapter(directory)
            from pefthub.adapter_card import usage_record, write_usage

            write_usage(path, usage_record(pl_module, trainer.datamodule))
            rank_zero_info(f"adapter saved to {path} ({pl_module.adapter_file_bytes():,} bytes)" + (f" from {best}" if best else ""))

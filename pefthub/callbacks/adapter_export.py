"""Save the trained adapter (safetensors + JSON) next to the run's logs when fit ends."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class SaveAdapter(Callback):
    """At the end of ``fit``, write the adapter of the best checkpoint (when a
    ``ModelCheckpoint`` tracked one) or of the final weights to ``<log_dir>/adapter``.

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
        if not trainer.is_global_zero:
            return
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.use_best else ""
        if best:
            pl_module.load_trainable_from_checkpoint(best)
        path = pl_module.save_adapter(directory)
        rank_zero_info(f"adapter saved to {path} ({pl_module.adapter_file_bytes():,} bytes)" + (f" from {best}" if best else ""))

"""A training DataLoader that resumes mid-epoch where the interrupted run stopped.

Lightning restores its loop counters from a checkpoint saved mid-epoch (after a
``val_check_interval`` validation or an ``every_n_train_steps`` save) and then runs only the
epoch's *remaining* number of batches, but it does not fast-forward the data: a plain
DataLoader starts the epoch's order from the top again, so a resumed run trains on the
epoch's first batches twice and never sees its last ones (Lightning only warns, "your
dataloader is not resumable"). :class:`ResumableDataLoader` implements the
``state_dict``/``load_state_dict`` pair Lightning looks for: the state is the epoch and the
number of batches already yielded in it, and after a restore the first pass over that same
epoch starts right after them. :class:`~pefthub.data.base.TaskDataModule` also carries the
state in its own checkpoint entry, because Lightning reads its copy back only when the loader
is built after the loops are restored (not so when ``configure_optimizers`` asks for
``estimated_stepping_batches``, as pefthub's does). The order itself comes from :class:`SkippingSampler` (a
``DistributedSampler``: a permutation drawn from ``seed + epoch`` only), so the batches the
resumed run sees are exactly the ones the uninterrupted run saw.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, DistributedSampler


class SkippingSampler(DistributedSampler):
    """``DistributedSampler`` whose next pass over epoch ``skip_epoch`` drops its first
    ``skip`` indices (this rank's share of the batches already trained on)."""

    skip: int = 0
    skip_epoch: int = -1

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = (self.skip, 0) if self.epoch == self.skip_epoch else (0, self.skip)
        if skip:
            self.skip_epoch = -1
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """``DataLoader`` (same arguments; ``sampler`` must be a :class:`SkippingSampler`) whose
    state is ``{"epoch", "batches"}``: the epoch of the current pass and how many batches it has
    yielded. ``load_state_dict`` makes the next pass over that epoch start after them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, SkippingSampler):
            raise TypeError(f"ResumableDataLoader needs a SkippingSampler, got {type(self.sampler).__name__}")
        if self.batch_size is None:
            raise TypeError("ResumableDataLoader needs batch_size (automatic batching)")
        self._epoch = 0
        self._batches = 0

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        # the sampler decides at the start of the pass whether this is the restored epoch
        already = sampler.skip // self.batch_size if sampler.epoch == sampler.skip_epoch else 0
        self._epoch, self._batches = sampler.epoch, already
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self._epoch), "batches": int(self._batches)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        batches = int(state_dict.get("batches", 0))
        if 0 < batches < len(self):  # a finished epoch needs no skipping: the next one starts fresh
            self.sampler.skip = batches * self.batch_size
            self.sampler.skip_epoch = int(state_dict["epoch"])

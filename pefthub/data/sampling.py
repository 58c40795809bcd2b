"""A shuffling sampler whose order is a function of (seed, epoch) only.

``torch.utils.data.RandomSampler`` draws its seed from the global RNG, so the order of
epoch 2 depends on everything that consumed random numbers before it; a run resumed
from a checkpoint would then see other batches than the uninterrupted run. Lightning
calls ``set_epoch`` on samplers that have it at the start of every epoch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """Permutation of ``range(num_samples)`` drawn from ``torch.Generator().manual_seed(seed + epoch)``."""

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples

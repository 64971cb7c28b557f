"""A resumable, rank-aware infinite sampler.

The sequence of global batches is a pure function of (seed, step): epoch ``e`` is a permutation drawn
from ``seed + e``, cut into global batches of ``batch_size * world_size``; each rank takes its slice.
Each index comes with a per-sample seed for augmentation. Starting at ``start_step`` reproduces exactly
what an uninterrupted run would have seen from that step on, which is what makes resume exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    def __init__(self, num_items: int, batch_size: int, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start_step: int = 0) -> None:
        global_batch = batch_size * world_size
        if num_items < global_batch:
            raise ValueError(
                f"the dataset has {num_items} images, fewer than one global batch of {global_batch} "
                f"(data.batch_size={batch_size} x {world_size} processes): lower data.batch_size or add images"
            )
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start_step = rank, world_size, start_step
        self.steps_per_epoch = num_items // global_batch

    def batch_indices(self, step: int) -> list[tuple[int, int]]:
        """(index, sample_seed) pairs of this rank's part of global batch ``step``."""
        epoch, position = divmod(step, self.steps_per_epoch)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_items, generator=generator)
        start = (position * self.world_size + self.rank) * self.batch_size
        return [
            (int(order[i]), hash((self.seed, epoch, i)) & 0x7FFFFFFF)
            for i in range(start, start + self.batch_size)
        ]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step = self.start_step
        while True:
            yield from self.batch_indices(step)
            step += 1

"""A deterministic stream of training batches indexed by step (what makes resume exact).

The data of step ``s`` on process ``rank`` and every random draw of that step are functions of
(seed, s, rank) alone, so restoring weights, optimizer, schedule and EMA continues the same run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class StepSampler(Sampler[int]):
    """Dataset indices for steps ``start_step, start_step + 1, ...`` of one process.

    Global sample ``k = (step * world + rank) * batch + i``. A finite data set is shuffled per epoch
    with a permutation seeded by (seed, epoch), so the stream is a pure function of the step.
    """

    def __init__(
        self, length: int, batch_size: int, rank: int, world: int, start_step: int, seed: int, shuffle: bool
    ):
        self.length, self.batch_size, self.rank, self.world = length, batch_size, rank, world
        self.start_step, self.seed, self.shuffle = start_step, seed, shuffle
        self._permutation: tuple[int, torch.Tensor] | None = None

    def _index(self, k: int) -> int:
        if not self.shuffle:
            return k % self.length
        epoch, position = divmod(k, self.length)
        if self._permutation is None or self._permutation[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._permutation = (epoch, torch.randperm(self.length, generator=generator))
        return int(self._permutation[1][position])

    def __iter__(self) -> Iterator[int]:
        step = self.start_step
        while True:
            base = (step * self.world + self.rank) * self.batch_size
            for i in range(self.batch_size):
                yield self._index(base + i)
            step += 1


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Items ``{"video": [c, f, h, w], "caption": str}`` -> ``{"video": [b, c, f, h, w], "caption": [b]}``
    (cached latent data: ``"moments"`` ``[2c, f, h, w]`` in place of ``"video"``)."""
    batch: dict[str, Any] = {"caption": [item["caption"] for item in items]}
    for key in ("video", "moments"):
        if key in items[0]:
            batch[key] = torch.stack([item[key] for item in items])
    return batch


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of every random draw of one step on one process (noise, timesteps, dropout)."""
    state = np.random.SeedSequence([seed, step, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def step_batches(
    dataset: Dataset,
    finite: bool,  # a finite data set is shuffled per epoch; a synthetic one is read in order
    batch_size: int,  # clips per process per step
    rank: int,
    world: int,
    start_step: int,  # the first step of the stream (a resumed run's step)
    seed: int,  # data.seed
    num_workers: int = 0,
) -> Iterator[dict[str, Any]]:
    """Batches ``{"video": [b, c, f, h, w], "caption": [b]}`` of steps ``start_step, start_step + 1, ...``."""
    sampler = StepSampler(len(dataset), batch_size, rank, world, start_step, seed, finite)
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=num_workers
    )
    return iter(loader)

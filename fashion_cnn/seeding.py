"""Per-epoch seeding, so that a run resumed from an epoch-end checkpoint repeats the original.

A checkpoint holds the weights and optimiser state but not the random number generators. If the
generators simply continued, epoch 3 of a resumed run would see other dropout masks and
augmentations than epoch 3 of the uninterrupted run. Re-seeding every generator from
(run seed, epoch) at the start of each training epoch makes each epoch's randomness a function of
the seed and the epoch number alone.
"""

from __future__ import annotations

import os
import random

import lightning as L
import numpy as np
import torch

# Spreads (seed, epoch) pairs apart so that seed s, epoch e+1 does not reuse seed s+1, epoch e.
_EPOCH_STRIDE = 1_000_003


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of ``epoch`` in a run seeded with ``seed`` (fits numpy's 32-bit range)."""
    return (seed * _EPOCH_STRIDE + epoch) % 2**32


class EpochSeed(L.Callback):
    """Seeds Python, NumPy and torch (all devices) from the run's seed and the epoch number.

    Args:
        seed: The run's seed. Default: the one ``seed_everything`` recorded (``PL_GLOBAL_SEED``),
            which LightningCLI sets from ``seed_everything``; 0 when there is none.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        base = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        # Each DDP process draws its own dropout masks and augmentations: add the rank.
        value = epoch_seed(base + trainer.global_rank, trainer.current_epoch)
        random.seed(value)
        np.random.seed(value)
        torch.manual_seed(value)  # also seeds every CUDA device

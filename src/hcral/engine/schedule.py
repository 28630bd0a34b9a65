"""Learning-rate schedule of SPEC §5: linear warm-up, then ×0.1 at given epochs.

The schedule is a pure function of the global iteration, so a resumed run needs only
the iteration to be back on it (no scheduler object state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch.optim import Optimizer


def scaled_lr(base_lr: float, global_batch: int, base_batch_size: int) -> float:
    """Linear scaling rule: ``base_lr`` is right for ``base_batch_size`` images per step.

    Args:
        base_lr: learning rate at the reference batch size.
        global_batch: images per optimiser step over all ranks.
        base_batch_size: the reference batch size (16 in SPEC §5).
    """
    if global_batch < 1 or base_batch_size < 1:
        raise ValueError(
            f"batch sizes must be >= 1, got global_batch={global_batch}, "
            f"base_batch_size={base_batch_size}"
        )
    return base_lr * global_batch / base_batch_size


def lr_at(
    iteration: int,
    *,
    base_lr: float,
    iters_per_epoch: int,
    warmup_iters: int = 0,
    warmup_ratio: float = 0.1,
    lr_steps: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Learning rate for 0-based global ``iteration``.

    Step decay multiplies by ``gamma`` once for every entry of ``lr_steps`` (epochs,
    0-based count of finished epochs) already reached. During the first ``warmup_iters``
    iterations the decayed rate is further scaled by a factor rising linearly from
    ``warmup_ratio`` (iteration 0) towards 1 (mmdetection's "linear" warm-up).

    Args:
        iteration: global step, >= 0.
        base_lr: learning rate after warm-up and before any decay.
        iters_per_epoch: optimiser steps in one epoch, >= 1.
        warmup_iters: length of the warm-up; 0 disables it.
        warmup_ratio: starting fraction of the rate, in (0, 1].
        lr_steps: epochs at which the rate is multiplied by ``gamma``.
        gamma: decay factor.

    Returns:
        The learning rate as a float.
    """
    if iteration < 0 or iters_per_epoch < 1:
        raise ValueError(
            f"need iteration >= 0 and iters_per_epoch >= 1, got {iteration}, {iters_per_epoch}"
        )
    if not 0.0 < warmup_ratio <= 1.0:
        raise ValueError(f"warmup_ratio must be in (0, 1], got {warmup_ratio}")
    epoch = iteration // iters_per_epoch
    lr = base_lr * gamma ** sum(epoch >= s for s in lr_steps)
    if iteration < warmup_iters:
        lr *= warmup_ratio + (1.0 - warmup_ratio) * iteration / warmup_iters
    return lr


@dataclass(frozen=True)
class LRSchedule:
    """:func:`lr_at` with its settings bound; call it with the global iteration."""

    base_lr: float
    iters_per_epoch: int
    warmup_iters: int = 0
    warmup_ratio: float = 0.1
    lr_steps: tuple[int, ...] = ()

    def __call__(self, iteration: int) -> float:
        return lr_at(
            iteration,
            base_lr=self.base_lr,
            iters_per_epoch=self.iters_per_epoch,
            warmup_iters=self.warmup_iters,
            warmup_ratio=self.warmup_ratio,
            lr_steps=self.lr_steps,
        )

    def apply(self, optimizer: Optimizer, iteration: int) -> float:
        """Set every parameter group's ``lr`` for ``iteration``; return the rate."""
        lr = self(iteration)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

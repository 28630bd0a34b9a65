"""Running statistics for stateful losses, kept in module buffers and synced across ranks.

A loss whose weights depend on statistics of past batches (GHM bin counts, the RCI
normaliser ρ̄, the regression normaliser r̄, Wise-IoU's mean IoU loss) keeps them in a
:class:`RunningStat`. Buffers go into ``state_dict`` (so a resumed run continues
exactly) and each update sums the batch statistic over all ranks first, so the result
does not depend on how many GPUs share the batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum ``t`` in place over all ranks when torch.distributed is initialised; return it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class RunningStat(nn.Module):
    """Exponential moving average of a batch statistic.

    ``momentum`` is the weight of the *new* batch value (BatchNorm's convention):
    ``value = (1 - momentum) * value + momentum * batch``. The first batch that has data
    initialises ``value`` directly instead of blending it with the initial value, which
    would bias early weights (the GHM-C reference code starts its EMA at 0).

    Only a module in training mode updates; in eval mode ``update`` returns the stored
    value unchanged.

    Args:
        shape: shape of the statistic (``()`` for a scalar, ``(M,)`` for bin counts).
        momentum: weight of the new batch value, in (0, 1].
        init: value returned before the first update.
    """

    def __init__(self, shape: tuple[int, ...] = (), momentum: float = 0.01, init: float = 1.0):
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = float(momentum)
        self.register_buffer("value", torch.full(shape, float(init)))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, total: Tensor, count: Tensor | float | None = None) -> Tensor:
        """Fold one batch in and return the new value (a detached copy).

        Args:
            total: the batch statistic summed over this rank's samples, ``shape``.
            count: how many samples ``total`` sums over; when given, the batch value is
                ``all_ranks(total) / all_ranks(count)`` and a batch with count 0 on all
                ranks leaves the state unchanged. When ``None`` the batch value is
                ``all_ranks(total)`` itself (e.g. histogram counts).
        """
        if not self.training:
            return self.value.clone()
        total = total.detach().to(self.value.device, torch.float32).reshape(self.value.shape)
        if count is None:
            batch = all_reduce_sum(total.clone())
            has_data = torch.ones((), dtype=torch.bool, device=batch.device)
        else:
            count_t = torch.as_tensor(count, dtype=torch.float32, device=total.device).reshape(1)
            packed = all_reduce_sum(torch.cat((total.reshape(-1), count_t)))
            n = packed[-1]
            batch = (packed[:-1] / n.clamp(min=1e-12)).reshape(self.value.shape)
            has_data = n > 0
        blended = torch.where(
            self.initialized, (1 - self.momentum) * self.value + self.momentum * batch, batch
        )
        # torch.where instead of a Python `if` keeps this free of device syncs on CUDA.
        self.value.copy_(torch.where(has_data, blended, self.value))
        self.initialized.logical_or_(has_data)
        return self.value.clone()


def reduce_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over ranks (a copy); ``t`` itself when not distributed."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / dist.get_world_size()
    return t

"""Exponential moving average (EMA) of a model's weights, evaluated in place of the raw ones.

The averaged copy follows the trained model with a decay that ramps up from 0:

    decay_t = decay · (1 − exp(−t / tau)),   w_ema ← decay_t · w_ema + (1 − decay_t) · w

at update ``t`` (1-based), as in YOLOX and ultralytics: the early updates, while the weights
still move fast, are followed closely, and the average only reaches its full horizon of
about ``1 / (1 − decay)`` updates after a few ``tau``. Floating-point buffers (BatchNorm
running statistics, the loss criteria's running state) are averaged like the weights;
integer buffers (``num_batches_tracked``) are copied.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """An averaged copy of ``model`` (the bare module; updates unwrap DDP).

    Args:
        model: the model being trained; copied once (same device and dtype).
        decay: final decay in [0, 1); 0.9998 averages over ~5000 updates.
        tau: ramp-up constant in updates, > 0.
    """

    def __init__(self, model: nn.Module, decay: float, tau: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay!r}")
        if not tau > 0:
            raise ValueError(f"EMA tau must be > 0, got {tau!r}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.tau, self.updates = float(decay), float(tau), 0

    def current_decay(self) -> float:
        """The decay the next update will use."""
        return self.decay * (1.0 - math.exp(-(self.updates + 1) / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average toward ``model``'s current weights and buffers."""
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        d = self.current_decay()
        current = model.state_dict()
        averaged, targets = [], []
        for name, value in self.module.state_dict().items():
            if value.is_floating_point():
                averaged.append(value)
                targets.append(current[name].detach().to(value.dtype))
            else:
                value.copy_(current[name])
        if averaged:
            torch._foreach_lerp_(averaged, targets, 1.0 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"module": averaged state dict, "updates": t}`` for a checkpoint."""
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])

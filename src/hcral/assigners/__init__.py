"""Label assigners: which priors are positive for which ground truth.

Every assigner takes a batch (GTs padded to ``(N, M)`` with a validity mask and a crowd
mask, priors ``(R, 4)`` shared by the batch) and returns an :class:`AssignResult` of
``(N, R)`` tensors. ``ASSIGNERS`` maps config names to the functions; ``max_iou``
takes no ``num_level_priors`` (see docs/architecture.md for the signatures).
"""

from __future__ import annotations

from collections.abc import Callable

from hcral.assigners.atss import atss_assign
from hcral.assigners.eatss import eatss_assign
from hcral.assigners.max_iou import max_iou_assign
from hcral.assigners.result import AssignResult

__all__ = ["ASSIGNERS", "AssignResult", "atss_assign", "eatss_assign", "max_iou_assign"]

ASSIGNERS: dict[str, Callable[..., AssignResult]] = {
    "max_iou": max_iou_assign,
    "atss": atss_assign,
    "eatss": eatss_assign,
}

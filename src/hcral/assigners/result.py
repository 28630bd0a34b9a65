"""The result every assigner returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class AssignResult:
    """Per-prior assignment for a batch of images.

    Attributes:
        gt_inds: ``(N, R)`` int64, index of the assigned ground truth within its image's
            (padded) GT list; ``-1`` for background and ignored priors.
        labels: ``(N, R)`` int64, class in ``0..C-1`` for positives, ``C`` for
            background, ``-1`` for ignored priors (e.g. overlapping a crowd box).
        max_ious: ``(N, R)`` float, IoU of the prior with its assigned GT (0 otherwise).
        num_unmatched_gts: ``(N,)`` int64, valid non-crowd GTs left without any positive.
    """

    gt_inds: Tensor
    labels: Tensor
    max_ious: Tensor
    num_unmatched_gts: Tensor

    @property
    def pos_mask(self) -> Tensor:
        """``(N, R)`` bool, positives."""
        return self.gt_inds >= 0

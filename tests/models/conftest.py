"""Fixtures for the detector tests: tiny model configs and an assigner fallback."""

from __future__ import annotations

import pytest
import torch

import hcral.assigners
from hcral.assigners.result import AssignResult
from hcral.boxes import box_iou
from hcral.config import ModelConfig


def reference_max_iou_assign(
    priors, gt_boxes, gt_labels, gt_mask, gt_crowd, num_classes, num_level_priors=None, **_
):
    """A loop-per-image max-IoU assigner (pos ≥ 0.5, neg < 0.4, crowd overlap ignored)."""
    n, r = len(gt_boxes), len(priors)
    gt_inds = torch.full((n, r), -1, dtype=torch.long, device=priors.device)
    labels = torch.full((n, r), num_classes, dtype=torch.long, device=priors.device)
    max_ious = torch.zeros(n, r, device=priors.device)
    for i in range(n):
        real = gt_mask[i] & ~gt_crowd[i]
        iou = box_iou(priors, gt_boxes[i]).masked_fill(~real[None], -1.0)
        best, idx = iou.max(dim=1)
        pos = best >= 0.5
        crowd_iou = box_iou(priors, gt_boxes[i]).masked_fill(~(gt_mask[i] & gt_crowd[i])[None], 0)
        labels[i][(best >= 0.4) & ~pos] = -1
        labels[i][crowd_iou.amax(dim=1) > 0.1] = -1
        labels[i][pos] = gt_labels[i][idx[pos]]
        gt_inds[i][pos] = idx[pos]
        max_ious[i][pos] = best[pos]
    unmatched = torch.zeros(n, dtype=torch.long, device=priors.device)
    return AssignResult(gt_inds, labels, max_ious, unmatched)


@pytest.fixture(autouse=True)
def _assigners(monkeypatch):
    """Use the project's assigners; fall back to the reference one until they exist."""
    if not hasattr(hcral.assigners, "ASSIGNERS"):
        table = dict.fromkeys(("max_iou", "atss", "eatss"), reference_max_iou_assign)
        monkeypatch.setattr(hcral.assigners, "ASSIGNERS", table, raising=False)


@pytest.fixture
def tiny_cfg():
    """``tiny_cfg(name, **overrides)``: a ResNet-18, 32-channel, one-conv model config."""

    def make(name: str = "fcos_atss", **overrides) -> ModelConfig:
        values = dict(name=name, num_classes=3, fpn_channels=32, num_convs=1, frozen_stages=0)
        values.update(overrides)
        return ModelConfig(**values)

    return make

"""Property fuzzing of the baseline criteria: never NaN/Inf, only ValueError on bad calls.

Inputs cover 0 positives, extreme logits (up to ±1e4), boxes up to 1e5 px, points,
inverted and coincident boxes, and half precision.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hcral.losses.focal import FocalLoss
from hcral.losses.gfl import QualityFocalLoss
from hcral.losses.iou import (
    AlphaIoULoss,
    CIoULoss,
    DIoULoss,
    EIoULoss,
    FocalEIoULoss,
    GIoULoss,
    WiseIoULoss,
)
from hcral.losses.l1 import L1Loss
from hcral.losses.varifocal import VarifocalLoss

CLS = [FocalLoss, QualityFocalLoss, VarifocalLoss, lambda: FocalLoss(gamma=0.5)]
REG = [
    L1Loss,
    GIoULoss,
    DIoULoss,
    CIoULoss,
    EIoULoss,
    FocalEIoULoss,
    lambda: FocalEIoULoss(detach_weight=False),
    lambda: AlphaIoULoss(penalty="giou"),
    lambda: AlphaIoULoss(alpha=0.5, penalty="ciou"),
    lambda: WiseIoULoss(version=1),
    lambda: WiseIoULoss(version=2),
    WiseIoULoss,
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
FUZZ = settings(max_examples=50, deadline=None)


def _finite_backward(loss: torch.Tensor, *leaves: torch.Tensor) -> None:
    assert loss.dim() == 0 and torch.isfinite(loss), loss
    loss.backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


@FUZZ
@given(
    make=st.sampled_from(CLS),
    p=st.integers(0, 8),
    c=st.integers(1, 5),
    scale=st.sampled_from([0.1, 10.0, 100.0, 1e4]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_cls_criteria_always_finite(make, p, c, scale, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(p, c, generator=g) * scale).to(dtype).requires_grad_()
    labels = torch.randint(0, c + 1, (p,), generator=g)
    ious = torch.rand(p, generator=g).to(dtype)
    avg = max(float((labels < c).sum()), 1.0)
    _finite_backward(make()(logits, labels, ious, avg), logits)


def _boxes(g: torch.Generator, p: int, scale: float, kind: str) -> torch.Tensor:
    xy = torch.rand(p, 2, generator=g) * scale
    wh = torch.rand(p, 2, generator=g) * scale
    if kind == "points":
        wh = wh * 0
    elif kind == "inverted":
        wh = -wh
    elif kind == "mixed":  # raw random corners: any order
        return torch.rand(p, 4, generator=g) * scale
    return torch.cat((xy, xy + wh), dim=1)


@FUZZ
@given(
    make=st.sampled_from(REG),
    p=st.integers(0, 8),
    scale=st.sampled_from([1e-3, 1.0, 100.0, 1e5]),
    kinds=st.tuples(*[st.sampled_from(["normal", "points", "inverted", "mixed"])] * 2),
    same=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_reg_criteria_always_finite(make, p, scale, kinds, same, dtype, seed):
    if dtype == torch.float16:
        scale = min(scale, 3e4)  # fp16 cannot hold 1e5 (max 65504): the input would be inf
    g = torch.Generator().manual_seed(seed)
    target = _boxes(g, p, scale, kinds[1]).to(dtype)
    pred = (target.clone() if same else _boxes(g, p, scale, kinds[0]).to(dtype)).requires_grad_()
    deltas = (torch.randn(p, 4, generator=g) * 10).to(dtype).requires_grad_()
    weight = torch.rand(p, generator=g).to(dtype)
    crit = make()
    for _ in range(2):  # the second call uses Wise-IoU's updated running mean
        loss = crit(
            pred,
            target,
            weight=weight,
            pred_deltas=deltas,
            target_deltas=torch.zeros(p, 4, dtype=dtype),
            avg_factor=max(p, 1),
        )
        pred.grad, deltas.grad = None, None
        _finite_backward(loss, deltas if isinstance(crit, L1Loss) else pred)


_SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
_ANY_DTYPE = st.sampled_from([torch.float32, torch.float16, torch.int64, torch.bool])


@FUZZ
@given(
    make=st.sampled_from(CLS),
    shapes=st.tuples(_SHAPES, _SHAPES, _SHAPES),
    dtypes=st.tuples(_ANY_DTYPE, _ANY_DTYPE, _ANY_DTYPE),
    avg=st.sampled_from([1.0, 0.0, -3.0]),
    label_hi=st.integers(-2, 8),
)
def test_cls_malformed_calls_raise_value_error_only(make, shapes, dtypes, avg, label_hi):
    logits = torch.zeros(shapes[0]).to(dtypes[0])
    labels = torch.full(shapes[1], label_hi).to(dtypes[1])
    ious = torch.zeros(shapes[2]).to(dtypes[2])
    try:
        loss = make()(logits, labels, ious, avg)
    except ValueError:
        return
    assert torch.isfinite(loss)


@FUZZ
@given(
    make=st.sampled_from(REG),
    shapes=st.tuples(_SHAPES, _SHAPES, _SHAPES),
    dtypes=st.tuples(_ANY_DTYPE, _ANY_DTYPE, _ANY_DTYPE),
    avg=st.sampled_from([1.0, 0.0]),
)
def test_reg_malformed_calls_raise_value_error_only(make, shapes, dtypes, avg):
    pred = torch.ones(shapes[0]).to(dtypes[0])
    target = torch.ones(shapes[1]).to(dtypes[1])
    weight = torch.ones(shapes[2]).to(dtypes[2])
    try:
        loss = make()(
            pred, target, weight=weight, pred_deltas=pred, target_deltas=target, avg_factor=avg
        )
    except ValueError:
        return
    assert torch.isfinite(loss)


@pytest.mark.parametrize("make", CLS)
def test_malformed_cls_example_is_caught(make):
    # keeps the fuzz honest: this call is malformed and must raise, not pass silently
    with pytest.raises(ValueError, match="labels"):
        make()(torch.zeros(2, 3), torch.tensor([0, 9]), torch.zeros(2), 1.0)

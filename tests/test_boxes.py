"""Box math: hand values, agreement with torchvision, degenerate boxes, codecs."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.ops as tvops
from hypothesis import given, settings
from hypothesis import strategies as st

from hcral import boxes as B

A = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
C = torch.tensor([[5.0, 5.0, 15.0, 15.0]])


def test_hand_values_overlapping_squares():
    # inter = 5*5 = 25, union = 100 + 100 - 25 = 175
    assert B.aligned_iou(A, C).item() == pytest.approx(25 / 175)
    # enclosing box 15x15 = 225: GIoU = 25/175 - (225 - 175)/225
    assert B.aligned_giou(A, C).item() == pytest.approx(25 / 175 - 50 / 225)
    # centres (5,5),(10,10): rho² = 50; enclosing diagonal² = 15² + 15² = 450
    assert B.aligned_diou(A, C).item() == pytest.approx(25 / 175 - 50 / 450)
    # same widths/heights: the EIoU w/h terms vanish, EIoU = DIoU; CIoU's v = 0 too
    assert B.aligned_eiou(A, C).item() == pytest.approx(B.aligned_diou(A, C).item())
    assert B.aligned_ciou(A, C).item() == pytest.approx(B.aligned_diou(A, C).item())


def test_eiou_width_height_terms():
    a = torch.tensor([0.0, 0.0, 4.0, 2.0])
    b = torch.tensor([0.0, 0.0, 2.0, 2.0])
    # IoU = 4/8; centres (2,1),(1,1): rho² = 1; enclosing 4x2: c² = 20, Cw = 4, Ch = 2
    # EIoU = 0.5 - 1/20 - (4-2)²/16 - 0/4
    assert B.aligned_eiou(a, b).item() == pytest.approx(0.5 - 0.05 - 0.25)


def test_ciou_aspect_term_of_a_point_box_has_a_bounded_gradient():
    # found on CUDA fuzzing: d atan(w/h)/dw = 1/h was 1/EPS for a point box, inf in fp16
    target = torch.tensor([[1e-4, 2e-4, 8e-4, 9e-4]], dtype=torch.float16)
    for pred in ([3e-4, 6e-4, 3e-4, 6e-4], [3e-4, 6e-4, 3e-4, 9e-4]):  # point, zero width
        pred = torch.tensor([pred], dtype=torch.float16, requires_grad=True)
        (1 - B.aligned_ciou(pred, target)).sum().backward()
        assert torch.isfinite(pred.grad).all(), pred.grad
    # ordinary boxes are untouched by the floor: v as written in the paper
    a, b = torch.tensor([0.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 0.0, 1.0, 3.0])
    v = 4 / math.pi**2 * (math.atan(1 / 3) - math.atan(2)) ** 2
    iou = 1 / (2 + 3 - 1)
    rho2_c2 = ((1 - 0.5) ** 2 + (0.5 - 1.5) ** 2) / (2**2 + 3**2)
    expected = iou - rho2_c2 - v / (1 - iou + v) * v
    assert B.aligned_ciou(a.double(), b.double()).item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (B.box_iou, tvops.box_iou),
        (B.generalized_box_iou, tvops.generalized_box_iou),
        (B.distance_box_iou, tvops.distance_box_iou),
        (B.complete_box_iou, tvops.complete_box_iou),
    ],
)
def test_pairwise_matches_torchvision(ours, theirs):
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(7, 2, generator=g) * 50
    wh = torch.rand(7, 2, generator=g) * 30 + 1
    b1 = torch.cat((xy, xy + wh), 1)
    xy = torch.rand(5, 2, generator=g) * 50
    wh = torch.rand(5, 2, generator=g) * 30 + 1
    b2 = torch.cat((xy, xy + wh), 1)
    torch.testing.assert_close(ours(b1, b2), theirs(b1, b2), rtol=1e-5, atol=1e-5)


def test_degenerate_boxes_are_finite_with_finite_grads():
    point = torch.tensor([[3.0, 3.0, 3.0, 3.0]], requires_grad=True)
    inverted = torch.tensor([[10.0, 10.0, 0.0, 0.0]], requires_grad=True)
    for fn in (B.aligned_iou, B.aligned_giou, B.aligned_diou, B.aligned_ciou, B.aligned_eiou):
        for a in (point, inverted):
            for b in (point.detach(), A):
                out = fn(a, b)
                assert torch.isfinite(out).all(), fn.__name__
                out.sum().backward()
                assert torch.isfinite(a.grad).all(), fn.__name__
                a.grad = None
    assert B.box_area(inverted).item() == 0.0
    assert B.aligned_iou(point, point).item() == 0.0  # zero area never matches
    assert B.aligned_giou(point, point).item() == -1.0


def test_half_precision_is_upcast():
    big = torch.tensor([[0.0, 0.0, 400.0, 400.0]], dtype=torch.float16)
    area = B.box_area(big)
    assert area.dtype == torch.float32 and area.item() == 160000.0  # > fp16 max
    assert B.aligned_iou(big, big).item() == pytest.approx(1.0)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="boxes1"):
        B.aligned_iou(torch.zeros(3, 3), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="pairwise"):
        B.box_iou(torch.zeros(2, 3, 4), torch.zeros(3, 4))


def test_delta_codec_round_trip_and_clamp():
    anchors = torch.tensor([[0.0, 0.0, 16.0, 32.0], [10.0, 10.0, 20.0, 20.0]])
    targets = torch.tensor([[2.0, 4.0, 30.0, 20.0], [12.0, 8.0, 13.0, 40.0]])
    for w in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        d = B.encode_deltas(anchors, targets, w)
        torch.testing.assert_close(B.decode_deltas(anchors, d, w), targets)
    # hand value: dx = (16 - 8)/16, dw = log(28/16)
    d = B.encode_deltas(anchors[:1], targets[:1])
    assert d[0, 0].item() == pytest.approx(0.5)
    assert d[0, 2].item() == pytest.approx(math.log(28 / 16))
    huge = B.decode_deltas(anchors[:1], torch.tensor([[0.0, 0.0, 1e4, 1e4]]))
    assert torch.isfinite(huge).all()
    assert B.encode_deltas(anchors[:1], torch.tensor([[5.0, 5.0, 5.0, 5.0]])).isfinite().all()


def test_ltrb_codec_round_trip():
    points = torch.tensor([[4.0, 6.0], [20.0, 20.0]])
    targets = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    d = B.encode_ltrb(points, targets, 2.0)
    torch.testing.assert_close(d[0], torch.tensor([2.0, 3.0, 3.0, 2.0]))
    assert (d[1] < 0).any()  # a point outside its box has a negative distance
    torch.testing.assert_close(B.decode_ltrb(points, d, 2.0), targets)
    strides = torch.tensor([2.0, 8.0])
    torch.testing.assert_close(
        B.decode_ltrb(points, B.encode_ltrb(points, targets, strides), strides), targets
    )


def test_conversions_and_clip():
    torch.testing.assert_close(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(C)), C)
    clipped = B.clip_boxes(torch.tensor([[-5.0, -5.0, 50.0, 8.0]]), (10, 20))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 20.0, 8.0]]))
    assert B.pairwise_centre_distance(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]])).item() == 5


def test_runs_on_device(device):
    a, c = A.to(device), C.to(device)
    assert B.aligned_giou(a, c).device.type == device.type


coord = st.floats(-1e5, 1e5, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(coord, coord, coord, coord), min_size=1, max_size=6), st.data())
def test_fuzz_never_nan(rows, data):
    a = torch.tensor(rows, dtype=torch.float32)
    other = data.draw(st.lists(st.tuples(coord, coord, coord, coord), min_size=1, max_size=6))
    b = torch.tensor(other, dtype=torch.float32)
    for fn in (B.box_iou, B.generalized_box_iou, B.distance_box_iou, B.complete_box_iou):
        out = fn(a, b)
        assert torch.isfinite(out).all(), fn.__name__
        assert (out <= 1 + 1e-5).all()
    iou = B.box_iou(a, b)
    assert ((iou >= 0) & (iou <= 1 + 1e-5)).all()


def test_inverted_boxes_keep_centre_penalty_bounded():
    # corners in any order: the centre term rho²/c² of DIoU/EIoU must stay within [0, 1]
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(2000, 4, generator=g) * 100, torch.rand(2000, 4, generator=g) * 100
    ratio = B.centre_distance_sq(a, b) / B.enclosing_diag_sq(a, b)
    assert ratio.max().item() <= 1.0 + 1e-6
    assert B.aligned_diou(a, b).min().item() >= -1.0 - 1e-6

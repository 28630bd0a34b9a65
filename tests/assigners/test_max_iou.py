"""Max-IoU (RetinaNet) assignment: a hand scene with every rule, and the brute force."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from tests.assigners._scenes import NUM_CLASSES, assert_same, scenes
from tests.assigners.reference import fpn_priors, ref_max_iou_assign
from tests.assigners.test_atss import batch

from hcral.assigners import ASSIGNERS, max_iou_assign

PRIORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # 0: IoU 1 with GT 0 -> positive
        [0.0, 0.0, 10.0, 20.0],  # 1: IoU 0.5 -> positive (>= pos_iou_thr)
        [0.0, 0.0, 10.0, 24.0],  # 2: IoU 100/240 = 0.417 -> ignore
        [0.0, 0.0, 10.0, 30.0],  # 3: IoU 0.333 -> background
        [200.0, 200.0, 220.0, 220.0],  # 4: IoU 0.25, best of GT 1 -> low-quality positive
        [205.0, 205.0, 225.0, 225.0],  # 5: IoU 25/475 with GT 1 -> background
        [310.0, 310.0, 320.0, 320.0],  # 6: inside the crowd box -> ignore
        [390.0, 390.0, 410.0, 410.0],  # 7: crowd IoF 0.25 -> background
    ]
)
GTS = [[0.0, 0.0, 10.0, 10.0], [200.0, 200.0, 210.0, 210.0], [300.0, 300.0, 400.0, 400.0]]


def test_hand_scene_every_rule(device):
    args = [a.to(device) if torch.is_tensor(a) else a for a in batch(GTS, crowd=[[0, 0, 1]])]
    res = max_iou_assign(PRIORS.to(device), *args)
    assert res.gt_inds.tolist() == [[0, 0, -1, -1, 1, -1, -1, -1]]
    assert res.labels.tolist() == [[0, 0, -1, 3, 1, 3, -1, 3]]
    expected = torch.tensor([[1.0, 0.5, 0, 0, 0.25, 0, 0, 0]])
    assert torch.allclose(res.max_ious.cpu(), expected)
    assert res.num_unmatched_gts.tolist() == [0]


def test_min_pos_iou_turns_low_quality_matches_off():
    res = max_iou_assign(PRIORS, *batch(GTS[:2]), min_pos_iou=0.3)
    assert res.gt_inds[0, 4].item() == -1 and res.num_unmatched_gts.tolist() == [1]


def test_gt_overlapping_no_prior_stays_unmatched():
    # The "> 0" guard: with mmdet's min_pos_iou=0, every IoU-0 prior would become positive.
    res = max_iou_assign(PRIORS, *batch([[1000.0, 1000.0, 1010.0, 1010.0]]))
    assert (res.gt_inds == -1).all() and res.num_unmatched_gts.tolist() == [1]


def test_low_quality_prior_shared_by_two_gts_goes_to_the_higher_iou():
    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    gts = [[0.0, 0.0, 30.0, 30.0], [0.0, 0.0, 20.0, 20.0]]  # IoU 1/9 and 1/4 with prior 0
    res = max_iou_assign(priors, *batch(gts))
    assert res.gt_inds.tolist() == [[1, -1]] and res.num_unmatched_gts.tolist() == [1]


def test_no_gt_gives_all_background():
    empty = torch.zeros(1, 0, dtype=torch.bool)
    res = max_iou_assign(PRIORS, torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.int64),
                         empty, empty, NUM_CLASSES)  # fmt: skip
    assert (res.labels == NUM_CLASSES).all()


@pytest.mark.parametrize("chunk_size", [1, 3])
def test_chunking_gives_identical_results(chunk_size):
    priors, _ = fpn_priors(64, 96, anchors="retinanet")
    g = torch.Generator().manual_seed(2)
    xy = torch.rand(2, 7, 2, generator=g) * 60
    boxes = torch.cat((xy, xy + torch.rand(2, 7, 2, generator=g) * 40 + 4), -1)
    labels = torch.randint(0, NUM_CLASSES, (2, 7), generator=g)
    mask = torch.ones(2, 7, dtype=torch.bool)
    crowd = torch.zeros(2, 7, dtype=torch.bool)
    crowd[1, 0] = True
    args = (priors, boxes, labels, mask, crowd, NUM_CLASSES)
    assert_same(max_iou_assign(*args, chunk_size=chunk_size), max_iou_assign(*args))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scene=scenes(max_side=96, max_gts=5))
def test_matches_brute_force_reference(device, scene):
    priors, _ = fpn_priors(scene.height, scene.width, anchors="retinanet", device=device)
    s = scene.to(device)
    ours = max_iou_assign(priors, *s.args(), chunk_size=2)
    assert_same(ours, ref_max_iou_assign(priors, *s.args()))


def test_bad_thresholds_raise():
    with pytest.raises(ValueError, match="neg_iou_thr"):
        max_iou_assign(PRIORS, *batch(GTS), pos_iou_thr=0.3, neg_iou_thr=0.4)


def test_registered_by_name():
    assert ASSIGNERS["max_iou"] is max_iou_assign

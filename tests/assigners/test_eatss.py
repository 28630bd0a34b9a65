"""EATSS: SPEC P6 one property per test, hand scenes, and the brute-force reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.assigners._scenes import NUM_CLASSES, assert_same, pred_boxes_like, scenes
from tests.assigners.reference import fpn_priors, ref_eatss_assign
from tests.assigners.test_atss import batch, grid_priors

from hcral.assigners import ASSIGNERS, atss_assign, eatss_assign
from hcral.boxes import aligned_iou

PROPERTY = settings(max_examples=30, deadline=None)
FIXTURE_OK = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def both(scene, num_extra: int = 3, topk: int = 9):
    priors, nlp = fpn_priors(scene.height, scene.width)
    atss = atss_assign(priors, nlp, *scene.args(), topk=topk)
    eatss = eatss_assign(priors, nlp, *scene.args(), topk=topk, num_extra=num_extra)
    return priors, nlp, atss, eatss


# --- SPEC P6, one property per test -------------------------------------------------


@PROPERTY
@given(scene=scenes(), num_extra=st.integers(1, 4), topk=st.sampled_from([3, 9]))
def test_p6_eatss_positives_contain_atss_positives(scene, num_extra, topk):
    _, _, atss, eatss = both(scene, num_extra, topk)
    keep = atss.pos_mask
    assert torch.equal(eatss.gt_inds[keep], atss.gt_inds[keep])


@PROPERTY
@given(scene=scenes(), num_extra=st.integers(1, 4))
def test_p6_at_most_num_extra_more_per_gt(scene, num_extra):
    _, _, atss, eatss = both(scene, num_extra)
    m = scene.labels.shape[1]
    for n in range(scene.labels.shape[0]):
        added = torch.bincount(eatss.gt_inds[n][eatss.gt_inds[n] >= 0], minlength=m)
        before = torch.bincount(atss.gt_inds[n][atss.gt_inds[n] >= 0], minlength=m)
        assert ((added - before) <= num_extra).all() and ((added - before) >= 0).all()


@PROPERTY
@given(scene=scenes(), num_extra=st.integers(1, 4))
def test_p6_no_prior_has_two_gts(scene, num_extra):
    # One GT per prior: its label, IoU and GT index all describe the same GT.
    priors, _, _, eatss = both(scene, num_extra)
    for n in range(scene.labels.shape[0]):
        pos = eatss.gt_inds[n] >= 0
        g = eatss.gt_inds[n][pos]
        assert torch.equal(eatss.labels[n][pos], scene.labels[n][g])
        assert torch.equal(eatss.max_ious[n][pos], aligned_iou(priors[pos], scene.boxes[n][g]))


@PROPERTY
@given(scene=scenes(), topk=st.sampled_from([1, 9]))
def test_p6_num_extra_zero_equals_atss_exactly(scene, topk):
    _, _, atss, eatss = both(scene, num_extra=0, topk=topk)
    assert_same(eatss, atss)


@PROPERTY
@given(scene=scenes(max_gts=1, crowd=False), topk=st.sampled_from([1, 3, 9]))
def test_p6_gt_left_empty_by_atss_gets_a_positive(scene, topk):
    # One GT per image: every GT with a candidate centre inside it ends with a positive.
    priors, nlp, atss, eatss = both(scene, num_extra=1, topk=topk)
    ctr = (priors[:, :2] + priors[:, 2:]) / 2
    for n in range(scene.labels.shape[0]):
        if not scene.mask[n].any():
            continue
        box = scene.boxes[n, 0]
        gc = (box[:2] + box[2:]) / 2
        dx, dy = ctr[:, 0] - gc[0], ctr[:, 1] - gc[1]
        dist = dx * dx + dy * dy
        inside = ((ctr - box[:2]).min(-1).values > 0.01) & ((box[2:] - ctr).min(-1).values > 0.01)
        cands, start = [], 0
        for size in nlp:
            cands += (dist[start : start + size].argsort(stable=True)[:topk] + start).tolist()
            start += size
        if inside[cands].any():
            assert (eatss.gt_inds[n] == 0).any()
        else:
            assert eatss.num_unmatched_gts[n] == 1


# --- hand-built scenes --------------------------------------------------------------


def test_hand_scene_fallback_d_max_when_atss_leaves_the_gt_empty():
    # Two levels: a 4x4 grid of 16 px priors (stride 8) and one 48 px prior centred (16, 16).
    # GT (0,0,24,24), centre (12,12); topk=1 -> candidates prior 5 (centre (12,12), d=0,
    # IoU 256/576) and prior 16 (d=√32, IoU 576/2304). With two values mean + std exceeds
    # the larger one, so ATSS gives no positive. Both centres are inside: d_max = √32.
    # Free priors inside and within √32: 5 (score 0.444) and 16 (score ≈ 0).
    priors = torch.cat((grid_priors(), torch.tensor([[-8.0, -8.0, 40.0, 40.0]])))
    args = batch([[0.0, 0.0, 24.0, 24.0]])
    atss = atss_assign(priors, [16, 1], *args, topk=1)
    assert not atss.pos_mask.any() and atss.num_unmatched_gts.tolist() == [1]
    one = eatss_assign(priors, [16, 1], *args, topk=1, num_extra=1)
    assert (one.gt_inds[0] == 0).nonzero().flatten().tolist() == [5]
    assert one.max_ious[0, 5].item() == pytest.approx(256 / 576)
    three = eatss_assign(priors, [16, 1], *args, topk=1, num_extra=3)
    assert (three.gt_inds[0] == 0).nonzero().flatten().tolist() == [5, 16]
    assert three.num_unmatched_gts.tolist() == [0]


def test_hand_scene_extras_within_d_max_with_ties_by_prior_index():
    # GT (0,0,16,16): topk=1 -> ATSS positive prior 0 (first of 4 priors at distance √32).
    # d_max = √32; priors 1, 4, 5 are free, inside, at d = d_max: equal scores, so l=2
    # takes the lower indices 1 and 4.
    args = batch([[0.0, 0.0, 16.0, 16.0]])
    res = eatss_assign(grid_priors(), [16], *args, topk=1, num_extra=2)
    assert (res.gt_inds[0] == 0).nonzero().flatten().tolist() == [0, 1, 4]


def test_contested_extra_goes_to_the_gt_atss_left_empty():
    # Duplicate GTs (0,0,12,16), centre (6,8). ATSS gives both positives, P3 priors 0 and 8
    # (centres (4,4), (4,12), d = √20), to GT 0; GT 1 is empty and its fallback d_max is
    # the same √20. The only free prior inside and within √20 is P4 prior 64 (centre (8,8),
    # d = 2): both GTs pick it with equal scores, and the documented priority gives it to
    # the GT ATSS left empty (by index alone GT 0 would take it and GT 1 stay unmatched).
    priors, nlp = fpn_priors(64, 64)
    box = [0.0, 0.0, 12.0, 16.0]
    atss = atss_assign(priors, nlp, *batch([box, box]))
    assert (atss.gt_inds[0] == 0).nonzero().flatten().tolist() == [0, 8]
    assert atss.num_unmatched_gts.tolist() == [1]
    res = eatss_assign(priors, nlp, *batch([box, box]), num_extra=2)
    assert (res.gt_inds[0] == 0).nonzero().flatten().tolist() == [0, 8]
    assert (res.gt_inds[0] == 1).nonzero().flatten().tolist() == [64]
    assert res.num_unmatched_gts.tolist() == [0]


def test_pred_boxes_change_the_ranking():
    # The same scene as the tie test: a prediction that hugs the GT makes prior 5 rank first.
    args = batch([[0.0, 0.0, 16.0, 16.0]])
    priors = grid_priors()
    pred = priors[None].clone()
    pred[0, 5] = torch.tensor([0.0, 0.0, 16.0, 16.0])
    res = eatss_assign(priors, [16], *args, topk=1, num_extra=1, pred_boxes=pred)
    assert (res.gt_inds[0] == 0).nonzero().flatten().tolist() == [0, 5]
    assert res.max_ious[0, 5].item() == pytest.approx(144 / 368)  # the prior's IoU


# --- agreement with the brute force, chunking, inputs ---------------------------------


@FIXTURE_OK
@given(scene=scenes(), num_extra=st.integers(0, 4), topk=st.sampled_from([1, 9]))
def test_matches_brute_force_reference(device, scene, num_extra, topk):
    priors, nlp = fpn_priors(scene.height, scene.width, device=device)
    s = scene.to(device)
    ours = eatss_assign(priors, nlp, *s.args(), topk=topk, num_extra=num_extra, chunk_size=2)
    ref = ref_eatss_assign(priors, nlp, *s.args(), topk=topk, num_extra=num_extra)
    assert_same(ours, ref)


@FIXTURE_OK
@given(scene=scenes(max_images=2), seed=st.integers(0, 2**16))
def test_matches_reference_ranking_with_pred_boxes(device, scene, seed):
    priors, nlp = fpn_priors(scene.height, scene.width, device=device)
    pred = pred_boxes_like(priors, scene.labels.shape[0], seed)
    s = scene.to(device)
    ours = eatss_assign(priors, nlp, *s.args(), pred_boxes=pred)
    assert_same(ours, ref_eatss_assign(priors, nlp, *s.args(), pred_boxes=pred))


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_chunking_gives_identical_results(chunk_size):
    priors, nlp = fpn_priors(96, 128)
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(2, 10, 2, generator=g) * 100
    boxes = torch.cat((xy, xy + torch.rand(2, 10, 2, generator=g) * 70 + 2), -1)
    boxes[1, 4] = boxes[1, 3]
    labels = torch.randint(0, NUM_CLASSES, (2, 10), generator=g)
    mask = torch.ones(2, 10, dtype=torch.bool)
    crowd = torch.zeros(2, 10, dtype=torch.bool)
    args = (priors, nlp, boxes, labels, mask, crowd, NUM_CLASSES)
    assert_same(eatss_assign(*args, chunk_size=chunk_size), eatss_assign(*args))


def test_zero_area_gt_is_ignored_with_a_warning():
    priors, nlp = fpn_priors(64, 64)
    with pytest.warns(UserWarning, match="ignored 1 ground-truth"):
        res = eatss_assign(priors, nlp, *batch([[10.0, 10.0, 30.0, 10.0], [8.0, 8.0, 40.0, 40.0]]))
    assert (res.gt_inds != 0).all() and (res.gt_inds == 1).any()
    assert res.num_unmatched_gts.tolist() == [1]


@pytest.mark.parametrize(
    "change, message",
    [(dict(num_extra=-1), "num_extra"), (dict(pred_boxes=torch.zeros(1, 3, 4)), "pred_boxes")],
)
def test_bad_inputs_raise_value_error(change, message):
    priors, nlp = fpn_priors(32, 32)
    with pytest.raises(ValueError, match=message):
        eatss_assign(priors, nlp, *batch([[2.0, 2.0, 20.0, 20.0]]), **change)


def test_registered_by_name():
    assert ASSIGNERS["eatss"] is eatss_assign


# --- priors that are not one square per grid location ---------------------------------


def test_several_priors_per_location_match_reference():
    priors, nlp = fpn_priors(64, 96)
    half = priors + (priors[:, 2:] - priors[:, :2]).repeat(1, 2) * torch.tensor([1, 1, -1, -1]) / 4
    priors = torch.stack((priors, half), dim=1).reshape(-1, 4)
    nlp = [2 * k for k in nlp]
    args = batch([[4.0, 6.0, 50.0, 40.0], [30.0, 10.0, 90.0, 62.0], [20.0, 20.0, 23.0, 26.0]])
    assert_same(eatss_assign(priors, nlp, *args), ref_eatss_assign(priors, nlp, *args))


@settings(max_examples=15, deadline=None)
@given(scene=scenes(max_images=2), seed=st.integers(0, 2**16))
def test_matches_reference_with_priors_in_any_order(scene, seed):
    # Nothing assumes a grid: with priors permuted within levels, the index tie rules
    # simply follow the new order.
    priors, nlp = fpn_priors(scene.height, scene.width)
    g = torch.Generator().manual_seed(seed)
    perm = torch.cat([torch.randperm(k, generator=g) + sum(nlp[:i]) for i, k in enumerate(nlp)])
    priors = priors[perm]
    ours = eatss_assign(priors, nlp, *scene.args())
    assert_same(ours, ref_eatss_assign(priors, nlp, *scene.args()))


@pytest.mark.parametrize("name", ["atss", "eatss"])
def test_results_are_ordinary_tensors(name):
    # The assigners compute under inference mode; what they return must still be
    # editable in place and usable as a loss target that autograd saves.
    priors, nlp = fpn_priors(64, 64)
    res = ASSIGNERS[name](priors, nlp, *batch([[8.0, 8.0, 40.0, 40.0], [20.0, 4.0, 60.0, 30.0]]))
    for t in (res.gt_inds, res.labels, res.max_ious, res.num_unmatched_gts):
        assert not t.is_inference()
    res.gt_inds[res.labels == NUM_CLASSES] = -1
    logits = torch.zeros_like(res.max_ious, requires_grad=True)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, res.max_ious).backward()
    assert logits.grad is not None and logits.grad.shape == res.max_ious.shape

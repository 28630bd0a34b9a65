"""ATSS: hand-built scenes, edge cases, and exact agreement with the brute-force loops."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.assigners._scenes import NUM_CLASSES, assert_same, scenes
from tests.assigners.reference import fpn_priors, ref_atss_assign

from hcral.assigners import ASSIGNERS, atss_assign

FIXTURE_OK = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def grid_priors(side: float = 16.0, cells: int = 4, stride: float = 8.0) -> torch.Tensor:
    """One level of square priors of ``side`` at the centres of a ``cells²`` grid, row-major."""
    c = (torch.arange(cells) + 0.5) * stride
    ys, xs = torch.meshgrid(c, c, indexing="ij")
    ctr = torch.stack((xs.flatten(), ys.flatten()), -1)
    return torch.cat((ctr - side / 2, ctr + side / 2), -1)


def batch(*images: list[list[float]], crowd: list[list[bool]] | None = None):
    """Pad per-image box lists into (N, M, 4) boxes, labels (= GT index % C), mask, crowd."""
    m = max(len(b) for b in images)
    n = len(images)
    boxes = torch.zeros(n, m, 4)
    mask = torch.zeros(n, m, dtype=torch.bool)
    for i, b in enumerate(images):
        if b:
            boxes[i, : len(b)] = torch.tensor(b, dtype=torch.float32)
        mask[i, : len(b)] = True
    labels = (torch.arange(m) % NUM_CLASSES).repeat(n, 1)
    is_crowd = torch.zeros(n, m, dtype=torch.bool)
    for i, c in enumerate(crowd or []):
        is_crowd[i, : len(c)] = torch.tensor(c)
    return boxes, labels, mask, is_crowd, NUM_CLASSES


def test_hand_scene_one_gt_on_a_4x4_grid(device):
    # GT (0,0,16,16), centre (8,8); priors 16x16 at centres 4, 12, 20, 28 (stride 8).
    # The 9 nearest: the 4 priors at distance √32 around the centre (IoU 144/368), the 4 at
    # √160 (IoU 48/464) and (20,20) (IoU 16/496). mean + std ≈ 0.384 < 144/368 ≈ 0.391,
    # so exactly the 4 inner priors (indices 0, 1, 4, 5) are positive.
    priors = grid_priors().to(device)
    boxes, labels, mask, crowd, c = batch([[0.0, 0.0, 16.0, 16.0]])
    res = atss_assign(priors, [16], boxes.to(device), labels.to(device), mask.to(device),
                      crowd.to(device), c)  # fmt: skip
    expected = torch.full((1, 16), -1, dtype=torch.int64)
    expected[0, [0, 1, 4, 5]] = 0
    assert torch.equal(res.gt_inds.cpu(), expected)
    assert torch.equal(res.labels.cpu(), torch.where(expected == 0, 0, NUM_CLASSES))
    pos = res.max_ious[0, [0, 1, 4, 5]].cpu()
    assert torch.allclose(pos, torch.full((4,), 144 / 368))
    assert res.max_ious.sum().item() == pytest.approx(4 * 144 / 368)
    assert res.num_unmatched_gts.tolist() == [0]


def test_no_gt_gives_all_background(device):
    priors, nlp = fpn_priors(64, 64, device=device)
    boxes = torch.zeros(2, 0, 4, device=device)
    labels = torch.zeros(2, 0, dtype=torch.int64, device=device)
    empty = torch.zeros(2, 0, dtype=torch.bool, device=device)
    res = atss_assign(priors, nlp, boxes, labels, empty, empty, NUM_CLASSES)
    assert res.labels.shape == (2, len(priors))
    assert (res.labels == NUM_CLASSES).all() and (res.gt_inds == -1).all()
    assert res.num_unmatched_gts.tolist() == [0, 0]


def test_one_gt_positives_are_inside_and_above_threshold(device):
    priors, nlp = fpn_priors(128, 128, device=device)
    args = [a.to(device) if torch.is_tensor(a) else a for a in batch([[30.0, 40.0, 90.0, 100.0]])]
    res = atss_assign(priors, nlp, *args)
    pos = res.gt_inds[0] == 0
    assert 1 <= pos.sum() <= 9 * len(nlp)
    ctr = (priors[pos, :2] + priors[pos, 2:]) / 2
    assert ((ctr > torch.tensor([30.0, 40.0], device=device)).all()
            and (ctr < torch.tensor([90.0, 100.0], device=device)).all())  # fmt: skip
    assert (res.labels[0, pos] == 0).all() and (res.labels[0, ~pos] == NUM_CLASSES).all()


def test_gt_smaller_than_the_stride_without_centre_inside_is_counted():
    # A 3x3 box between the P3 centres (4, 12, ...): no prior centre inside it.
    priors, nlp = fpn_priors(64, 64)
    res = atss_assign(priors, nlp, *batch([[5.0, 5.0, 8.0, 8.0], [20.0, 20.0, 50.0, 50.0]]))
    assert (res.gt_inds != 0).all()
    assert res.num_unmatched_gts.tolist() == [1]
    # A small box around a P3 centre is matched.
    res = atss_assign(priors, nlp, *batch([[10.0, 10.0, 14.0, 14.0]]))
    assert (res.gt_inds == 0).sum() >= 1 and res.num_unmatched_gts.tolist() == [0]


def test_gt_partly_outside_the_image():
    priors, nlp = fpn_priors(64, 64)
    res = atss_assign(priors, nlp, *batch([[-40.0, -30.0, 20.0, 24.0]]))
    pos = res.gt_inds[0] == 0
    assert pos.any() and res.num_unmatched_gts.tolist() == [0]
    ctr = (priors[pos, :2] + priors[pos, 2:]) / 2
    assert (ctr < torch.tensor([20.0, 24.0])).all()


def test_duplicate_gts_go_to_the_lower_index():
    priors, nlp = fpn_priors(64, 64)
    box = [10.0, 12.0, 40.0, 50.0]
    single = atss_assign(priors, nlp, *batch([box]))
    twice = atss_assign(priors, nlp, *batch([box, box]))
    assert torch.equal(twice.gt_inds, single.gt_inds)  # every tie goes to GT 0
    assert twice.num_unmatched_gts.tolist() == [1]


def test_zero_area_gt_is_ignored_with_one_warning_and_counted():
    priors, nlp = fpn_priors(64, 64)
    boxes = [[10.0, 10.0, 10.0, 30.0], [5.0, 5.0, 40.0, 5.0], [10.0, 12.0, 40.0, 50.0]]
    with pytest.warns(UserWarning, match="ignored 2 ground-truth") as record:
        res = atss_assign(priors, nlp, *batch(boxes))
    assert len(record) == 1
    reference = atss_assign(priors, nlp, *batch([boxes[2]]))
    assert torch.equal(res.gt_inds, torch.where(reference.gt_inds == 0, 2, -1))
    assert res.num_unmatched_gts.tolist() == [2]


def test_nan_padding_and_invalid_rows_are_never_used():
    priors, nlp = fpn_priors(64, 64)
    boxes, labels, mask, crowd, c = batch([[10.0, 12.0, 40.0, 50.0], [0.0, 0.0, 60.0, 60.0]])
    mask[0, 1] = False
    boxes[0, 1] = float("nan")
    labels[0, 1] = -5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # padding is not a "zero-area GT"
        res = atss_assign(priors, nlp, boxes, labels, mask, crowd, c)
    only = atss_assign(priors, nlp, *batch([[10.0, 12.0, 40.0, 50.0]]))
    assert_same(res, only)


def test_crowd_box_ignores_covered_priors_and_is_never_matched():
    priors, nlp = fpn_priors(64, 64)
    gt, crowd_box = [2.0, 2.0, 30.0, 30.0], [0.0, 0.0, 64.0, 64.0]
    res = atss_assign(priors, nlp, *batch([gt, crowd_box], crowd=[[False, True]]))
    assert (res.gt_inds != 1).all()
    pos = res.gt_inds[0] == 0
    assert pos.any()
    # Non-positive priors whose area is covered ≥ 50% by the crowd box are ignored.
    lt = torch.maximum(priors[:, :2], torch.tensor(crowd_box[:2]))
    rb = torch.minimum(priors[:, 2:], torch.tensor(crowd_box[2:]))
    inter = (rb - lt).clamp(min=0).prod(-1)
    iof = inter / (priors[:, 2:] - priors[:, :2]).prod(-1)
    assert torch.equal(res.labels[0] == -1, (iof >= 0.5) & ~pos)
    assert ((iof < 0.5) & ~pos).any()  # the test covers both sides
    assert res.num_unmatched_gts.tolist() == [0]  # crowd boxes are not counted


def test_ties_are_broken_towards_the_lower_prior_index():
    # topk=1 and the GT centre (8, 8) equidistant from the 4 priors around it: prior 0.
    priors = grid_priors()
    res = atss_assign(priors, [16], *batch([[0.0, 0.0, 16.0, 16.0]]), topk=1)
    assert (res.gt_inds[0] == 0).nonzero().flatten().tolist() == [0]


@pytest.mark.parametrize("chunk_size", [1, 2, 5])
def test_chunking_gives_identical_results(chunk_size):
    priors, nlp = fpn_priors(96, 128)
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(2, 12, 2, generator=g) * 100
    wh = torch.rand(2, 12, 2, generator=g) * 60 + 2
    boxes = torch.cat((xy, xy + wh), -1)
    labels = torch.randint(0, NUM_CLASSES, (2, 12), generator=g)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 9:] = False
    crowd = torch.zeros(2, 12, dtype=torch.bool)
    crowd[0, 3] = True
    args = (priors, nlp, boxes, labels, mask, crowd, NUM_CLASSES)
    assert_same(atss_assign(*args, chunk_size=chunk_size), atss_assign(*args))


@FIXTURE_OK
@given(scene=scenes(), topk=st.sampled_from([1, 3, 9]))
def test_matches_brute_force_reference(device, scene, topk):
    priors, nlp = fpn_priors(scene.height, scene.width, device=device)
    s = scene.to(device)
    ours = atss_assign(priors, nlp, *s.args(), topk=topk, chunk_size=2)
    assert_same(ours, ref_atss_assign(priors, nlp, *s.args(), topk=topk))


@settings(max_examples=15, deadline=None)
@given(scene=scenes(max_images=2, max_gts=4, zero_area=True))
def test_matches_reference_with_zero_area_gts(scene):
    priors, nlp = fpn_priors(scene.height, scene.width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = atss_assign(priors, nlp, *scene.args())
    assert_same(ours, ref_atss_assign(priors, nlp, *scene.args()))


def test_half_precision_inputs_give_the_float32_result(device):
    priors, nlp = fpn_priors(64, 64, device=device)
    args = [a.to(device) if torch.is_tensor(a) else a for a in batch([[8.0, 8.0, 40.0, 56.0]])]
    full = atss_assign(priors, nlp, *args)
    half = atss_assign(priors.half(), nlp, args[0].half(), *args[1:])
    assert_same(half, full)  # coordinates on a 1/8 px grid are exact in fp16


def test_registered_by_name():
    assert ASSIGNERS["atss"] is atss_assign


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(priors=torch.zeros(5, 3)), "priors"),
        (dict(num_level_priors=[1, 2]), "num_level_priors"),
        (dict(gt_boxes=torch.zeros(1, 4)), "gt_boxes"),
        (dict(gt_labels=torch.zeros(1, 2, dtype=torch.int64)), "gt_labels"),
        (dict(gt_labels=torch.tensor([[5]])), "gt_labels"),
        (dict(gt_mask=torch.ones(1, 1)), "gt_mask"),
        (dict(num_classes=0), "num_classes"),
        (dict(topk=0), "topk"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_argument(change, message):
    priors, nlp = fpn_priors(32, 32)
    kwargs = dict(
        priors=priors,
        num_level_priors=nlp,
        gt_boxes=torch.tensor([[[2.0, 2.0, 20.0, 20.0]]]),
        gt_labels=torch.tensor([[1]]),
        gt_mask=torch.tensor([[True]]),
        gt_crowd=torch.tensor([[False]]),
        num_classes=NUM_CLASSES,
    )
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        atss_assign(**kwargs)

"""The window search of EATSS (assigners/grid.py): grid detection, its cache, the
superset property of the windows, and exact agreement of both search modes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.assigners._scenes import assert_same, pred_boxes_like, scenes
from tests.assigners.reference import fpn_priors, ref_eatss_assign
from tests.assigners.test_atss import grid_priors

from hcral.assigners import eatss as eatss_module
from hcral.assigners import eatss_assign
from hcral.assigners.atss import INSIDE_EPS, centre_distance_sq, centre_inside
from hcral.assigners.grid import (
    detect_grid,
    iou_bound,
    prior_grid,
    window_bounds,
    window_pairs,
)
from hcral.boxes import aligned_iou, box_centers
from hcral.models.priors import PriorGenerator

FIXTURE_OK = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# --- detection ------------------------------------------------------------------------


def test_detects_the_fpn_levels():
    priors, nlp = fpn_priors(96, 130)  # 130 px: rows of 17, 9, 5, 3, 2 cells
    grid = detect_grid(priors, nlp)
    assert grid is not None
    assert grid.width.tolist() == [17, 9, 5, 3, 2]
    assert nlp == [12 * 17, 6 * 9, 3 * 5, 2 * 3, 1 * 2]
    assert grid.start.tolist() == [0, 204, 258, 273, 279]
    stride = 1 / grid.inv_stride.squeeze(1)
    assert torch.allclose(stride, torch.tensor([8.0, 16, 32, 64, 128], dtype=stride.dtype))


def test_the_detectors_atss_priors_take_the_window_search():
    # ATSS and FCOS+ATSS build one square anchor per location: the fast path must apply
    # (a change of prior layout that silently falls back to the dense test fails here).
    gen = PriorGenerator([8, 16, 32, 64, 128], base_scale=8)
    priors = gen([(50, 84), (25, 42), (13, 21), (7, 11), (4, 6)], torch.device("cpu"))
    grid = prior_grid(priors.boxes, priors.num_level_priors)
    assert grid is not None
    assert grid.prior_wh.tolist() == [[64.0, 64.0], [128.0, 128.0], [256.0, 256.0],
                                      [512.0, 512.0], [1024.0, 1024.0]]  # fmt: skip
    retina = PriorGenerator([8, 16], base_scale=4, scales=(1.0, 1.26), ratios=(0.5, 1.0, 2.0))
    priors = retina([(10, 10), (5, 5)], torch.device("cpu"))
    assert prior_grid(priors.boxes, priors.num_level_priors) is None  # 6 anchors per cell


def test_skips_empty_levels_and_takes_one_cell_levels():
    level = grid_priors(cells=3)  # 9 priors, stride 8
    one = torch.tensor([[0.0, 0.0, 40.0, 40.0]])  # a single cell
    grid = detect_grid(torch.cat((level, one)), [9, 0, 1])
    assert grid is not None and grid.start.tolist() == [0, 9]
    assert grid.width.tolist() == [3, 1]


@pytest.mark.parametrize(
    "make",
    [
        lambda: fpn_priors(64, 64, anchors="retinanet"),  # 9 anchors per location
        lambda: (fpn_priors(64, 64)[0].flip(0), fpn_priors(64, 64)[1]),  # not row-major
        lambda: (torch.rand(20, 2).repeat(1, 2) * 50, [20]),  # scattered points
        lambda: (grid_priors().index_fill(0, torch.tensor([5]), math.nan), [16]),
        lambda: (grid_priors()[:15], [15]),  # a ragged last row
        lambda: (torch.full((1, 4), math.inf), [1]),  # a one-cell level off the plane
    ],
)
def test_rejects_priors_that_are_no_grid(make):
    priors, nlp = make()
    assert detect_grid(priors, nlp) is None


def test_jitter_within_tolerance_is_still_a_grid():
    priors = grid_priors(cells=5)
    priors = priors + torch.rand(25, 1) * 1e-4  # far below GRID_TOL · stride
    assert detect_grid(priors, [25]) is not None


# --- cache ----------------------------------------------------------------------------


def test_cache_hits_and_notices_in_place_changes():
    priors, nlp = fpn_priors(64, 96)
    first = prior_grid(priors, nlp)
    assert prior_grid(priors, nlp) is first
    assert prior_grid(priors.clone(), nlp) is not first  # another tensor
    priors.add_(4.0)  # shifted in place: still a grid, with another origin
    shifted = prior_grid(priors, nlp)
    assert shifted is not first and not torch.equal(shifted.origin, first.origin)
    priors[3] = torch.tensor([500.0, 500.0, 510.0, 510.0])  # in place: no grid any more
    assert prior_grid(priors, nlp) is None


def test_cache_is_keyed_by_the_level_sizes():
    level = grid_priors(cells=4)
    assert prior_grid(level, [16]) is not None
    assert prior_grid(level, [8, 8]) is not None  # two 2-row levels
    assert prior_grid(level, [6, 10]) is None  # 6 priors are no rows of 4


# --- windows: a superset of the exact tests -------------------------------------------


@st.composite
def window_cases(draw):
    height, width = draw(st.integers(8, 200)), draw(st.integers(8, 200))
    count = draw(st.integers(1, 6))
    boxes, radii = [], []
    for _ in range(count):
        cx = draw(st.floats(-20, width + 20, width=32))
        cy = draw(st.floats(-20, height + 20, width=32))
        w, h = draw(st.floats(0.25, 300, width=32)), draw(st.floats(0.25, 300, width=32))
        boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        radii.append(draw(st.floats(0, 400, width=32)))
    return height, width, torch.tensor(boxes), torch.tensor(radii) ** 2


@settings(max_examples=60, deadline=None)
@given(case=window_cases())
def test_windows_hold_every_prior_the_exact_tests_accept(case):
    height, width, boxes, radius_sq = case
    priors, nlp = fpn_priors(height, width)
    grid = detect_grid(priors, nlp)
    centres = box_centers(boxes)
    box, prior, flat = window_pairs(
        grid, window_bounds(boxes, centres, radius_sq.sqrt()), 1, len(priors)
    )
    assert torch.equal(flat, box * len(priors) + prior)
    pairs = box * len(priors) + prior
    assert pairs.unique().numel() == pairs.numel()  # no cell twice
    # Brute force: every (box, prior) pair that the EATSS tests accept.
    pc = box_centers(priors)
    dist_sq = centre_distance_sq(pc, centres[:, None, :])  # (B, R)
    accept = (dist_sq <= radius_sq[:, None]) & centre_inside(pc, boxes[:, None, :], INSIDE_EPS)
    wanted = accept.nonzero()
    wanted = wanted[:, 0] * len(priors) + wanted[:, 1]
    assert torch.isin(wanted, pairs).all()


# --- the two search modes agree exactly -----------------------------------------------


@FIXTURE_OK
@given(scene=scenes(), num_extra=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_grid_and_dense_search_give_identical_results(device, scene, num_extra, seed):
    priors, nlp = fpn_priors(scene.height, scene.width, device=device)
    s = scene.to(device)
    pred = pred_boxes_like(priors, scene.labels.shape[0], seed) if seed % 2 else None
    grid = eatss_assign(priors, nlp, *s.args(), num_extra=num_extra, pred_boxes=pred)
    dense = eatss_assign(
        priors, nlp, *s.args(), num_extra=num_extra, pred_boxes=pred, search="dense"
    )
    assert_same(grid, dense)


@FIXTURE_OK
@given(scene=scenes(max_images=2))
def test_priors_that_are_no_grid_fall_back_and_match_the_reference(device, scene):
    # Nine anchors per location: the dense test runs; the result is the reference's.
    priors, nlp = fpn_priors(scene.height, scene.width, anchors="retinanet", device=device)
    assert prior_grid(priors, nlp) is None
    s = scene.to(device)
    assert_same(eatss_assign(priors, nlp, *s.args()), ref_eatss_assign(priors, nlp, *s.args()))


@FIXTURE_OK
@given(scene=scenes(max_images=2, max_side=40), stride=st.sampled_from([0.5, 1.0, 3.0]))
def test_fine_and_odd_strides_match_the_reference(device, scene, stride):
    # Grids far from the FPN defaults: sub-pixel and non-power-of-two strides.
    cells = max(2, math.ceil(max(scene.height, scene.width) / stride))
    priors = grid_priors(side=4 * stride, cells=cells, stride=stride).to(device)
    nlp = [len(priors)]
    s = scene.to(device)
    assert_same(
        eatss_assign(priors, nlp, *s.args(), topk=3),
        ref_eatss_assign(priors, nlp, *s.args(), topk=3),
    )


def test_unknown_search_mode_is_refused():
    priors, nlp = fpn_priors(32, 32)
    boxes = torch.tensor([[[4.0, 4.0, 20.0, 20.0]]])
    args = (boxes, torch.zeros(1, 1, dtype=torch.int64), torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="search must be"):
        eatss_assign(priors, nlp, *args, None, 3, search="kd-tree")


# --- skipping levels by the rank floor ------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(case=window_cases())
def test_iou_bound_holds_for_every_prior_of_the_level(case):
    height, width, boxes, _ = case
    priors, nlp = fpn_priors(height, width)
    grid = detect_grid(priors, nlp)
    bound = iou_bound(grid, boxes)  # (B, L)
    for level, (start, size) in enumerate(zip(grid.start.tolist(), nlp)):
        iou = aligned_iou(priors[start : start + size], boxes[:, None, :])  # (B, R_l)
        assert (iou.double().amax(-1) <= bound[:, level] * (1 + 1e-6) + 1e-7).all()


def test_iou_bound_is_reached_by_a_centred_prior():
    priors = grid_priors(side=16.0, cells=4)  # priors of 16 x 16 px
    grid = detect_grid(priors, [16])
    box = torch.tensor([[0.0, 0.0, 32.0, 8.0]])  # 32 x 8: inter ≤ 16·8, union ≥ 256+256-128
    assert iou_bound(grid, box).item() == pytest.approx(128 / 384)


def test_no_level_skipping_when_a_level_mixes_prior_sizes():
    priors = grid_priors(cells=4)
    priors[3] += torch.tensor([-1.0, -1.0, 1.0, 1.0])  # one prior of another size
    assert detect_grid(priors, [16]).prior_wh is None


def test_the_floor_skips_levels_a_large_gt_cannot_use():
    priors, nlp = fpn_priors(512, 512)
    boxes = torch.tensor([[[40.0, 40.0, 440.0, 420.0]]]).repeat(1, 2, 1)
    boxes[0, 1] += 10.0
    args = (boxes, torch.zeros(1, 2, dtype=torch.int64), torch.ones(1, 2, dtype=torch.bool))
    grid = prior_grid(priors, nlp)
    flat_boxes = boxes.view(-1, 4)
    centres = box_centers(flat_boxes)
    radius = torch.full((2,), 150.0)
    bounds = window_bounds(flat_boxes, centres, radius)
    everything = window_pairs(grid, bounds, 2, len(priors))[1]
    floor = torch.full((2,), 0.3)  # P3/P4 priors (64, 128 px) have IoU < 0.1 with 400 px
    kept = window_pairs(grid, bounds, 2, len(priors), flat_boxes, floor)[1]
    assert 0 < kept.numel() < everything.numel() / 10
    assert (kept >= nlp[0] + nlp[1]).all()
    assert eatss_assign(priors, nlp, *args, None, 3).pos_mask.sum() > 0


@FIXTURE_OK
@given(scene=scenes(max_gts=8), num_extra=st.integers(1, 4), topk=st.sampled_from([1, 9]))
def test_level_skipping_keeps_the_reference_result(device, scene, num_extra, topk, monkeypatch):
    monkeypatch.setattr(eatss_module, "PRUNE_MIN_GTS", 0)  # skip levels in every batch
    priors, nlp = fpn_priors(scene.height, scene.width, device=device)
    s = scene.to(device)
    ours = eatss_assign(priors, nlp, *s.args(), topk=topk, num_extra=num_extra, chunk_size=3)
    ref = ref_eatss_assign(priors, nlp, *s.args(), topk=topk, num_extra=num_extra)
    assert_same(ours, ref)

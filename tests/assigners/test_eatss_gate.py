"""EATSS's quality gate ``min_extra_iou`` (a variant outside SPEC, off by default): the
P6 properties still hold, the gate does what it says, and the brute force agrees."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.assigners._scenes import assert_same, scenes
from tests.assigners.reference import fpn_priors, ref_eatss_assign

from hcral.assigners import atss_assign, eatss_assign
from hcral.assigners import eatss as eatss_module
from hcral.boxes import aligned_iou

PROPERTY = settings(max_examples=30, deadline=None)
FIXTURE_OK = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
GATES = st.sampled_from([0.1, 0.3, 0.5, 0.9])


def both(scene, gate: float, num_extra: int = 3):
    priors, nlp = fpn_priors(scene.height, scene.width)
    atss = atss_assign(priors, nlp, *scene.args())
    eatss = eatss_assign(priors, nlp, *scene.args(), num_extra=num_extra, min_extra_iou=gate)
    return priors, atss, eatss


@FIXTURE_OK
@given(scene=scenes(max_gts=8), gate=GATES, skip_levels=st.booleans())
def test_matches_the_reference(device, scene, gate, skip_levels, monkeypatch):
    # Level skipping forced on or off: its floor must respect the gate too.
    monkeypatch.setattr(eatss_module, "PRUNE_MIN_GTS", 0 if skip_levels else 10**9)
    priors, nlp = fpn_priors(scene.height, scene.width, device=device)
    s = scene.to(device)
    ours = eatss_assign(priors, nlp, *s.args(), min_extra_iou=gate, chunk_size=3)
    assert_same(ours, ref_eatss_assign(priors, nlp, *s.args(), min_extra_iou=gate))
    dense = eatss_assign(priors, nlp, *s.args(), min_extra_iou=gate, search="dense")
    assert_same(ours, dense)


@PROPERTY
@given(scene=scenes(), gate=GATES)
def test_extras_of_gts_with_atss_positives_clear_the_gate(scene, gate):
    priors, atss, eatss = both(scene, gate)
    for n in range(scene.labels.shape[0]):
        extra = (eatss.gt_inds[n] >= 0) & (atss.gt_inds[n] < 0)
        g = eatss.gt_inds[n][extra]
        had_positives = torch.isin(g, atss.gt_inds[n][atss.gt_inds[n] >= 0])
        iou = aligned_iou(priors[extra], scene.boxes[n][g])
        assert (iou[had_positives] >= gate).all()


@PROPERTY
@given(scene=scenes(), gate=GATES, num_extra=st.integers(1, 4))
def test_p6_holds_with_the_gate(scene, gate, num_extra):
    _, atss, eatss = both(scene, gate, num_extra)
    m = scene.labels.shape[1]
    keep = atss.pos_mask
    assert torch.equal(eatss.gt_inds[keep], atss.gt_inds[keep])  # ⊇ ATSS
    for n in range(scene.labels.shape[0]):
        added = torch.bincount(eatss.gt_inds[n][eatss.gt_inds[n] >= 0], minlength=m)
        before = torch.bincount(atss.gt_inds[n][atss.gt_inds[n] >= 0], minlength=m)
        assert ((added - before) >= 0).all() and ((added - before) <= num_extra).all()
    # The gate never costs a GT its only chance: GTs ATSS left empty are exempt.
    assert (eatss.num_unmatched_gts <= atss.num_unmatched_gts).all()


@PROPERTY
@given(scene=scenes())
def test_empty_gts_are_exempt_from_the_gate(scene):
    priors, nlp = fpn_priors(scene.height, scene.width)
    strict = eatss_assign(priors, nlp, *scene.args(), min_extra_iou=1.0)
    plain = eatss_assign(priors, nlp, *scene.args())
    assert torch.equal(strict.num_unmatched_gts, plain.num_unmatched_gts)


def test_gate_zero_is_spec():
    priors, nlp = fpn_priors(96, 96)
    boxes = torch.tensor([[[10.0, 12.0, 70.0, 60.0], [40.0, 40.0, 52.0, 50.0]]])
    args = (boxes, torch.zeros(1, 2, dtype=torch.int64), torch.ones(1, 2, dtype=torch.bool))
    assert_same(
        eatss_assign(priors, nlp, *args, None, 3, min_extra_iou=0.0),
        eatss_assign(priors, nlp, *args, None, 3),
    )


@pytest.mark.parametrize("gate", [-0.1, 1.5, float("nan")])
def test_gate_outside_0_1_is_refused(gate):
    priors, nlp = fpn_priors(32, 32)
    args = (torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.int64))
    with pytest.raises(ValueError, match="min_extra_iou"):
        eatss_assign(priors, nlp, *args, torch.zeros(1, 0, dtype=torch.bool), None, 3,
                     min_extra_iou=gate)  # fmt: skip

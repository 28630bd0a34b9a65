"""Priors: hand-computed positions, per-level counts, order and caching."""

from __future__ import annotations

import math

import pytest
import torch

from hcral.models.detector import flatten_levels
from hcral.models.priors import PriorGenerator, anchor_shapes, level_priors
from hcral.models.retinanet import OCTAVE_BASE_SCALE, RATIOS, SCALES


def test_level_priors_hand_computed():
    boxes, points = level_priors(2, 3, stride=8, shapes=[(16.0, 16.0)])
    expected_points = torch.tensor(
        [[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [4.0, 12.0], [12.0, 12.0], [20.0, 12.0]]
    )
    torch.testing.assert_close(points, expected_points)
    torch.testing.assert_close(boxes, torch.cat((expected_points - 8, expected_points + 8), 1))


def test_anchor_shapes_keep_area_and_ratio():
    shapes = anchor_shapes(32.0, SCALES, RATIOS)
    assert len(shapes) == 9
    for k, (w, h) in enumerate(shapes):
        ratio, scale = RATIOS[k // 3], SCALES[k % 3]
        assert w * h == pytest.approx((32.0 * scale) ** 2)
        assert h / w == pytest.approx(ratio)


def test_retinanet_priors_counts_and_positions(device):
    gen = PriorGenerator([8, 16, 32, 64, 128], OCTAVE_BASE_SCALE, SCALES, RATIOS)
    sizes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # a 128 × 128 input
    priors = gen(sizes, device)
    assert priors.num_level_priors == [9 * h * w for h, w in sizes]
    r = sum(priors.num_level_priors)
    assert priors.boxes.shape == (r, 4) and priors.points.shape == (r, 2)
    assert priors.boxes.device.type == device.type
    # The 9 anchors of a location share its centre; the first is the 0.5-ratio 4·stride box.
    torch.testing.assert_close(priors.points[:9].cpu(), torch.full((9, 2), 4.0))
    w0, h0 = 32 * math.sqrt(2), 32 / math.sqrt(2)  # ratio h / w = 0.5
    expected = torch.tensor([4 - w0 / 2, 4 - h0 / 2, 4 + w0 / 2, 4 + h0 / 2])
    torch.testing.assert_close(priors.boxes[0].cpu(), expected)
    # The last prior is P7's only location, centre (64, 64), stride 128.
    torch.testing.assert_close(priors.points[-1].cpu(), torch.tensor([64.0, 64.0]))
    level_strides = torch.tensor([8, 16, 32, 64, 128.0]).repeat_interleave(
        torch.tensor(priors.num_level_priors)
    )
    torch.testing.assert_close(priors.strides.cpu(), level_strides)


def test_square_priors_are_anchor_scale_times_stride():
    priors = PriorGenerator([8, 16], base_scale=8.0)([(3, 2), (1, 1)], torch.device("cpu"))
    assert priors.num_level_priors == [6, 1]
    wh = priors.boxes[:, 2:] - priors.boxes[:, :2]
    torch.testing.assert_close(wh, (8.0 * priors.strides)[:, None].expand(-1, 2))
    torch.testing.assert_close(priors.points[1], torch.tensor([12.0, 4.0]))  # row-major


def test_priors_are_cached_per_size():
    gen = PriorGenerator([8], base_scale=8.0)
    a = gen([(4, 4)], torch.device("cpu"))
    assert gen([(4, 4)], torch.device("cpu")) is a
    assert gen([(4, 5)], torch.device("cpu")) is not a


def test_flatten_levels_matches_prior_order():
    # value = 1000·a + 100·k + 10·y + x identifies anchor a, channel k, cell (y, x)
    a_n, k_n, h, w = 2, 3, 2, 4
    a, k, y, x = torch.meshgrid(*(torch.arange(s) for s in (a_n, k_n, h, w)), indexing="ij")
    level = (1000 * a + 100 * k + 10 * y + x).reshape(1, a_n * k_n, h, w).float()
    flat = flatten_levels([level, level[..., :1, :1]], k_n)
    assert flat.shape == (1, h * w * a_n + a_n, k_n)
    prior = (1 * w + 2) * a_n + 1  # cell (y=1, x=2), anchor 1
    torch.testing.assert_close(flat[0, prior], torch.tensor([1012.0, 1112.0, 1212.0]))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="strides"):
        PriorGenerator([8, 0], base_scale=4.0)
    with pytest.raises(ValueError, match="feature_sizes"):
        PriorGenerator([8, 16], base_scale=4.0)([(2, 2)], torch.device("cpu"))

"""Window search over grid-shaped priors: EATSS extra candidates without a dense pass.

The EATSS extra candidates of a GT (SPEC §4 step 3) have their centre inside the GT
and within ``d_max`` of its centre. When the priors of every level sit on a regular
row-major grid — one prior per location, centre of cell ``(i, j)`` at
``(x0 + s·i, y0 + s·j)``, index ``start + j·W + i``, as :mod:`hcral.models.priors`
lays out ATSS/FCOS priors — the cells that can hold such a centre form one window per
(GT, level): the cells of the GT box clipped to the square around the disc. The
windows are enumerated as sparse (GT, prior) pairs in ``O(pairs)`` instead of testing
all ``N·M·R`` distances; EATSS then applies its exact tests to the pairs, so the
windows only need to be a superset (each bound is widened by ``WINDOW_SLACK`` of a
cell, more than float error and the tolerated grid jitter).

Level skipping: when every prior of a level has the same size, no prior of that level
can have an IoU above :func:`iou_bound` with a GT; a level whose bound is under the
GT's rank floor (the score its picks are known to reach, see eatss.py) is not
enumerated at all.

Detecting the grid costs a few synchronising reads, so the result is cached per priors
tensor (weakly, keyed by identity and checked against its version counter): the
detectors pass the same cached priors tensor every step. Priors that are not such a
grid (several anchors per location, irregular points) get ``None`` and EATSS falls back
to the dense test.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from hcral.boxes import box_centers

__all__ = [
    "PriorGrid",
    "detect_grid",
    "clip_to_squares",
    "iou_bound",
    "lower_negated",
    "prior_grid",
    "prior_info",
    "prior_table",
    "window_bounds",
    "window_pairs",
]

# A centre may deviate from its ideal grid position by GRID_TOL of the stride. Window
# bounds are widened by WINDOW_SLACK cells (deviation plus float error, in float64), so
# they are a superset of the exact tests without whole cells of slack.
GRID_TOL = 1e-3
WINDOW_SLACK = 1e-2

_CACHE: WeakIdKeyDictionary = WeakIdKeyDictionary()
_LAST: list = [None]  # (weak ref to the priors, key, grid, table) of the latest lookup


@dataclass(frozen=True)
class PriorGrid:
    """Per-level grid parameters over the non-empty levels (L' of them).

    The window arithmetic works on signed cell bounds ``(x_lo, y_lo, -x_hi, -y_hi)`` so
    that one ``ceil`` gives the first cell and minus the last cell of a window.

    Attributes:
        start: ``(L',)`` int64 index of the level's first prior.
        width: ``(L',)`` int64 cells per row.
        origin: ``(L', 4)`` float64 ``-(x0, y0, -x0, -y0) / stride - WINDOW_SLACK``:
            signed bound ``b`` (px) lies ``b / stride + origin`` cells past cell 0.
        inv_stride: ``(L', 1)`` float64 ``1 / stride``, px⁻¹.
        prior_wh: ``(L', 2)`` float64 width and height shared by every prior of a level,
            or None when a level mixes sizes (or has priors under 1e-3 px²) — then no
            level is ever skipped.
        cell_min, cell_max: ``(L', 4)`` float64 clamp of the signed cell bounds:
            first cell in ``[0, W]``, last cell in ``[-1, W-1]`` (same for rows).
    """

    start: Tensor
    width: Tensor
    origin: Tensor
    inv_stride: Tensor
    cell_min: Tensor
    cell_max: Tensor
    prior_wh: Tensor | None


def _level_grid(centres: Tensor) -> tuple[float, float, float, int, int] | None:
    """``(x0, y0, s, W, H)`` when ``(R_l, 2)`` centres form a row-major grid, else None."""
    count = centres.shape[0]
    x0, y0 = centres[0].tolist()
    xs, ys = centres[:, 0], centres[:, 1]
    if count == 1:
        return (x0, y0, 1.0, 1, 1) if math.isfinite(x0) and math.isfinite(y0) else None
    step_x, step_y = float(xs[1]) - x0, float(ys[1]) - y0
    # The second prior is the next cell of the first row, or of the first column (W = 1).
    stride = step_x if abs(step_y) < 0.5 * abs(step_x) else step_y
    if not stride > 0:  # also False for NaN
        return None
    width = int(((ys - y0).abs() < 0.5 * stride).sum())  # the first row
    if width < 1 or count % width:
        return None
    height = count // width
    idx = torch.arange(count, device=centres.device)
    ideal_x = x0 + stride * (idx % width).to(centres.dtype)
    ideal_y = y0 + stride * idx.div(width, rounding_mode="floor").to(centres.dtype)
    worst = torch.maximum((xs - ideal_x).abs(), (ys - ideal_y).abs()).max()
    if not bool(worst <= GRID_TOL * stride):  # also False for NaN
        return None
    return x0, y0, stride, width, height


def detect_grid(priors: Tensor, num_level_priors: Sequence[int]) -> PriorGrid | None:
    """The :class:`PriorGrid` of ``(R, 4)`` priors laid out level by level, or None."""
    centres = box_centers(priors.float())
    rows = []
    start = 0
    for size in num_level_priors:
        if size:
            level = _level_grid(centres[start : start + size])
            if level is None:
                return None
            rows.append((start, *level))
        start += size
    x0, y0, stride, width, height = (
        torch.tensor([row[k] for row in rows], dtype=torch.float64) for k in range(1, 6)
    )
    zero = torch.zeros_like(x0)
    grid = PriorGrid(
        start=torch.tensor([row[0] for row in rows], dtype=torch.int64),
        width=width.long(),
        origin=torch.stack((-x0, -y0, x0, y0), -1) / stride[:, None] - WINDOW_SLACK,
        inv_stride=1 / stride[:, None],
        cell_min=torch.stack((zero, zero, 1 - width, 1 - height), -1),
        cell_max=torch.stack((width, height, zero + 1, zero + 1), -1),
        prior_wh=_level_sizes(priors, num_level_priors),
    )
    return PriorGrid(**{k: _to(v, priors.device) for k, v in vars(grid).items()})


def lower_negated(points: Tensor) -> Tensor:
    """``(B, 4)`` xyxy boxes (or ``(B, 2)`` points, doubled) as ``(-x1, -y1, x2, y2)``.

    In this form one ``minimum`` intersects two boxes, one subtraction gives a point's
    four margins inside a box, and every value is the negation-exact image of the xyxy
    arithmetic (``-a + b`` rounds as ``b - a``), so the results are bit-identical.
    """
    if points.shape[-1] == 2:
        return torch.cat((-points, points), -1)
    return torch.cat((-points[:, :2], points[:, 2:]), -1)


def prior_table(priors: Tensor, centres: Tensor) -> Tensor:
    """``(R, 9)`` float32 rows of ``(R, 4)`` valid priors with their ``(R, 2)`` centres:
    :func:`lower_negated` box, the same of the centre ``(-cx, -cy, cx, cy)``, area ``w·h``."""
    wh = priors[:, 2:] - priors[:, :2]
    area = wh[:, :1] * wh[:, 1:]
    return torch.cat((lower_negated(priors), lower_negated(centres), area), 1)


def window_bounds(boxes: Tensor, centres: Tensor, radius: Tensor) -> Tensor:
    """``(B, 4)`` :func:`lower_negated` rectangles: ``(B, 4)`` xyxy boxes clipped to the
    squares of half-side ``(B,)`` radius around ``(B, 2)`` centres (window_pairs' input)."""
    return clip_to_squares(lower_negated(boxes), lower_negated(centres), radius[:, None])


def clip_to_squares(neg_boxes: Tensor, neg_centres: Tensor, half_side: Tensor) -> Tensor:
    """:func:`window_bounds` on inputs already :func:`lower_negated`, ``(B, 4)`` each, and
    ``(B, 1)`` half-sides."""
    return torch.minimum(neg_boxes, neg_centres + half_side)


def _to(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device)


def _level_sizes(priors: Tensor, num_level_priors: Sequence[int]) -> Tensor | None:
    """``(L', 2)`` float64 size of the priors of each non-empty level, or None."""
    sizes = []
    for level in priors.float().split(list(num_level_priors)):
        if len(level):
            wh = level[:, 2:] - level[:, :2]
            if not bool((wh == wh[0]).all()) or not float(wh[0, 0] * wh[0, 1]) >= 1e-3:
                return None
            sizes.append(wh[0].tolist())
    return torch.tensor(sizes, dtype=torch.float64)


def prior_info(priors: Tensor, num_level_priors: Sequence[int]) -> tuple[PriorGrid | None, Tensor]:
    """:func:`detect_grid` and :func:`prior_table` of ``priors``, cached per priors tensor
    (identity, version and levels)."""
    key = (priors._version, list(num_level_priors))
    last = _LAST[0]
    if last is not None and last[0]() is priors and last[1] == key:
        return last[2:]  # the common case: the detector's cached priors, step after step
    hit = _CACHE.get(priors)
    if hit is None or hit[0] != key:
        boxes = priors.float()
        table = prior_table(boxes, box_centers(boxes))
        hit = (key, detect_grid(priors, num_level_priors), table)
        _CACHE[priors] = hit
    _LAST[0] = (weakref.ref(priors), *hit)
    return hit[1:]


def prior_grid(priors: Tensor, num_level_priors: Sequence[int]) -> PriorGrid | None:
    """:func:`detect_grid`, cached (:func:`prior_info`)."""
    return prior_info(priors, num_level_priors)[0]


def iou_bound(grid: PriorGrid, boxes: Tensor) -> Tensor:
    """``(B, L')`` float64 largest IoU a prior of each level can have with each box.

    Over every placement the intersection is at most ``min(w)·min(h)``; the union is then
    at least the two areas less that. Needs ``grid.prior_wh``.
    """
    wh = (boxes[:, 2:] - boxes[:, :2]).double()  # (B, 2)
    inter = torch.minimum(wh[:, None], grid.prior_wh).prod(-1)  # (B, L')
    return inter / (wh.prod(-1)[:, None] + grid.prior_wh.prod(-1) - inter)


def window_pairs(
    grid: PriorGrid,
    bounds: Tensor,
    per_image: int,
    num_priors: int,
    boxes: Tensor | None = None,
    rank_floor: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Cells of every (box, level) window: the priors whose centre may lie in the box's
    rectangle ``bounds`` (a superset: each side is widened by ``WINDOW_SLACK`` cells) and
    — given ``rank_floor`` — whose IoU with the box may reach it (levels with a lower
    :func:`iou_bound` are skipped).

    Args:
        grid: the priors' grid.
        bounds: ``(N·M, 4)`` float32 rectangles as ``(-x_lo, -y_lo, x_hi, y_hi)`` px
            (:func:`lower_negated`, :func:`window_bounds`), finite, image-major.
        per_image: M, boxes per image.
        num_priors: R.
        boxes: ``(N·M, 4)`` float32 xyxy boxes, needed with ``rank_floor`` only.
        rank_floor: optional ``(N·M,)`` float32 score each box's picks reach (``-inf``:
            skip nothing); needs ``grid.prior_wh``.
    Returns:
        ``(P,)`` int64 each: box index ``n·M + g``, prior index ``r`` and flat prior
        index ``n·R + r``; box-major, each box's priors in ascending order.
    """
    # (B, L', 4): first column, first row, -last column, -last row (the ceiling of the
    # signed bounds (x_lo, y_lo, -x_hi, -y_hi) = -bounds in cells, less the slack),
    # clamped in float so that huge finite coordinates convert safely.
    cells = torch.addcmul(grid.origin, bounds[:, None], grid.inv_stride, value=-1).ceil_()
    cells = torch.clamp(cells, grid.cell_min, grid.cell_max).long()
    # -(cells per row/column) = first + (-last) - 1, kept negative: the product is the same.
    neg_span = (cells[..., :2] + cells[..., 2:]).sub_(1).clamp_(max=0)  # (B, L', 2)
    count = neg_span.prod(-1)  # (B, L') cells per window
    if rank_floor is not None:
        # Float32 IoUs may exceed the exact bound by a few ulps: keep a margin.
        hopeless = iou_bound(grid, boxes) * (1 + 1e-4) + 1e-6 < rank_floor[:, None]
        count = count.masked_fill(hopeless, 0)
    count = count.view(-1)  # (B·L',)
    # Cell (row, col) of a window is prior base + row·W + col, and its rank in the window
    # is offset = row·cols + col, so prior = base + offset + row·(W - cols).
    neg_cols = neg_span[..., 0]
    base = grid.start + cells[..., 1] * grid.width + cells[..., 0]  # (B, L')
    first = count.cumsum(0) - count  # the first pair of each window
    window = torch.repeat_interleave(count)  # (P,) window b·L' + l of each cell
    table = torch.stack((base.view(-1), (grid.width + neg_cols).view(-1), neg_cols.view(-1), first))
    base, skip, neg_cols, first = table.index_select(1, window)  # (4, P)
    offset = torch.arange(window.numel(), device=bounds.device) - first
    # row = offset // cols = -trunc(offset / -cols), as offset ≥ 0 and cols > 0.
    prior = base + offset - offset.div(neg_cols, rounding_mode="trunc") * skip
    levels = neg_span.shape[1]
    box = window.div(levels, rounding_mode="floor")
    flat = window.div(levels * per_image, rounding_mode="floor") * num_priors + prior
    return box, prior, flat

"""Pure box math for xyxy boxes.

Every function broadcasts over leading dimensions: ``aligned_*`` functions take two
tensors of shape ``(..., 4)`` that broadcast against each other and return ``(...)``;
the pairwise wrappers (``box_iou``, ``generalized_box_iou``, ...) take ``(M, 4)`` and
``(K, 4)`` and return ``(M, K)``.

Degenerate boxes are defined behaviour, never NaN:

* a box with ``x2 < x1`` or ``y2 < y1`` is treated as the zero-width box at its centre
  (zero area; the enclosing box then contains its centre, so ρ²/c² stays ≤ 1);
* IoU of two zero-area boxes is 0 (intersection 0 over a union clamped at ``EPS``);
* the enclosing box of two points is a point: its area and diagonal are clamped at
  ``EPS`` so GIoU/DIoU penalties stay finite (two coincident points have IoU 0 and
  GIoU -1: a zero-area prediction is never rewarded).

Half precision inputs (fp16/bf16) are computed in float32 and returned as float32,
because box areas in pixels overflow fp16 (65504) for boxes above ~256 px.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EPS = 1e-7
ASPECT_EPS = 1e-4  # smallest side (px) CIoU's aspect term looks at

__all__ = [
    "EPS",
    "aligned_ciou",
    "aligned_diou",
    "aligned_eiou",
    "aligned_giou",
    "aligned_iou",
    "aligned_iou_and_centre_ratio",
    "box_area",
    "box_centers",
    "box_iou",
    "centre_distance_sq",
    "clip_boxes",
    "complete_box_iou",
    "cxcywh_to_xyxy",
    "decode_deltas",
    "decode_ltrb",
    "distance_box_iou",
    "efficient_box_iou",
    "enclosing_box",
    "enclosing_diag_sq",
    "encode_deltas",
    "encode_ltrb",
    "generalized_box_iou",
    "pairwise_centre_distance",
    "xyxy_to_cxcywh",
]

# Largest log-ratio a decoded width/height may take (same bound as torchvision/detectron2).
DELTA_CLAMP = math.log(1000.0 / 16)


def _upcast(t: Tensor) -> Tensor:
    """Half precision box math overflows (areas > 65504 px²); work in float32."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.float()
    if not t.is_floating_point():
        return t.float()
    return t


def _check_boxes(t: Tensor, name: str) -> None:
    if t.shape[-1:] != (4,):
        raise ValueError(f"{name} must have shape (..., 4), got {tuple(t.shape)}")


def _wh(boxes: Tensor) -> tuple[Tensor, Tensor]:
    w = (boxes[..., 2] - boxes[..., 0]).clamp(min=0)
    h = (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    return w, h


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes ``(..., 4) -> (...)``; inverted boxes have area 0."""
    _check_boxes(boxes, "boxes")
    w, h = _wh(_upcast(boxes))
    return w * h


def box_centers(boxes: Tensor) -> Tensor:
    """Centres ``(..., 4) -> (..., 2)`` as (cx, cy)."""
    _check_boxes(boxes, "boxes")
    boxes = _upcast(boxes)
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` xyxy -> cx, cy, w, h (w, h may be negative for inverted boxes)."""
    _check_boxes(boxes, "boxes")
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` cx, cy, w, h -> xyxy."""
    _check_boxes(boxes, "boxes")
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def _collapse_inverted(boxes: Tensor) -> Tensor:
    """Map a box with ``x2 < x1`` (or ``y2 < y1``) to the zero-width box at its centre.

    Without this the enclosing box is built from raw corners that need not contain an
    inverted box's centre, so ρ²/c² (DIoU, CIoU, EIoU, Wise-IoU, HCRAR's centre term) is
    unbounded. Valid boxes pass through bit for bit: their corners bracket the centre.
    """
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    return torch.cat(
        (torch.minimum(boxes[..., :2], centre), torch.maximum(boxes[..., 2:], centre)), dim=-1
    )


def _prep(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Check, upcast and collapse inverted boxes once; the ``_*`` helpers below expect this."""
    _check_boxes(a, "boxes1")
    _check_boxes(b, "boxes2")
    return _collapse_inverted(_upcast(a)), _collapse_inverted(_upcast(b))


# The helpers below take boxes already passed through _prep (valid: x1 <= x2, y1 <= y2),
# so each public function does the checks and the collapse once.
def _size(boxes: Tensor) -> Tensor:
    return boxes[..., 2:] - boxes[..., :2]  # (..., 2) w, h; >= 0 after _prep


def _iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union of prepared boxes."""
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(
        min=0
    )
    inter = wh[..., 0] * wh[..., 1]
    sa, sb = _size(a), _size(b)
    union = sa[..., 0] * sa[..., 1] + sb[..., 0] * sb[..., 1] - inter
    return inter / union.clamp(min=EPS), union


def _enclosing_size(a: Tensor, b: Tensor) -> Tensor:
    """(..., 2) width and height of the smallest enclosing box of prepared boxes."""
    return torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])


def _centre_ratio(a: Tensor, b: Tensor, enc_wh: Tensor) -> Tensor:
    """ρ²/c²: squared centre distance over the squared enclosing diagonal."""
    rho2 = (((a[..., :2] + a[..., 2:]) - (b[..., :2] + b[..., 2:])) ** 2).sum(-1) / 4
    return rho2 / (enc_wh**2).sum(-1).clamp(min=EPS)


def aligned_iou(boxes1: Tensor, boxes2: Tensor, *, assume_valid: bool = False) -> Tensor:
    """IoU of corresponding boxes, ``(..., 4), (..., 4) -> (...)`` in [0, 1].

    ``assume_valid``: the caller guarantees ``x1 ≤ x2`` and ``y1 ≤ y2`` for every box, so
    the collapse of inverted boxes (a no-op on valid boxes) is skipped: same values,
    fewer kernels (the assigners' hot path).
    """
    if assume_valid:
        _check_boxes(boxes1, "boxes1")
        _check_boxes(boxes2, "boxes2")
        return _iou(_upcast(boxes1), _upcast(boxes2))[0]
    return _iou(*_prep(boxes1, boxes2))[0]


def aligned_iou_and_centre_ratio(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and ``ρ²/c²`` of corresponding boxes from one preparation, ``(...), (...)``.

    The same values as :func:`aligned_iou` and ``centre_distance_sq / enclosing_diag_sq``,
    for callers that need both (HCRAR's weights) without preparing the boxes twice.
    """
    a, b = _prep(boxes1, boxes2)
    return _iou(a, b)[0], _centre_ratio(a, b, _enclosing_size(a, b))


def enclosing_box(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Smallest box enclosing both, ``(..., 4) -> (..., 4)``."""
    a, b = _prep(boxes1, boxes2)
    return torch.cat(
        (torch.minimum(a[..., :2], b[..., :2]), torch.maximum(a[..., 2:], b[..., 2:])), -1
    )


def enclosing_diag_sq(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Squared diagonal ``c²`` of the enclosing box, clamped at EPS, ``(...)`` px²."""
    return (_enclosing_size(*_prep(boxes1, boxes2)) ** 2).sum(-1).clamp(min=EPS)


def centre_distance_sq(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Squared distance ``ρ²`` between box centres, ``(...)`` px²."""
    a, b = _prep(boxes1, boxes2)
    return ((box_centers(a) - box_centers(b)) ** 2).sum(-1)


def aligned_giou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU (Rezatofighi et al. 2019), ``(...)`` in [-1, 1].

    ``GIoU = IoU - |C \\ (A ∪ B)| / |C|`` with C the smallest enclosing box.
    """
    a, b = _prep(boxes1, boxes2)
    iou, union = _iou(a, b)
    enc = _enclosing_size(a, b)
    area_c = (enc[..., 0] * enc[..., 1]).clamp(min=EPS)
    return iou - (area_c - union).clamp(min=0) / area_c


def aligned_diou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Distance IoU (Zheng et al. 2020): ``IoU - ρ²/c²``, ``(...)`` in [-1, 1]."""
    a, b = _prep(boxes1, boxes2)
    return _iou(a, b)[0] - _centre_ratio(a, b, _enclosing_size(a, b))


def aligned_ciou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Complete IoU (Zheng et al. 2020): ``DIoU - α v``, ``(...)``.

    ``v = 4/π² (atan(w2/h2) - atan(w1/h1))²`` measures aspect-ratio mismatch and
    ``α = v / (1 - IoU + v)`` is a detached trade-off weight, as in the paper.
    ``boxes2`` is the target.
    """
    a, b = _prep(boxes1, boxes2)
    iou = _iou(a, b)[0]
    # The aspect angle of a (near-)point box is undefined and d atan(w/h)/dw = 1/h
    # explodes (1/EPS for a point: inf once cast back to fp16), so sides are floored at
    # ASPECT_EPS: no effect on boxes of 1e-4 px and more, zero aspect gradient below.
    s1, s2 = _size(a).clamp(min=ASPECT_EPS), _size(b).clamp(min=ASPECT_EPS)
    v = (4 / math.pi**2) * (
        torch.atan(s2[..., 0] / s2[..., 1]) - torch.atan(s1[..., 0] / s1[..., 1])
    ) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v).clamp(min=EPS)
    return iou - _centre_ratio(a, b, _enclosing_size(a, b)) - alpha * v


def aligned_eiou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Efficient IoU (Zhang et al. 2022, "Focal and Efficient IOU Loss").

    ``EIoU = IoU - ρ²/c² - (w1 - w2)²/Cw² - (h1 - h2)²/Ch²`` where Cw, Ch are the
    width and height of the enclosing box, so ``1 - EIoU`` is the EIoU loss. This is
    the width/height form the HCRAL paper cites, not the "Extended IoU" of some libraries.
    """
    a, b = _prep(boxes1, boxes2)
    enc = _enclosing_size(a, b)
    d = ((_size(a) - _size(b)) ** 2 / (enc**2).clamp(min=EPS)).sum(-1)
    return _iou(a, b)[0] - _centre_ratio(a, b, enc) - d


def _pairwise(fn, boxes1: Tensor, boxes2: Tensor) -> Tensor:
    if boxes1.dim() != 2 or boxes2.dim() != 2:
        raise ValueError(
            f"pairwise box ops take (M, 4) and (K, 4), got {tuple(boxes1.shape)} "
            f"and {tuple(boxes2.shape)}"
        )
    return fn(boxes1[:, None, :], boxes2[None, :, :])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU ``(M, 4), (K, 4) -> (M, K)``."""
    return _pairwise(aligned_iou, boxes1, boxes2)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise GIoU ``(M, 4), (K, 4) -> (M, K)``."""
    return _pairwise(aligned_giou, boxes1, boxes2)


def distance_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise DIoU ``(M, 4), (K, 4) -> (M, K)``."""
    return _pairwise(aligned_diou, boxes1, boxes2)


def complete_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise CIoU ``(M, 4), (K, 4) -> (M, K)`` (``boxes2`` as targets)."""
    return _pairwise(aligned_ciou, boxes1, boxes2)


def efficient_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise EIoU ``(M, 4), (K, 4) -> (M, K)``."""
    return _pairwise(aligned_eiou, boxes1, boxes2)


def pairwise_centre_distance(points1: Tensor, points2: Tensor) -> Tensor:
    """Euclidean distance between points ``(M, 2), (K, 2) -> (M, K)`` in px."""
    return torch.cdist(_upcast(points1), _upcast(points2))


def encode_deltas(
    anchors: Tensor, targets: Tensor, weights: tuple[float, float, float, float] = (1, 1, 1, 1)
) -> Tensor:
    """RetinaNet/Faster R-CNN box coding ``(..., 4), (..., 4) -> (..., 4)``.

    ``dx = wx (tx - ax) / aw``, ``dw = ww log(tw / aw)``. Widths are clamped at EPS so a
    zero-size target gives a large but finite ``dw``.
    """
    a, t = _prep(anchors, targets)
    a_c, t_c = box_centers(a), box_centers(t)
    aw, ah = (s.clamp(min=EPS) for s in _wh(a))
    tw, th = (s.clamp(min=EPS) for s in _wh(t))
    wx, wy, ww, wh = weights
    return torch.stack(
        (
            wx * (t_c[..., 0] - a_c[..., 0]) / aw,
            wy * (t_c[..., 1] - a_c[..., 1]) / ah,
            ww * torch.log(tw / aw),
            wh * torch.log(th / ah),
        ),
        dim=-1,
    )


def decode_deltas(
    anchors: Tensor,
    deltas: Tensor,
    weights: tuple[float, float, float, float] = (1, 1, 1, 1),
    clamp: float = DELTA_CLAMP,
) -> Tensor:
    """Inverse of :func:`encode_deltas`; ``dw, dh`` are clamped to ``clamp`` so exp stays finite."""
    _check_boxes(anchors, "anchors")
    _check_boxes(deltas, "deltas")
    a, d = _upcast(anchors), _upcast(deltas)
    a_c = box_centers(a)
    aw, ah = _wh(a)
    wx, wy, ww, wh = weights
    dx, dy = d[..., 0] / wx, d[..., 1] / wy
    dw = (d[..., 2] / ww).clamp(max=clamp)
    dh = (d[..., 3] / wh).clamp(max=clamp)
    cx, cy = a_c[..., 0] + dx * aw, a_c[..., 1] + dy * ah
    w, h = aw * torch.exp(dw), ah * torch.exp(dh)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def encode_ltrb(points: Tensor, targets: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """FCOS coding: distances from a point to the four sides, divided by ``scale``.

    Args:
        points: ``(..., 2)`` (x, y) in px.
        targets: ``(..., 4)`` xyxy boxes.
        scale: broadcastable to ``(...)``, usually the level stride.
    Returns:
        ``(..., 4)`` as (left, top, right, bottom); negative when the point is outside.
    """
    _check_boxes(targets, "targets")
    p, t = _upcast(points), _upcast(targets)
    scale = torch.as_tensor(scale, dtype=p.dtype, device=p.device)
    d = torch.stack(
        (
            p[..., 0] - t[..., 0],
            p[..., 1] - t[..., 1],
            t[..., 2] - p[..., 0],
            t[..., 3] - p[..., 1],
        ),
        dim=-1,
    )
    return d / scale[..., None] if scale.dim() else d / scale


def decode_ltrb(points: Tensor, distances: Tensor, scale: Tensor | float = 1.0) -> Tensor:
    """Inverse of :func:`encode_ltrb`: ``(..., 2), (..., 4) -> (..., 4)`` xyxy."""
    p, d = _upcast(points), _upcast(distances)
    scale = torch.as_tensor(scale, dtype=p.dtype, device=p.device)
    d = d * scale[..., None] if scale.dim() else d * scale
    return torch.stack(
        (
            p[..., 0] - d[..., 0],
            p[..., 1] - d[..., 1],
            p[..., 0] + d[..., 2],
            p[..., 1] + d[..., 3],
        ),
        dim=-1,
    )


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip xyxy boxes to an image of ``size = (height, width)``."""
    _check_boxes(boxes, "boxes")
    h, w = size
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)

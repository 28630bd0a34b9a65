"""Brute-force assigners (plain per-image, per-GT Python loops) and FPN priors.

Used only by the tests and benchmarks/bench_assigners.py. They implement the rules
written in the docstrings of src/hcral/assigners/*.py one GT and one prior at a time,
sharing nothing with the vectorised code except ``boxes.py``. Per-prior IoUs and
centre distances are computed with the same elementwise float32 tensor operations as
the vectorised code, so the two must agree bit for bit; the ATSS threshold is decided
in exact rational arithmetic, the ground truth the float64 statistics approximate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

import torch
from torch import Tensor

from hcral.assigners.result import AssignResult
from hcral.boxes import aligned_iou, box_area, box_centers

STRIDES = (8, 16, 32, 64, 128)
INSIDE_EPS = 0.01
CROWD_IOF_THR = 0.5
RANK_EPS = 1e-6


def fpn_priors(
    height: int,
    width: int,
    anchors: str = "atss",
    strides: Sequence[int] = STRIDES,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, list[int]]:
    """FPN P3–P7 priors of an image: ``(R, 4)`` xyxy and the priors per level.

    ``anchors="atss"``: one square of side 8·stride per location; ``"retinanet"``: 9 per
    location (sizes 4·stride·2^(i/3), i = 0..2, aspect ratios h/w ∈ {0.5, 1, 2}).
    Locations are row-major with centres ``((x + 0.5)·stride, (y + 0.5)·stride)``.
    """
    if anchors == "atss":
        shapes = [(8.0, 8.0)]
    elif anchors == "retinanet":
        shapes = [
            (4 * 2 ** (i / 3) / math.sqrt(ratio), 4 * 2 ** (i / 3) * math.sqrt(ratio))
            for ratio in (0.5, 1.0, 2.0)
            for i in range(3)
        ]
    else:
        raise ValueError(f"anchors must be 'atss' or 'retinanet', got {anchors!r}")
    levels = []
    for s in strides:
        ys, xs = torch.meshgrid(
            (torch.arange(math.ceil(height / s)) + 0.5) * s,
            (torch.arange(math.ceil(width / s)) + 0.5) * s,
            indexing="ij",
        )
        centres = torch.stack((xs.flatten(), ys.flatten()), dim=-1)  # (HW, 2)
        half = torch.tensor(shapes) * s / 2  # (A, 2)
        boxes = torch.cat((centres[:, None] - half, centres[:, None] + half), dim=-1)
        levels.append(boxes.reshape(-1, 4))
    return torch.cat(levels).to(device), [len(b) for b in levels]


def _usable(box: Tensor) -> bool:
    """Finite coordinates, positive width and height."""
    x1, y1, x2, y2 = box.tolist()
    return all(math.isfinite(v) for v in (x1, y1, x2, y2)) and x2 > x1 and y2 > y1


def _active(boxes: Tensor, mask: Tensor, crowd: Tensor | None, n: int, m: int) -> bool:
    """A GT may take positives: valid, not crowd, usable."""
    is_crowd = crowd is not None and bool(crowd[n, m])
    return bool(mask[n, m]) and not is_crowd and _usable(boxes[n, m])


def _distances_sq(priors: Tensor, box: Tensor) -> Tensor:
    """``(R,)`` squared distance of the prior centres to the centre of one box."""
    pc, gc = box_centers(priors), box_centers(box)
    dx = pc[:, 0] - gc[0]
    dy = pc[:, 1] - gc[1]
    return dx * dx + dy * dy


def _inside(priors: Tensor, box: Tensor) -> list[bool]:
    pc = box_centers(priors)
    return (
        (pc[:, 0] - box[0] > INSIDE_EPS)
        & (pc[:, 1] - box[1] > INSIDE_EPS)
        & (box[2] - pc[:, 0] > INSIDE_EPS)
        & (box[3] - pc[:, 1] > INSIDE_EPS)
    ).tolist()


def _above_mean_plus_std(value: float, values: list[float]) -> bool:
    """Exactly: ``value ≥ mean + std`` (unbiased std; 0 for one value)."""
    xs = [Fraction(v) for v in values]
    mean = sum(xs) / len(xs)
    var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else Fraction(0)
    gap = Fraction(value) - mean
    return gap >= 0 and gap * gap >= var


def _crowd_ignored(priors: Tensor, boxes: Tensor, crowd: Tensor | None, mask: Tensor, n: int):
    """Per prior: covered (IoF ≥ 0.5 of the prior's area) by a crowd box of image n."""
    r = priors.shape[0]
    out = [False] * r
    if crowd is None:
        return out
    area = box_area(priors).clamp(min=1e-7)
    for m in range(boxes.shape[1]):
        cb = boxes[n, m]
        if not (mask[n, m] and crowd[n, m] and _usable(cb)):
            continue
        lt = torch.maximum(priors[:, :2], cb[:2])
        rb = torch.minimum(priors[:, 2:], cb[2:])
        iof = (box_area(torch.cat((lt, rb), dim=-1)) / area).tolist()
        out = [o or f >= CROWD_IOF_THR for o, f in zip(out, iof)]
    return out


def _result(
    priors: Tensor,
    boxes: Tensor,
    labels: Tensor,
    mask: Tensor,
    crowd: Tensor | None,
    num_classes: int,
    assigned: list[list[tuple[int, float]]],
    ignored: list[list[bool]],
) -> AssignResult:
    """Build the AssignResult from per-image lists of (gt or -1, iou) per prior."""
    n_img, m_gt = labels.shape
    r = priors.shape[0]
    gt_inds = torch.full((n_img, r), -1, dtype=torch.int64)
    out_labels = torch.full((n_img, r), num_classes, dtype=torch.int64)
    ious = torch.zeros(n_img, r)
    unmatched = torch.zeros(n_img, dtype=torch.int64)
    for n in range(n_img):
        crowd_ign = _crowd_ignored(priors, boxes, crowd, mask, n)
        for i, (g, iou) in enumerate(assigned[n]):
            if g >= 0:
                gt_inds[n, i], out_labels[n, i], ious[n, i] = g, int(labels[n, g]), iou
            elif ignored[n][i] or crowd_ign[i]:
                out_labels[n, i] = -1
        hit = {g for g, _ in assigned[n]}
        for m in range(m_gt):
            counted = bool(mask[n, m]) and not (crowd is not None and bool(crowd[n, m]))
            unmatched[n] += int(counted and m not in hit)
    dev = priors.device
    return AssignResult(gt_inds.to(dev), out_labels.to(dev), ious.to(dev), unmatched.to(dev))


def ref_max_iou_assign(
    priors, gt_boxes, gt_labels, gt_mask, gt_crowd, num_classes,
    pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0,
) -> AssignResult:  # fmt: skip
    """RetinaNet max-IoU assignment, one GT and one prior at a time."""
    priors, boxes = priors.float(), gt_boxes.float()
    n_img, m_gt = gt_labels.shape
    r = priors.shape[0]
    assigned, ignored = [], []
    for n in range(n_img):
        act = [m for m in range(m_gt) if _active(boxes, gt_mask, gt_crowd, n, m)]
        ious = {m: aligned_iou(priors, boxes[n, m][None]).tolist() for m in act}
        gt_max = {m: max(ious[m]) for m in act}
        out, ign = [], []
        for i in range(r):
            low_q = [
                (ious[m][i], -m)
                for m in act
                if gt_max[m] > 0 and gt_max[m] >= min_pos_iou and ious[m][i] == gt_max[m]
            ]
            best = max(((ious[m][i], -m) for m in act), default=(-math.inf, 1))
            if low_q:
                iou, neg_m = max(low_q)
                out.append((-neg_m, iou))
            elif best[0] >= pos_iou_thr:
                out.append((-best[1], best[0]))
            else:
                out.append((-1, 0.0))
            ign.append(not low_q and neg_iou_thr <= best[0] < pos_iou_thr)
        assigned.append(out)
        ignored.append(ign)
    return _result(priors, boxes, gt_labels, gt_mask, gt_crowd, num_classes, assigned, ignored)


def _atss_image(priors, num_level_priors, boxes, mask, crowd, n, topk):
    """ATSS of image n: per-prior (gt, iou) and per-GT (distances, inside, candidates)."""
    r = priors.shape[0]
    claims: dict[int, list[tuple[float, int]]] = {}
    per_gt = {}
    for m in range(boxes.shape[1]):
        if not _active(boxes, mask, crowd, n, m):
            continue
        dist = _distances_sq(priors, boxes[n, m])
        d = dist.tolist()
        iou = aligned_iou(priors, boxes[n, m][None]).tolist()
        inside = _inside(priors, boxes[n, m])
        cands, start = [], 0
        for size in num_level_priors:
            level = sorted(range(start, start + size), key=lambda i: (d[i], i))
            cands += level[:topk]
            start += size
        cand_ious = [iou[i] for i in cands]
        for i in cands:
            if inside[i] and _above_mean_plus_std(iou[i], cand_ious):
                claims.setdefault(i, []).append((iou[i], -m))
        per_gt[m] = (dist, inside, cands)
    out = [(-1, 0.0)] * r
    for i, cl in claims.items():
        iou, neg_m = max(cl)
        out[i] = (-neg_m, iou)
    return out, per_gt


def ref_atss_assign(
    priors, num_level_priors, gt_boxes, gt_labels, gt_mask, gt_crowd, num_classes, topk=9
) -> AssignResult:
    """ATSS, one GT at a time (candidates by a Python sort on (distance, index))."""
    priors, boxes = priors.float(), gt_boxes.float()
    n_img = gt_labels.shape[0]
    assigned = [
        _atss_image(priors, num_level_priors, boxes, gt_mask, gt_crowd, n, topk)[0]
        for n in range(n_img)
    ]
    ignored = [[False] * priors.shape[0] for _ in range(n_img)]
    return _result(priors, boxes, gt_labels, gt_mask, gt_crowd, num_classes, assigned, ignored)


def _eatss_extras(priors, ranked, boxes, n, atss, per_gt, num_extra, min_extra_iou=0.0):
    """Extra (gt, iou) per prior of image n, SPEC §4 steps 2-4, one GT at a time."""
    claims: dict[int, list[tuple[float, int]]] = {}
    for m, (dist, inside, cands) in per_gt.items():
        own = [i for i, (g, _) in enumerate(atss) if g == m]
        pool = own or [i for i in cands if inside[i]]
        if not pool:
            continue
        d_sq = dist.tolist()  # squared distances: compared squared, rooted for the rank
        d_max_sq = dist[max(pool, key=lambda i: d_sq[i])]
        free = [
            i
            for i in range(len(atss))
            if atss[i][0] < 0 and inside[i] and d_sq[i] <= d_max_sq.item()
        ]
        if own and min_extra_iou > 0:  # the quality gate spares GTs ATSS left empty
            gate = aligned_iou(priors[free], boxes[n, m][None]) >= min_extra_iou
            free = [i for i, ok in zip(free, gate.tolist()) if ok]
        if not free:
            continue
        iou = torch.nan_to_num(aligned_iou(ranked[free], boxes[n, m][None]), nan=0.0)
        score = (iou * (1 - dist[free].sqrt() / (d_max_sq.sqrt() + RANK_EPS))).tolist()
        best = sorted(zip(free, score), key=lambda t: (-t[1], t[0]))[:num_extra]
        for i, s in best:
            claims.setdefault(i, []).append((not own, s, -m))
    # Contested extras: a GT ATSS left empty first, then the higher score, then the lower index.
    return {i: -max(cl)[2] for i, cl in claims.items()}


def ref_eatss_assign(
    priors, num_level_priors, gt_boxes, gt_labels, gt_mask, gt_crowd, num_classes,
    topk=9, num_extra=3, pred_boxes=None, min_extra_iou=0.0,
) -> AssignResult:  # fmt: skip
    """EATSS (SPEC §4), one GT at a time on top of the brute-force ATSS."""
    priors, boxes = priors.float(), gt_boxes.float()
    n_img = gt_labels.shape[0]
    assigned = []
    for n in range(n_img):
        atss, per_gt = _atss_image(priors, num_level_priors, boxes, gt_mask, gt_crowd, n, topk)
        ranked = priors if pred_boxes is None else pred_boxes[n].float()
        extra = _eatss_extras(priors, ranked, boxes, n, atss, per_gt, num_extra, min_extra_iou)
        for i, m in extra.items():
            atss[i] = (m, aligned_iou(priors[i], boxes[n, m]).item())
        assigned.append(atss)
    ignored = [[False] * priors.shape[0] for _ in range(n_img)]
    return _result(priors, boxes, gt_labels, gt_mask, gt_crowd, num_classes, assigned, ignored)

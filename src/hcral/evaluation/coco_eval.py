"""COCO box AP with pycocotools, quiet by default and safe on empty results.

Metrics are **percentages (0-100)**, like the paper's tables (RetinaNet R-50: 36.5 AP).
A metric whose area range holds no ground truth (e.g. APs on a set without small
objects) is undefined and reported as ``nan``, as detectron2 does; pycocotools' ``-1``
would otherwise average into sweeps as a real number.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")
_DET_KEYS = ("image_id", "category_id", "bbox", "score")


@contextlib.contextmanager
def _quiet(verbose: bool):
    """pycocotools prints progress on every call; keep it unless asked."""
    if verbose:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def load_coco(coco_gt: COCO | str | Path, verbose: bool = False) -> COCO:
    """A pycocotools ``COCO`` from an object or an annotation json path.

    Ground-truth annotations missing ``area`` or ``iscrowd`` get ``w * h`` and ``0``:
    COCOeval needs both and hand-made or converted files often lack them.
    """
    if isinstance(coco_gt, COCO):
        coco = coco_gt
    else:
        path = Path(coco_gt)
        if not path.is_file():
            raise ValueError(f"coco_gt: annotation file {str(path)!r} does not exist")
        with _quiet(verbose):
            coco = COCO(str(path))
    for ann in coco.dataset.get("annotations", []):
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return coco


def check_detections(detections: Sequence[dict[str, Any]], coco: COCO) -> None:
    """Raise ValueError naming the first malformed detection instead of an assert deep
    inside pycocotools."""
    image_ids, cat_ids = set(coco.getImgIds()), set(coco.getCatIds())
    for i, det in enumerate(detections):
        missing = [k for k in _DET_KEYS if k not in det]
        if missing:
            raise ValueError(f"detections[{i}]: missing field(s) {missing}")
        if len(det["bbox"]) != 4:
            raise ValueError(f"detections[{i}].bbox: expected [x, y, w, h], got {det['bbox']}")
        if det["image_id"] not in image_ids:
            raise ValueError(f"detections[{i}].image_id: {det['image_id']} is not in coco_gt")
        if det["category_id"] not in cat_ids:
            raise ValueError(f"detections[{i}].category_id: {det['category_id']} is not in coco_gt")


def _per_class_ap(coco_eval: COCOeval, coco: COCO) -> dict[str, float]:
    """AP@[.5:.95] per category, all areas, max dets 100; ``nan`` without ground truth."""
    precision = coco_eval.eval["precision"]  # (T IoUs, R recalls, K classes, A areas, D maxdets)
    out = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        name = coco.cats[int(cat_id)].get("name", str(cat_id))
        out[f"AP/{name}"] = float(p.mean() * 100) if p.size else math.nan
    return out


def coco_evaluate(
    coco_gt: COCO | str | Path,
    detections: Sequence[dict[str, Any]],
    iou_type: str = "bbox",
    *,
    image_ids: Iterable[int] | None = None,
    per_class: bool = False,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO AP of detections against ground truth.

    Args:
        coco_gt: pycocotools ``COCO`` or path to an annotation json.
        detections: dicts with ``image_id``, ``category_id`` (COCO ids), ``bbox``
            ``[x, y, w, h]`` in original image pixels and ``score``. Not modified.
        iou_type: ``"bbox"`` or ``"segm"`` (then each detection needs ``segmentation``).
        image_ids: evaluate only these images (a prefix of the set, one rank's shard);
            default all images of ``coco_gt``. Images without detections count as misses.
        per_class: also return ``"AP/<class name>"`` entries.
        verbose: let pycocotools print its summary table.

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` in percent (0-100), plus per-class
        entries if asked. Empty detections give 0 everywhere (nothing was found).
    """
    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type: expected one of {IOU_TYPES}, got {iou_type!r}")
    coco = load_coco(coco_gt, verbose)
    check_detections(detections, coco)
    if len(detections) == 0:
        # COCO.loadRes cannot index an empty list; no detection means zero recall.
        metrics = dict.fromkeys(METRICS, 0.0)
        if per_class:
            metrics |= {
                f"AP/{c.get('name', c['id'])}": 0.0 for c in coco.loadCats(coco.getCatIds())
            }
        return metrics
    with _quiet(verbose):
        # loadRes adds id/area/segmentation in place; the caller's dicts stay untouched.
        coco_dt = coco.loadRes(copy.deepcopy(list(detections)))
        coco_eval = COCOeval(coco, coco_dt, iou_type)
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(set(image_ids))
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    stats = np.asarray(coco_eval.stats[: len(METRICS)], dtype=np.float64)
    metrics = {k: float(v * 100) if v >= 0 else math.nan for k, v in zip(METRICS, stats)}
    if per_class:
        metrics |= _per_class_ap(coco_eval, coco)
    return metrics

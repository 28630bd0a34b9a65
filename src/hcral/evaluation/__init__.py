"""COCO-style evaluation of detections (metrics in percent, 0-100)."""

from hcral.evaluation.coco_eval import METRICS, coco_evaluate, load_coco

__all__ = ["METRICS", "coco_evaluate", "load_coco"]

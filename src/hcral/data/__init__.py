"""Datasets, transforms and batching: COCO-format loading and the built-in sample data."""

from hcral.data.coco import CocoDetection, DatasetError, load_image
from hcral.data.collate import Batch, collate
from hcral.data.sample import make_sample
from hcral.data.transforms import DetectionTransform, build_transforms

__all__ = [
    "Batch",
    "CocoDetection",
    "DatasetError",
    "DetectionTransform",
    "build_transforms",
    "collate",
    "load_image",
    "make_sample",
]

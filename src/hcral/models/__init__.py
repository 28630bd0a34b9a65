"""Dense one-stage detectors: RetinaNet, ATSS and FCOS+ATSS on ResNet + FPN."""

from hcral.models.build import MODELS, build_model
from hcral.models.detector import DenseDetector

__all__ = ["MODELS", "DenseDetector", "build_model"]

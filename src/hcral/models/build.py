"""Detector construction from the model config."""

from __future__ import annotations

from hcral.config import ModelConfig
from hcral.models.atss import ATSS
from hcral.models.detector import DenseDetector
from hcral.models.fcos_atss import FCOSATSS
from hcral.models.retinanet import RetinaNet

MODELS: dict[str, type[DenseDetector]] = {
    "retinanet": RetinaNet,
    "atss": ATSS,
    "fcos_atss": FCOSATSS,
}


def build_model(cfg: ModelConfig) -> DenseDetector:
    """The detector ``cfg.name`` (``cfg.num_classes`` must already be set)."""
    if cfg.name not in MODELS:
        raise ValueError(f"model.name: unknown {cfg.name!r}; choose one of {sorted(MODELS)}")
    if (cfg.star_dcn or cfg.bbox_refine) and cfg.name != "fcos_atss":
        raise ValueError(
            f"model.star_dcn / model.bbox_refine need model.name 'fcos_atss', got {cfg.name!r}"
        )
    return MODELS[cfg.name](cfg)

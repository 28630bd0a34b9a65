"""hcral: HCRAC/HCRAR losses and the EATSS assigner for dense object detectors.

The flat public API: ``from hcral import hcrac_loss, HCRARLoss, eatss_assign,
build_model``. Names are imported on first use, so ``import hcral`` stays cheap and
importing one family never imports the others.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # classification losses
    "sigmoid_focal_loss": "losses.focal", "FocalLoss": "losses.focal",
    "quality_focal_loss": "losses.gfl", "QualityFocalLoss": "losses.gfl",
    "varifocal_loss": "losses.varifocal", "VarifocalLoss": "losses.varifocal",
    "ghmc_loss": "losses.ghm", "GHMCLoss": "losses.ghm",
    "hcrac_loss": "losses.hcrac", "HCRACLoss": "losses.hcrac",
    # regression losses
    "l1_loss": "losses.l1", "L1Loss": "losses.l1",
    "giou_loss": "losses.iou", "GIoULoss": "losses.iou",
    "diou_loss": "losses.iou", "DIoULoss": "losses.iou",
    "ciou_loss": "losses.iou", "CIoULoss": "losses.iou",
    "eiou_loss": "losses.iou", "EIoULoss": "losses.iou",
    "focal_eiou_loss": "losses.iou", "FocalEIoULoss": "losses.iou",
    "alpha_iou_loss": "losses.iou", "AlphaIoULoss": "losses.iou",
    "wise_iou_loss": "losses.iou", "WiseIoULoss": "losses.iou",
    "hcrar_loss": "losses.hcrar", "HCRARLoss": "losses.hcrar",
    "build_cls_loss": "losses", "build_reg_loss": "losses",
    # assigners
    "max_iou_assign": "assigners", "atss_assign": "assigners", "eatss_assign": "assigners",
    "AssignResult": "assigners",
    # detectors, data, config
    "build_model": "models", "DenseDetector": "models",
    "CocoDetection": "data", "make_sample": "data",
    "Config": "config", "load_config": "config",
}  # fmt: skip

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hcral' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hcral.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

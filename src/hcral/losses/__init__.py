"""Loss functions and the criteria a detector selects by name.

Pure functions live in one file per family (``focal.py``, ``ghm.py``, ``hcrac.py`` ...);
each family also has an ``nn.Module`` criterion with the uniform call described in
docs/architecture.md. ``CLS_LOSSES`` / ``REG_LOSSES`` map config names to
``"module:Class"`` so that importing one family never imports the others.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

CLS_LOSSES: dict[str, str] = {
    "focal": "focal:FocalLoss",
    "qfl": "gfl:QualityFocalLoss",
    "vfl": "varifocal:VarifocalLoss",
    "ghm": "ghm:GHMCLoss",
    "hcrac": "hcrac:HCRACLoss",
}

REG_LOSSES: dict[str, str] = {
    "l1": "l1:L1Loss",
    "giou": "iou:GIoULoss",
    "diou": "iou:DIoULoss",
    "ciou": "iou:CIoULoss",
    "eiou": "iou:EIoULoss",
    "focal_eiou": "iou:FocalEIoULoss",
    "alpha_iou": "iou:AlphaIoULoss",
    "wiou": "iou:WiseIoULoss",
    "hcrar": "hcrar:HCRARLoss",
}


def loss_class(table: dict[str, str], name: str) -> type[nn.Module]:
    """The criterion class ``table[name]`` names (``CLS_LOSSES`` or ``REG_LOSSES``)."""
    module, cls = table[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def _build(table: dict[str, str], kind: str, name: str, kwargs: dict[str, Any]) -> nn.Module:
    if name not in table:
        raise ValueError(f"unknown {kind} loss {name!r}; choose one of {sorted(table)}")
    criterion = loss_class(table, name)
    try:
        return criterion(**kwargs)
    except TypeError as e:
        raise ValueError(f"{kind} loss {name!r}: bad arguments {kwargs}: {e}") from e


def build_cls_loss(name: str, **kwargs: Any) -> nn.Module:
    """Classification criterion by config name, e.g. ``build_cls_loss("hcrac", mu=5.0)``."""
    return _build(CLS_LOSSES, "classification", name, kwargs)


def build_reg_loss(name: str, **kwargs: Any) -> nn.Module:
    """Regression criterion by config name, e.g. ``build_reg_loss("hcrar", alpha=-0.1)``."""
    return _build(REG_LOSSES, "regression", name, kwargs)

"""Priors (anchor boxes and anchor points) for every pyramid level.

Prior order matches the flattened head outputs: level by level, then row-major over
the feature map ``(H, W)``, then the ``A`` anchors of a location. Every prior of a
location shares its centre ``((x + 0.5)·stride, (y + 0.5)·stride)``: the centre of the
receptive field of the feature cell, so points and anchors line up with the FCOS points
and the priors of a padded image are symmetric around its content.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

_MAX_CACHED = 64


@dataclass(frozen=True)
class Priors:
    """All priors of one feature-map layout (shared by the images of a batch).

    Attributes:
        boxes: ``(R, 4)`` xyxy anchor boxes in input pixels.
        points: ``(R, 2)`` (x, y) anchor centres.
        strides: ``(R,)`` stride of each prior's level.
        num_level_priors: ``L`` ints, priors per level, summing to ``R``.
    """

    boxes: Tensor
    points: Tensor
    strides: Tensor
    num_level_priors: list[int]


def anchor_shapes(
    base_size: float, scales: Sequence[float], ratios: Sequence[float]
) -> list[tuple[float, float]]:
    """Widths and heights of the anchors of one location, ratio-major (mmdet order).

    ``ratio = h / w`` and the area is ``(base_size · scale)²`` for every ratio.

    Returns:
        ``len(ratios) · len(scales)`` (w, h) pairs.
    """
    shapes = []
    for ratio in ratios:
        for scale in scales:
            size = base_size * scale
            shapes.append((size / math.sqrt(ratio), size * math.sqrt(ratio)))
    return shapes


def level_priors(
    height: int,
    width: int,
    stride: int,
    shapes: Sequence[tuple[float, float]],
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """Anchors and centres of one level.

    Args:
        height, width: feature-map size.
        stride: level stride in px.
        shapes: ``A`` (w, h) anchor sizes in px.
    Returns:
        boxes ``(H·W·A, 4)`` xyxy and points ``(H·W·A, 2)``.
    """
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) * stride
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2)  # (H·W, 1, 2)
    wh = torch.tensor(shapes, dtype=torch.float32, device=device)  # (A, 2)
    boxes = torch.cat((centres - wh / 2, centres + wh / 2), dim=-1)  # (H·W, A, 4)
    points = centres.expand(-1, len(shapes), -1)
    return boxes.reshape(-1, 4), points.reshape(-1, 2)


class PriorGenerator:
    """Priors for a list of pyramid levels, cached per feature sizes and device.

    Args:
        strides: ``L`` level strides in px.
        base_scale: anchor side (before ``scales``) in units of the level stride:
            4 for RetinaNet (its "octave base scale"), ``anchor_scale`` (8) for ATSS.
        scales: multipliers of the base size (RetinaNet: ``2^(k/3)``, k = 0, 1, 2).
        ratios: aspect ratios ``h / w``.
    """

    def __init__(
        self,
        strides: Sequence[int],
        base_scale: float,
        scales: Sequence[float] = (1.0,),
        ratios: Sequence[float] = (1.0,),
    ):
        if not strides or any(s <= 0 for s in strides):
            raise ValueError(f"strides must be positive, got {list(strides)}")
        if base_scale <= 0:
            raise ValueError(f"base_scale must be > 0, got {base_scale}")
        self.strides = [int(s) for s in strides]
        self.shapes = [anchor_shapes(base_scale * s, scales, ratios) for s in self.strides]
        self._cache: dict[tuple, Priors] = {}

    @property
    def num_anchors(self) -> int:
        """Anchors per location (``A``)."""
        return len(self.shapes[0])

    def __call__(self, feature_sizes: Sequence[tuple[int, int]], device: torch.device) -> Priors:
        """Priors for feature maps of ``feature_sizes`` ((H, W) per level) on ``device``."""
        if len(feature_sizes) != len(self.strides):
            raise ValueError(
                f"feature_sizes has {len(feature_sizes)} levels, expected {len(self.strides)}"
            )
        key = (tuple((int(h), int(w)) for h, w in feature_sizes), str(torch.device(device)))
        if key not in self._cache:
            if len(self._cache) >= _MAX_CACHED:  # multi-scale training visits few sizes
                self._cache.clear()
            self._cache[key] = self._build(key[0], device)
        return self._cache[key]

    def _build(self, sizes: tuple[tuple[int, int], ...], device: torch.device) -> Priors:
        boxes, points, strides, counts = [], [], [], []
        for (h, w), stride, shapes in zip(sizes, self.strides, self.shapes):
            b, p = level_priors(h, w, stride, shapes, device)
            boxes.append(b)
            points.append(p)
            strides.append(torch.full((len(b),), float(stride), device=device))
            counts.append(len(b))
        return Priors(torch.cat(boxes), torch.cat(points), torch.cat(strides), counts)

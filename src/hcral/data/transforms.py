"""Image + target transforms: ratio-keeping resize, horizontal flip, to-tensor.

Normalisation (mean/std) is the model's job, so images leave here as float in [0, 1].
Boxes are xyxy in pixels; the resize multiplies them by one factor ``scale``, which is
stored in the target so that ``boxes / target["scale"]`` maps predictions back to the
original image exactly.

Randomness (the multi-scale choice and the flip) comes from ``generator`` when given,
otherwise from torch's global RNG: DataLoader seeds that differently in every worker
(from the base seed), so workers draw different sizes and runs are reproducible under
``torch.manual_seed``. A generator stored in the transform would be copied into every
worker and make them all draw the same sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hcral.boxes import clip_boxes

__all__ = [
    "DetectionTransform",
    "build_transforms",
    "hflip_boxes",
    "resized_shape",
    "to_tensor",
]


def resized_shape(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int, float]:
    """Size after scaling the shorter side to ``min_size`` with the longer side ≤ ``max_size``.

    Args:
        height, width: original image size in pixels.
        min_size: target length of the shorter side.
        max_size: cap on the longer side; it wins when the two disagree.

    Returns:
        ``(new_height, new_width, scale)``, each new side ``round(side * scale)`` (≥ 1).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height} width={width}")
    if min_size <= 0 or max_size <= 0:
        raise ValueError(f"min_size and max_size must be positive, got {min_size}, {max_size}")
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale)), scale


def hflip_boxes(boxes: Tensor, width: int | float) -> Tensor:
    """Mirrors xyxy boxes ``(M, 4)`` in an image ``width`` pixels wide: x → width − x."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=-1)


def to_tensor(image: Image.Image) -> Tensor:
    """PIL image → ``(3, H, W)`` float32 in [0, 1]."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


@dataclass
class DetectionTransform:
    """Resize (one of ``min_sizes`` per image), flip with ``flip_prob``, to tensor.

    Called as ``transform(pil_image, target) -> (image (3, H, W), target)``; the
    target's ``boxes`` (M, 4) are scaled, clipped and flipped with the image, and
    ``size`` (h, w) of the resized image and ``scale`` (resized / original) are added.
    """

    min_sizes: Sequence[int]
    max_size: int
    flip_prob: float = 0.0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        self.min_sizes = tuple(self.min_sizes)
        if not self.min_sizes or any(int(s) != s or s <= 0 for s in self.min_sizes):
            raise ValueError(f"min_size must be positive integers, got {list(self.min_sizes)}")
        if int(self.max_size) != self.max_size or self.max_size <= 0:
            raise ValueError(f"max_size must be a positive integer, got {self.max_size}")
        if not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")

    def pick_min_size(self) -> int:
        if len(self.min_sizes) == 1:
            return self.min_sizes[0]
        i = int(torch.randint(len(self.min_sizes), (1,), generator=self.generator))
        return self.min_sizes[i]

    def should_flip(self) -> bool:
        if self.flip_prob in (0.0, 1.0):
            return self.flip_prob == 1.0
        return bool(torch.rand((), generator=self.generator) < self.flip_prob)

    def __call__(self, image: Image.Image, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        height, width, scale = resized_shape(
            image.height, image.width, self.pick_min_size(), self.max_size
        )
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        tensor = to_tensor(image)
        target = dict(target)
        boxes = clip_boxes(target["boxes"].float() * scale, (height, width))
        if self.should_flip():
            tensor = tensor.flip(-1)
            boxes = hflip_boxes(boxes, width)
        target.update(boxes=boxes, size=(height, width), scale=scale)
        return tensor, target


def build_transforms(
    train: bool,
    min_size: int | Sequence[int],
    max_size: int,
    flip_prob: float = 0.5,
    generator: torch.Generator | None = None,
) -> DetectionTransform:
    """Training or evaluation transform from the ``data`` config fields.

    Args:
        train: multi-scale choice among ``min_size`` and random flips when True;
            otherwise the largest ``min_size`` and no flip.
        min_size: shorter-side length(s); several values mean multi-scale training.
        max_size: cap on the longer side.
        flip_prob: horizontal flip probability (training only).
        generator: RNG for the random choices; ``None`` uses torch's global RNG.
    """
    sizes = [min_size] if isinstance(min_size, int) else list(min_size)
    if not sizes:
        raise ValueError("min_size must not be empty")
    full = DetectionTransform(sizes, max_size, flip_prob, generator)  # validates all sizes
    if train:
        return full
    return DetectionTransform([max(full.min_sizes)], max_size, 0.0)

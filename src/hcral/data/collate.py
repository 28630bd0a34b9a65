"""Batching: zero-pad images to a common, stride-aligned size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Batch", "collate", "padded_size"]


def _move(value: Any, device: torch.device | str, non_blocking: bool) -> Any:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=non_blocking)
    return value


@dataclass
class Batch:
    """A padded batch.

    Attributes:
        images: (N, 3, H, W) float, zero beyond each image's own size.
        image_sizes: N ``(h, w)`` of the unpadded images.
        targets: N target dicts as the dataset produced them.
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    targets: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.image_sizes)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Copy of the batch with the images and every target tensor on ``device``."""
        targets = [{k: _move(v, device, non_blocking) for k, v in t.items()} for t in self.targets]
        return Batch(self.images.to(device, non_blocking=non_blocking), self.image_sizes, targets)

    def pin_memory(self) -> Batch:
        """Called by ``DataLoader(pin_memory=True)`` so host→GPU copies can be async."""
        targets = [
            {k: v.pin_memory() if isinstance(v, Tensor) else v for k, v in t.items()}
            for t in self.targets
        ]
        return Batch(self.images.pin_memory(), self.image_sizes, targets)


def padded_size(sizes: list[tuple[int, int]], size_divisibility: int) -> tuple[int, int]:
    """Smallest (H, W) holding every size, rounded up to a multiple of ``size_divisibility``."""
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    if size_divisibility > 1:
        h = -(-h // size_divisibility) * size_divisibility
        w = -(-w // size_divisibility) * size_divisibility
    return h, w


def collate(samples: list[tuple[Tensor, dict[str, Any]]], size_divisibility: int = 128) -> Batch:
    """Stacks ``(image (3, h, w), target)`` samples into a :class:`Batch`.

    Use ``functools.partial(collate, size_divisibility=...)`` as a DataLoader
    ``collate_fn``. Images are padded at the bottom/right, so box coordinates stay
    valid; ``size_divisibility`` (≤ 1: no rounding) should be the largest stride so
    every feature level tiles the padded image exactly.
    """
    if not samples:
        raise ValueError("collate: samples is empty")
    if size_divisibility < 0:
        raise ValueError(f"size_divisibility must be >= 0, got {size_divisibility}")
    images = [s[0] for s in samples]
    for i, img in enumerate(images):
        if img.dim() != 3 or img.shape[0] != 3:
            raise ValueError(f"collate: sample {i} image must be (3, H, W), got {tuple(img.shape)}")
    sizes = [(int(img.shape[1]), int(img.shape[2])) for img in images]
    h, w = padded_size(sizes, size_divisibility)
    batch = images[0].new_zeros((len(images), 3, h, w))
    for out, img, (ih, iw) in zip(batch, images, sizes):
        out[:, :ih, :iw].copy_(img)
    return Batch(batch, sizes, [s[1] for s in samples])

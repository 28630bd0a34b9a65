"""Hypothesis scenes for the assigner tests: padded GT batches on a small image.

GT kinds: tiny (smaller than the P3 stride), ordinary, large (up to twice the image),
partly outside the image, duplicates of an earlier GT of the same image, and — when
asked — zero-area boxes. Coordinates sit on a quarter-pixel grid (optionally with a
float jitter) so that distance and IoU ties between priors are frequent: the
vectorised assigners must break them exactly like the reference. Padding rows hold
NaN so that any use of padding shows up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st
from torch import Tensor

NUM_CLASSES = 3


@dataclass
class Scene:
    height: int
    width: int
    boxes: Tensor  # (N, M, 4)
    labels: Tensor  # (N, M)
    mask: Tensor  # (N, M)
    crowd: Tensor  # (N, M)

    def to(self, device) -> Scene:
        return Scene(
            self.height,
            self.width,
            self.boxes.to(device),
            self.labels.to(device),
            self.mask.to(device),
            self.crowd.to(device),
        )

    def args(self) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
        return self.boxes, self.labels, self.mask, self.crowd, NUM_CLASSES


_SIZES = {"tiny": (2, 32), "normal": (32, 256), "large": (256, 1024)}  # quarter pixels


@st.composite
def _box(draw, height: int, width: int, zero_area: bool) -> list[float]:
    kinds = ["tiny", "normal", "large", "outside"] + (["zero"] if zero_area else [])
    kind = draw(st.sampled_from(kinds))
    lo, hi = _SIZES.get(kind, (32, 256))
    w, h = (draw(st.integers(lo, hi)) / 4 for _ in range(2))
    if kind == "zero":
        w = 0.0
    margin = 0.5 if kind == "outside" else 0.0
    cx = draw(st.integers(int(-margin * w * 4), int((width + margin * w) * 4))) / 4
    cy = draw(st.integers(int(-margin * h * 4), int((height + margin * h) * 4))) / 4
    if draw(st.booleans()):
        jitter = st.floats(0, 1, width=32)
        cx, cy = cx + draw(jitter), cy + draw(jitter)
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


@st.composite
def scenes(
    draw,
    max_images: int = 3,
    max_gts: int = 6,
    max_side: int = 160,
    crowd: bool = True,
    zero_area: bool = False,
) -> Scene:
    """A batch of 1..max_images images with 0..max_gts GTs each (M = the largest count)."""
    n = draw(st.integers(1, max_images))
    height, width = draw(st.integers(16, max_side)), draw(st.integers(16, max_side))
    counts = [draw(st.integers(0, max_gts)) for _ in range(n)]
    m = max(counts)
    boxes = torch.full((n, m, 4), float("nan"))
    labels = torch.full((n, m), -7, dtype=torch.int64)
    mask = torch.zeros(n, m, dtype=torch.bool)
    is_crowd = torch.zeros(n, m, dtype=torch.bool)
    for i, count in enumerate(counts):
        for j in range(count):
            if j and draw(st.integers(0, 5)) == 0:
                boxes[i, j] = boxes[i, draw(st.integers(0, j - 1))]
            else:
                boxes[i, j] = torch.tensor(draw(_box(height, width, zero_area)))
            labels[i, j] = draw(st.integers(0, NUM_CLASSES - 1))
            mask[i, j] = True
            is_crowd[i, j] = crowd and draw(st.integers(0, 7)) == 0
    return Scene(height, width, boxes, labels, mask, is_crowd)


def pred_boxes_like(priors: Tensor, n: int, seed: int) -> Tensor:
    """``(N, R, 4)`` predictions: priors shifted and rescaled at random (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    wh = (priors[:, 2:] - priors[:, :2]).repeat(1, 2)
    noise = torch.randn((n, *priors.shape), generator=g).to(priors.device)
    return priors + 0.3 * noise * wh


def assert_same(ours, ref) -> None:
    """Exact equality of two AssignResults, field by field."""
    for field in ("gt_inds", "labels", "max_ious", "num_unmatched_gts"):
        a, b = getattr(ours, field), getattr(ref, field)
        assert a.shape == b.shape, field
        assert torch.equal(a.cpu(), b.cpu()), (
            f"{field} differs at {(a.cpu() != b.cpu()).nonzero()[:5]}"
        )

"""Deformable convolution (DCN v1/v2) that is fast on CPU.

``torchvision.ops.deform_conv2d`` is fast on CUDA but its CPU kernel is a scalar
im2col loop: one VFNet star-DCN training step of a small FCOS+ATSS model spends
most of its time there. On CPU we compute the same function with two vectorised
ATen ops instead:

1. ``grid_sample`` (bilinear, ``padding_mode="zeros"``, ``align_corners=True``) reads
   the input at the ``K = kh·kw`` deformed points ``p0 + p_k + Δp_k`` of every output
   cell into a ``(N, C·K, Ho·Wo)`` column tensor (torchvision's im2col buffer);
2. one batched matmul with the weight reshaped to ``(O, C·K)``.

Equivalence with torchvision's kernel:

* bilinear weights with zeros outside the image: torchvision returns 0 when the point
  is at ``h ≤ -1`` or ``h ≥ H`` (likewise ``w``) and drops corners outside the image;
  grid_sample's zeros padding drops each corner outside the image, which gives the
  same value (at ``h = -1`` or ``h = H`` the only in-image corner has weight 0);
* offsets are ``(dy, dx)`` pairs per kernel point, kernel points row-major, one block of
  ``2·K`` channels per offset group; masks one channel per kernel point and group;
* ``align_corners=True`` maps pixel ``p`` to ``p · 2/(S-1) - 1`` and grid_sample maps it
  back by ``(x + 1) · (S-1)/2``. We zero-pad the input on the bottom/right to a size
  ``S = 2^k + 1`` so that both factors are powers of two: integer sampling points
  stay exact integers, and the floor taken by the bilinear kernel (hence the one-sided
  derivative at integer points) is torchvision's. The padding also gives 1-pixel maps
  the second row/column bilinear sampling needs; it reads as zeros, like outside.
* half / bfloat16 inputs (e.g. under autocast) are computed in float32 and cast back,
  as torchvision's autocast wrapper does.

On CUDA :func:`deform_conv2d` calls torchvision's kernel. On CPU, forward + backward
of the head's shapes (N=8, C=O=64, 3×3, H=W=32…2) is ~9× faster than torchvision's
(``benchmarks/bench_deform.py``, one thread). Memory: the column tensor holds
``N·C·K·Ho·Wo`` values, as torchvision's im2col buffer does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.ops
from torch import Tensor
from torch.nn.modules.utils import _pair

__all__ = ["DeformConv2d", "deform_conv2d", "deform_conv2d_sampled"]


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = (1, 1),
    padding: int | tuple[int, int] = (0, 0),
    dilation: int | tuple[int, int] = (1, 1),
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution with ``torchvision.ops.deform_conv2d``'s signature and math.

    CUDA tensors go to torchvision's kernel; anything else to :func:`deform_conv2d_sampled`.

    Args:
        input: ``(N, C, H, W)``.
        offset: ``(N, 2·G·kh·kw, Ho, Wo)``, ``(dy, dx)`` per kernel point (row-major)
            for each of ``G`` offset groups.
        weight: ``(O, C / groups, kh, kw)``.
        bias: ``(O,)`` or ``None``.
        stride, padding, dilation: as ``nn.Conv2d`` (int or pair).
        mask: ``(N, G·kh·kw, Ho, Wo)`` modulation (DCN v2) or ``None`` (DCN v1).
    Returns:
        ``(N, O, Ho, Wo)``.
    """
    if input.is_cuda:
        return torchvision.ops.deform_conv2d(
            input, offset, weight, bias, stride, padding, dilation, mask
        )
    return deform_conv2d_sampled(input, offset, weight, bias, stride, padding, dilation, mask)


def deform_conv2d_sampled(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = (1, 1),
    padding: int | tuple[int, int] = (0, 0),
    dilation: int | tuple[int, int] = (1, 1),
    mask: Tensor | None = None,
) -> Tensor:
    """:func:`deform_conv2d` via ``grid_sample`` + matmul, on any device.

    Same arguments and result as :func:`deform_conv2d`; differentiable in ``input``,
    ``offset``, ``weight``, ``bias`` and ``mask`` by autograd.
    """
    out_dtype = input.dtype
    with torch.autocast(input.device.type, enabled=False):
        x, offset, weight = _compute_dtype(input), _compute_dtype(offset), _compute_dtype(weight)
        geom = _Geometry.of(x, offset, weight, stride, padding, dilation, mask)
        cols = _sample_columns(x, offset, mask, geom)  # (N, C·K, Ho·Wo)
        out = _grouped_matmul(cols, weight, geom.groups)  # (N, O, Ho·Wo)
        if bias is not None:
            out = out + _compute_dtype(bias)[:, None]
    return out.view(geom.n, -1, geom.ho, geom.wo).to(out_dtype)


class DeformConv2d(torchvision.ops.DeformConv2d):
    """``torchvision.ops.DeformConv2d`` (same parameters, init and state dict) using
    :func:`deform_conv2d`, so it runs the fast sampled path on CPU."""

    def forward(self, input: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        """``(N, C, H, W)``, offsets ``(N, 2·G·kh·kw, Ho, Wo)`` -> ``(N, O, Ho, Wo)``."""
        return deform_conv2d(
            input,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )


@dataclass(frozen=True)
class _Geometry:
    """Validated sizes of one deformable convolution (``G`` = offset groups)."""

    n: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    ho: int
    wo: int
    offset_groups: int
    groups: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def of(cls, x, offset, weight, stride, padding, dilation, mask) -> _Geometry:
        """Check the shapes of one call (ValueError naming the argument) and size it."""
        (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
        if x.dim() != 4 or offset.dim() != 4 or weight.dim() != 4:
            raise ValueError(
                "input, offset and weight must be 4-D, got shapes "
                f"{tuple(x.shape)}, {tuple(offset.shape)}, {tuple(weight.shape)}"
            )
        n, c, h, w = x.shape
        o, c_per_group, kh, kw = weight.shape
        k = kh * kw
        ho = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
        wo = (w + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
        if c_per_group == 0 or c % c_per_group or o % (c // c_per_group):
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not fit {c} channels")
        g = offset.shape[1] // (2 * k)
        if g == 0 or offset.shape[1] != 2 * k * g or c % g:
            raise ValueError(
                f"offset must have 2·G·{k} channels with G dividing {c}, got {offset.shape[1]}"
            )
        if tuple(offset.shape) != (n, 2 * k * g, ho, wo):
            raise ValueError(f"offset must be {(n, 2 * k * g, ho, wo)}, got {tuple(offset.shape)}")
        if mask is not None and tuple(mask.shape) != (n, k * g, ho, wo):
            raise ValueError(f"mask must be {(n, k * g, ho, wo)}, got {tuple(mask.shape)}")
        groups = c // c_per_group
        return cls(n, c, h, w, kh, kw, ho, wo, g, groups, (sh, sw), (ph, pw), (dh, dw))


def _compute_dtype(t: Tensor) -> Tensor:
    # Sampling coordinates need float32: bf16 cannot tell pixel 129 from 130.
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _pow2_plus_one(size: int) -> int:
    """Smallest ``2^k + 1 ≥ max(size, 2)``: makes align_corners' scale a power of two."""
    return (1 << (max(size, 2) - 2).bit_length()) + 1


def _sample_columns(x: Tensor, offset: Tensor, mask: Tensor | None, geom: _Geometry) -> Tensor:
    """The deformed im2col buffer ``(N, C·K, Ho·Wo)``, channel-major like the weight."""
    n, g, k, ho, wo = geom.n, geom.offset_groups, geom.kh * geom.kw, geom.ho, geom.wo
    sy, sx = _pow2_plus_one(geom.h), _pow2_plus_one(geom.w)
    x = F.pad(x, (0, sx - geom.w, 0, sy - geom.h))
    base_y, base_x = _base_grid(geom, x)  # (K, Ho, 1), (K, 1, Wo)
    dy, dx = offset.view(n, g, k, 2, ho, wo).unbind(3)  # (N, G, K, Ho, Wo) each
    # grid_sample wants (x, y) in [-1, 1]; 2/(S-1) is a power of two, so exact.
    gx = (base_x + dx) * (2.0 / (sx - 1)) - 1
    gy = (base_y + dy) * (2.0 / (sy - 1)) - 1
    grid = torch.stack((gx, gy), dim=-1).view(n * g, k * ho, wo, 2)
    x = x.reshape(n * g, geom.c // g, sy, sx)
    cols = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    if mask is not None:  # (N·G, C/G, K·Ho, Wo) · (N·G, 1, K·Ho, Wo)
        cols = cols * _compute_dtype(mask).reshape(n * g, 1, k * ho, wo)
    return cols.view(n, geom.c * k, ho * wo)


def _base_grid(geom: _Geometry, like: Tensor) -> tuple[Tensor, Tensor]:
    """Undeformed sampling rows ``(K, Ho, 1)`` and columns ``(K, 1, Wo)``, in pixels."""
    (sh, sw), (ph, pw), (dh, dw) = geom.stride, geom.padding, geom.dilation
    kw = geom.kw

    def arange(size: int) -> Tensor:
        return torch.arange(size, device=like.device, dtype=like.dtype)

    ky = arange(geom.kh).repeat_interleave(kw)  # kernel point k = i·kw + j, row-major
    kx = arange(kw).repeat(geom.kh)
    rows = ky[:, None, None] * dh + (arange(geom.ho) * sh - ph)[None, :, None]
    cols = kx[:, None, None] * dw + (arange(geom.wo) * sw - pw)[None, None, :]
    return rows, cols


def _grouped_matmul(cols: Tensor, weight: Tensor, groups: int) -> Tensor:
    """``(N, C·K, L)`` columns × ``(O, C/groups, kh, kw)`` weight -> ``(N, O, L)``."""
    n, ck, length = cols.shape
    o = weight.shape[0]
    # bmm over an expanded (stride-0) weight: torch.matmul would copy the columns into
    # an (N·L, C·K) layout first, which costs as much as the product itself.
    w = weight.reshape(1, groups, o // groups, ck // groups).expand(n, -1, -1, -1)
    cols = cols.view(n * groups, ck // groups, length)
    out = torch.bmm(w.reshape(n * groups, o // groups, ck // groups), cols)
    return out.view(n, o, length)

"""Feature pyramid P3–P7 on top of C3–C5 (Lin et al. 2017; RetinaNet's P6/P7)."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

STRIDES = [8, 16, 32, 64, 128]


class FPN(nn.Module):
    """P3–P5 from lateral + top-down connections, P6/P7 by stride-2 convs.

    torchvision's ``LastLevelP6P7`` takes P6 from C5 when C5 has a different width
    than the pyramid (ResNets) and from P5 otherwise.

    Args:
        in_channels: channels of C3, C4, C5.
        out_channels: channels of every pyramid level.
    """

    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"in_channels must list C3, C4, C5, got {in_channels}")
        if out_channels <= 0:
            raise ValueError(f"fpn_channels must be > 0, got {out_channels}")
        self.fpn = FeaturePyramidNetwork(
            in_channels, out_channels, extra_blocks=LastLevelP6P7(in_channels[-1], out_channels)
        )
        self.out_channels = out_channels
        self.strides = list(STRIDES)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """``[C3, C4, C5]`` -> ``[P3, ..., P7]``, each ``(N, out_channels, H_l, W_l)``."""
        out = self.fpn(OrderedDict((f"c{i + 3}", f) for i, f in enumerate(features)))
        return list(out.values())

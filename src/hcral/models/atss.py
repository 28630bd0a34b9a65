"""ATSS (Zhang et al. 2020, "Bridging the Gap Between Anchor-based and Anchor-free").

As in the original: one square anchor of ``anchor_scale × stride`` per location, delta
coding with weights (10, 10, 5, 5), and a centerness branch on the regression tower
trained with binary cross-entropy on positives against the FCOS centerness of the
anchor centre inside its assigned box. The regression loss of each positive is
weighted by that centerness target and normalised by the (rank-averaged) sum of the
targets, and at test time a prior scores ``sigmoid(cls) · sigmoid(centerness)``.
"""

from __future__ import annotations

from torch import Tensor

from hcral.boxes import decode_deltas, encode_deltas, encode_ltrb
from hcral.config import ModelConfig
from hcral.losses._state import reduce_mean
from hcral.models.detector import DenseDetector, Positives, bce_sum
from hcral.models.heads import DenseHead
from hcral.models.priors import PriorGenerator, Priors


def centerness_targets(points: Tensor, boxes: Tensor) -> Tensor:
    """FCOS centerness ``sqrt(min(l, r)/max(l, r) · min(t, b)/max(t, b))``.

    Args:
        points: ``(P, 2)`` prior centres.
        boxes: ``(P, 4)`` assigned GT boxes.
    Returns:
        ``(P,)`` in [0, 1]; 0 for a point on or outside the box border (possible with
        IoU-based assignment), never NaN.
    """
    ltrb = encode_ltrb(points, boxes).clamp(min=0)
    lr, tb = ltrb[:, 0::2], ltrb[:, 1::2]
    ratio = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)) * (
        tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)
    )
    return ratio.sqrt()


class ATSS(DenseDetector):
    """ATSS detector; losses, assigner and box weights as in the ATSS paper."""

    default_assigner = "atss"
    box_weights = (10.0, 10.0, 5.0, 5.0)

    def build_priors(self, cfg: ModelConfig) -> PriorGenerator:
        return PriorGenerator(cfg.strides, cfg.anchor_scale)

    def build_head(self, cfg: ModelConfig) -> DenseHead:
        return DenseHead(
            cfg.fpn_channels,
            cfg.num_classes,
            num_anchors=1,
            num_levels=len(cfg.strides),
            num_convs=cfg.num_convs,
            with_quality=True,
        )

    def decode_boxes(self, reg: Tensor, priors: Priors) -> Tensor:
        return decode_deltas(priors.boxes, reg, self.box_weights)

    def encode_targets(self, priors: Priors, prior_inds: Tensor, targets: Tensor) -> Tensor:
        return encode_deltas(priors.boxes[prior_inds], targets, self.box_weights)

    def reg_weighting(self, pos: Positives, priors: Priors) -> tuple[Tensor | None, float]:
        weight = centerness_targets(priors.points[pos.prior_inds], pos.target_boxes)
        return weight, max(reduce_mean(weight.sum()).item(), 1e-6)

    def extra_losses(self, pos: Positives, priors: Priors) -> dict[str, Tensor]:
        target = centerness_targets(priors.points[pos.prior_inds], pos.target_boxes)
        return {"loss_centerness": bce_sum(pos.quality, target) / pos.avg_factor}

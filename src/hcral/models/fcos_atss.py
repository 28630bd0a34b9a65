"""FCOS+ATSS: anchor-free points, ATSS-style assignment, an IoU quality branch.

Each location is a point; for assignment it is represented by the square of side
``anchor_scale × stride`` around it (ATSS). Boxes are coded as distances to the four
sides in units of the level stride, predicted as ``exp(scale_l · x)`` (see heads.py).
The quality branch is trained to predict the IoU of the decoded (refined, when
``bbox_refine``) prediction with its GT (BCE against the detached IoU, summed over
positives / N_pos), and a prior scores ``sigmoid(cls) · sigmoid(quality)`` at test time
(HCRAL paper §5, SPEC §5).

With ``bbox_refine`` the initial box gets its own GIoU loss, ``loss_reg_init``, with
VFNet's weight 1.5 (VFNet: 1.5 initial, 2.0 refined); the configured regression loss
trains the refined box, which is the detector's output.
"""

from __future__ import annotations

from torch import Tensor

from hcral.boxes import decode_ltrb, encode_ltrb
from hcral.config import ModelConfig
from hcral.losses import build_reg_loss
from hcral.models.detector import DenseDetector, Positives, bce_sum
from hcral.models.heads import DenseHead
from hcral.models.priors import PriorGenerator, Priors

INIT_BOX_LOSS_WEIGHT = 1.5


class FCOSATSS(DenseDetector):
    """FCOS+ATSS with optional VFNet star-shaped deformable conv and box refinement."""

    default_assigner = "atss"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.init_reg_loss = (
            build_reg_loss("giou", loss_weight=INIT_BOX_LOSS_WEIGHT) if cfg.bbox_refine else None
        )

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
            ltrb=True,
            anchor_scale=cfg.anchor_scale,
            star_dcn=cfg.star_dcn,
            bbox_refine=cfg.bbox_refine,
        )

    def decode_boxes(self, reg: Tensor, priors: Priors) -> Tensor:
        return decode_ltrb(priors.points, reg, priors.strides)

    def encode_targets(self, priors: Priors, prior_inds: Tensor, targets: Tensor) -> Tensor:
        return encode_ltrb(priors.points[prior_inds], targets, priors.strides[prior_inds])

    def extra_losses(self, pos: Positives, priors: Priors) -> dict[str, Tensor]:
        losses = {"loss_quality": bce_sum(pos.quality, pos.ious) / pos.avg_factor}
        if self.init_reg_loss is not None:
            losses["loss_reg_init"] = self.init_reg_loss(
                pos.init_boxes, pos.target_boxes, avg_factor=pos.avg_factor
            )
        return losses

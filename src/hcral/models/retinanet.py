"""RetinaNet (Lin et al. 2017): 9 anchors per location, delta box coding."""

from __future__ import annotations

from torch import Tensor

from hcral.boxes import decode_deltas, encode_deltas
from hcral.config import ModelConfig
from hcral.models.detector import DenseDetector
from hcral.models.heads import DenseHead
from hcral.models.priors import PriorGenerator, Priors

OCTAVE_BASE_SCALE = 4.0
SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
RATIOS = (0.5, 1.0, 2.0)


class RetinaNet(DenseDetector):
    """RetinaNet with any classification / regression criterion.

    Anchors: 3 octave scales × 3 aspect ratios of ``4 · stride``. Boxes are coded as
    deltas with unit weights. ``reg_loss: l1`` trains the deltas (the original recipe,
    via ``pred_deltas``/``target_deltas``); IoU-type losses train the decoded boxes.
    The head has the per-level learnable scale of FCOS/ATSS on its box output; it starts
    at 1, so at initialisation this is the original RetinaNet.
    """

    default_assigner = "max_iou"
    box_weights = (1.0, 1.0, 1.0, 1.0)

    def build_priors(self, cfg: ModelConfig) -> PriorGenerator:
        return PriorGenerator(cfg.strides, OCTAVE_BASE_SCALE, SCALES, RATIOS)

    def build_head(self, cfg: ModelConfig) -> DenseHead:
        return DenseHead(
            cfg.fpn_channels,
            cfg.num_classes,
            num_anchors=self.priors.num_anchors,
            num_levels=len(cfg.strides),
            num_convs=cfg.num_convs,
        )

    def decode_boxes(self, reg: Tensor, priors: Priors) -> Tensor:
        return decode_deltas(priors.boxes, reg, self.box_weights)

    def encode_targets(self, priors: Priors, prior_inds: Tensor, targets: Tensor) -> Tensor:
        return encode_deltas(priors.boxes[prior_inds], targets, self.box_weights)

"""One-stage dense detector: backbone → FPN → head → (assign + losses | decode + NMS).

:class:`DenseDetector` owns everything the three detectors share; a subclass only says
how its priors and head look, how boxes are coded, and which extra losses it trains
(see ``retinanet.py``, ``atss.py``, ``fcos_atss.py``). The call contract with the engine
is the "Models ↔ engine" section of docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from hcral.assigners.result import AssignResult
from hcral.boxes import aligned_iou, box_iou, clip_boxes
from hcral.config import ModelConfig
from hcral.losses import build_cls_loss, build_reg_loss
from hcral.losses._state import reduce_mean
from hcral.models.backbone import ResNetBackbone
from hcral.models.fpn import FPN, STRIDES
from hcral.models.heads import DenseHead, HeadOutputs
from hcral.models.priors import PriorGenerator, Priors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KNOWN_ASSIGNERS = ("max_iou", "atss", "eatss")


@dataclass
class GtBatch:
    """Ground truths of a batch padded to ``M`` per image (``M ≥ 1``; padding is masked).

    Attributes:
        boxes: ``(N, M, 4)`` xyxy; labels ``(N, M)`` int64; mask ``(N, M)`` bool valid;
        crowd: ``(N, M)`` bool.
    """

    boxes: Tensor
    labels: Tensor
    mask: Tensor
    crowd: Tensor


@dataclass
class Positives:
    """Everything the per-positive losses need (``P`` positives of the whole batch).

    Attributes:
        prior_inds: ``(P,)`` prior index in ``0..R-1``.
        reg: ``(P, 4)`` raw box regression (deltas, or ltrb in strides), with grad.
        boxes: ``(P, 4)`` decoded predicted boxes, with grad.
        target_boxes: ``(P, 4)`` assigned ground truths.
        labels: ``(P,)`` assigned classes.
        ious: ``(P,)`` detached IoU of ``boxes`` with ``target_boxes``.
        scores: ``(P,)`` detached sigmoid score of the assigned class.
        quality: ``(P,)`` quality logits or ``None``.
        init_boxes: ``(P, 4)`` boxes before VFNet refinement or ``None``.
        avg_factor: number of positives averaged over ranks, ≥ 1.
    """

    prior_inds: Tensor
    reg: Tensor
    boxes: Tensor
    target_boxes: Tensor
    labels: Tensor
    ious: Tensor
    scores: Tensor
    quality: Tensor | None
    init_boxes: Tensor | None
    avg_factor: float


def flatten_levels(maps: list[Tensor], k: int) -> Tensor:
    """``L`` maps ``(N, A·k, H, W)`` -> ``(N, R, k)`` in prior order (level, y, x, anchor)."""
    out = []
    for m in maps:
        n, _, h, w = m.shape
        out.append(m.view(n, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k))
    return torch.cat(out, dim=1)


def pad_targets(targets: list[dict], num_classes: int, device: torch.device) -> GtBatch:
    """Stack per-image targets into :class:`GtBatch`, validating each field."""
    boxes, labels, crowd = [], [], []
    for i, t in enumerate(targets):
        b = torch.as_tensor(t.get("boxes", torch.zeros(0, 4)), dtype=torch.float32)
        lab = torch.as_tensor(t.get("labels", torch.zeros(0)), dtype=torch.int64)
        if b.dim() != 2 or b.shape[-1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must be (M, 4), got {tuple(b.shape)}")
        if lab.shape != b.shape[:1]:
            raise ValueError(f"targets[{i}]['labels'] must be ({len(b)},), got {tuple(lab.shape)}")
        if len(lab) and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
            raise ValueError(
                f"targets[{i}]['labels'] must lie in 0..{num_classes - 1}, "
                f"got {lab.min().item()}..{lab.max().item()}"
            )
        c = torch.as_tensor(t.get("iscrowd", torch.zeros(len(b))), dtype=torch.bool)
        boxes.append(b.to(device))
        labels.append(lab.to(device))
        crowd.append(c.reshape(-1).to(device))
    m = max([1] + [len(b) for b in boxes])  # M ≥ 1 keeps reductions over M well defined
    n = len(targets)
    out = GtBatch(
        torch.zeros(n, m, 4, device=device),
        torch.zeros(n, m, dtype=torch.int64, device=device),
        torch.zeros(n, m, dtype=torch.bool, device=device),
        torch.zeros(n, m, dtype=torch.bool, device=device),
    )
    for i, (b, lab, c) in enumerate(zip(boxes, labels, crowd)):
        out.boxes[i, : len(b)] = b
        out.labels[i, : len(b)] = lab
        out.mask[i, : len(b)] = True
        out.crowd[i, : len(b)] = c
    return out


def bce_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed binary cross-entropy with logits (quality branches), ``(P,), (P,) -> ()``."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


def _zero(*tensors: Tensor | None) -> Tensor:
    """A zero loss still connected to ``tensors`` (DDP requires every output to get a grad)."""
    return sum(t.sum() * 0.0 for t in tensors if t is not None)


class DenseDetector(nn.Module):
    """Shared body of RetinaNet, ATSS and FCOS+ATSS.

    Subclasses implement :meth:`build_priors`, :meth:`build_head`, :meth:`decode_boxes`,
    :meth:`encode_targets` and may override :meth:`extra_losses`, :meth:`reg_weighting`
    and :meth:`prior_scores`.

    Args:
        cfg: the model section of the config; ``cfg.num_classes`` must be set.
    """

    #: assigner used when ``cfg.assigner`` is empty
    default_assigner = "atss"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.assigner = cfg.assigner or self.default_assigner
        self.assigner_args = dict(cfg.assigner_args)
        self.use_pred_boxes = bool(self.assigner_args.pop("use_pred_boxes", False))
        if self.assigner not in KNOWN_ASSIGNERS:
            raise ValueError(
                f"assigner: unknown {self.assigner!r}; choose one of {KNOWN_ASSIGNERS}"
            )
        if self.use_pred_boxes and self.assigner != "eatss":
            raise ValueError(
                f"assigner_args.use_pred_boxes needs assigner 'eatss', got {self.assigner!r}"
            )
        self.backbone = ResNetBackbone(cfg.backbone, cfg.pretrained, cfg.frozen_stages)
        self.fpn = FPN(self.backbone.out_channels, cfg.fpn_channels)
        self.priors = self.build_priors(cfg)
        self.head = self.build_head(cfg)
        self.cls_loss = build_cls_loss(cfg.cls_loss, **cfg.cls_loss_args)
        self.reg_loss = build_reg_loss(cfg.reg_loss, **cfg.reg_loss_args)
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)

    # ----------------------------------------------------------------- subclass hooks
    def build_priors(self, cfg: ModelConfig) -> PriorGenerator:
        raise NotImplementedError

    def build_head(self, cfg: ModelConfig) -> DenseHead:
        raise NotImplementedError

    def decode_boxes(self, reg: Tensor, priors: Priors) -> Tensor:
        """``(N, R, 4)`` raw regression -> ``(N, R, 4)`` xyxy boxes (float32)."""
        raise NotImplementedError

    def encode_targets(self, priors: Priors, prior_inds: Tensor, targets: Tensor) -> Tensor:
        """``(P, 4)`` target boxes of priors ``prior_inds`` -> ``(P, 4)`` regression targets."""
        raise NotImplementedError

    def extra_losses(self, pos: Positives, priors: Priors) -> dict[str, Tensor]:
        """Losses beyond classification and regression (quality branches)."""
        return {}

    def reg_weighting(self, pos: Positives, priors: Priors) -> tuple[Tensor | None, float]:
        """Per-positive regression weight and its normaliser; default: none, ``N_pos``."""
        return None, pos.avg_factor

    def prior_scores(self, cls: Tensor, quality: Tensor | None) -> Tensor:
        """Test-time scores ``(N, R, C)`` from logits ``(N, R, C)`` and quality ``(N, R)``."""
        scores = cls.sigmoid()
        return scores if quality is None else scores * quality.sigmoid()[..., None]

    # ----------------------------------------------------------------------- forward
    def forward(
        self,
        images: Tensor,
        image_sizes: list[tuple[int, int]],
        targets: list[dict] | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Losses (training) or detections (eval); see docs/architecture.md.

        Args:
            images: ``(N, 3, H, W)`` in [0, 1], zero-padded.
            image_sizes: ``N`` (h, w) of the unpadded images.
            targets: ``N`` dicts with ``boxes (M, 4)``, ``labels (M,)``, ``iscrowd (M,)``;
                required in training mode.
        Returns:
            training: dict of scalar losses ``loss_*``; eval: ``N`` dicts with
            ``boxes (K, 4)``, ``scores (K,)``, ``labels (K,)``.
        """
        x = self.preprocess(images, image_sizes)
        out = self.head(self.fpn(self.backbone(x)))
        priors = self.priors([m.shape[-2:] for m in out.cls_logits], images.device)
        if not self.training:
            return self.inference(out, priors, image_sizes)
        if targets is None or len(targets) != len(images):
            got = None if targets is None else len(targets)
            raise ValueError(
                f"targets: training needs one dict per image ({len(images)}), got {got}"
            )
        gt = pad_targets(targets, self.num_classes, images.device)
        # Losses in float32 whatever the autocast state: logits and IoUs need the range.
        with torch.autocast(images.device.type, enabled=False):
            return self.losses(out, priors, gt)

    def preprocess(self, images: Tensor, image_sizes: list[tuple[int, int]]) -> Tensor:
        """Normalise with ImageNet statistics; the padding stays exactly 0 afterwards."""
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"images must be a float (N, 3, H, W) tensor, got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if len(image_sizes) != len(images):
            raise ValueError(f"image_sizes has {len(image_sizes)} entries for {len(images)} images")
        h, w = images.shape[-2:]
        for i, (hi, wi) in enumerate(image_sizes):
            if not (0 < hi <= h and 0 < wi <= w):
                raise ValueError(f"image_sizes[{i}] = {(hi, wi)} does not fit the {h}×{w} batch")
        sizes = torch.tensor(image_sizes, device=images.device)  # (N, 2)
        rows = torch.arange(h, device=images.device)[None, :] < sizes[:, :1]  # (N, H)
        cols = torch.arange(w, device=images.device)[None, :] < sizes[:, 1:]  # (N, W)
        inside = (rows[:, :, None] & cols[:, None, :])[:, None]  # (N, 1, H, W)
        x = (images - self.pixel_mean) / self.pixel_std
        return x * inside.to(x.dtype)

    # ---------------------------------------------------------------------- training
    def losses(self, out: HeadOutputs, priors: Priors, gt: GtBatch) -> dict[str, Tensor]:
        """Assign priors, then classification, regression and extra losses (scalars).

        Every criterion is called even when this rank has no positive (or no valid
        prior): stateful criteria all-reduce their statistics, and a rank that skipped
        the call would leave the others waiting in the collective forever.
        """
        cls = flatten_levels(out.cls_logits, self.num_classes).float()  # (N, R, C)
        reg = flatten_levels(out.box_reg, 4).float()  # (N, R, 4)
        quality = flatten_levels(out.quality, 1)[..., 0].float() if out.quality else None
        init = flatten_levels(out.box_reg_init, 4).float() if out.box_reg_init else None
        boxes = self.decode_boxes(reg, priors)  # (N, R, 4)
        assign = self.assign(priors, gt, boxes)
        valid = assign.labels >= 0  # ignored priors take no part
        ious = self.prior_ious(boxes, gt, assign)  # (N, R), detached
        num_pos = assign.pos_mask.sum().float()
        avg_factor, n_pos = torch.stack((reduce_mean(num_pos), num_pos)).tolist()  # one sync
        avg_factor = max(avg_factor, 1.0)
        losses = {
            "loss_cls": self.cls_loss(cls[valid], assign.labels[valid], ious[valid], avg_factor)
        }
        pos = self.positives(cls, reg, boxes, quality, init, priors, gt, assign, ious, avg_factor)
        weight, reg_avg = self.reg_weighting(pos, priors)
        losses["loss_reg"] = self.reg_loss(
            pos.boxes,
            pos.target_boxes,
            scores=pos.scores,
            weight=weight,
            pred_deltas=pos.reg,
            target_deltas=self.encode_targets(priors, pos.prior_inds, pos.target_boxes),
            avg_factor=reg_avg,
        )
        losses.update(self.extra_losses(pos, priors))
        if n_pos == 0:  # a criterion may return a constant 0: keep every output in the graph
            losses = {k: v + _zero(cls, reg, quality, init) for k, v in losses.items()}
        return losses

    def positives(
        self,
        cls: Tensor,
        reg: Tensor,
        boxes: Tensor,
        quality: Tensor | None,
        init: Tensor | None,
        priors: Priors,
        gt: GtBatch,
        assign: AssignResult,
        ious: Tensor,
        avg_factor: float,
    ) -> Positives:
        """Gather the per-positive tensors of the batch into :class:`Positives`."""
        img, prior = assign.pos_mask.nonzero(as_tuple=True)
        labels = assign.labels[img, prior]
        init_boxes = None
        if init is not None:
            init_boxes = self.decode_boxes(init[img, prior][None], _subset(priors, prior))[0]
        return Positives(
            prior_inds=prior,
            reg=reg[img, prior],
            boxes=boxes[img, prior],
            target_boxes=gt.boxes[img, assign.gt_inds[img, prior]],
            labels=labels,
            ious=ious[img, prior],
            scores=cls[img, prior, labels].detach().sigmoid(),
            quality=None if quality is None else quality[img, prior],
            init_boxes=init_boxes,
            avg_factor=avg_factor,
        )

    @torch.no_grad()
    def assign(self, priors: Priors, gt: GtBatch, pred_boxes: Tensor) -> AssignResult:
        """Run the configured assigner (without gradients) on the padded batch."""
        from hcral.assigners import ASSIGNERS  # written alongside; imported when first needed

        kwargs = dict(
            priors=priors.boxes,
            gt_boxes=gt.boxes,
            gt_labels=gt.labels,
            gt_mask=gt.mask,
            gt_crowd=gt.crowd,
            num_classes=self.num_classes,
        )
        if self.assigner != "max_iou":
            kwargs["num_level_priors"] = priors.num_level_priors
        if self.use_pred_boxes:
            kwargs["pred_boxes"] = pred_boxes.detach()
        return ASSIGNERS[self.assigner](**kwargs, **self.assigner_args)

    @torch.no_grad()
    def prior_ious(self, boxes: Tensor, gt: GtBatch, assign: AssignResult) -> Tensor:
        """``(N, R)`` IoU per prior, as the classification criterion expects.

        Positives: IoU of the predicted box with the assigned GT. Negatives: the largest
        IoU of the predicted box with the image's non-crowd GTs, computed only for
        criteria that declare ``needs_negative_ious`` (HCRAC); 0 otherwise.
        """
        ious = boxes.new_zeros(boxes.shape[:2])
        if getattr(self.cls_loss, "needs_negative_ious", False):
            real = gt.mask & ~gt.crowd  # (N, M)
            for i in range(len(boxes)):  # one image at a time bounds memory at R × M
                iou = box_iou(boxes[i], gt.boxes[i]).masked_fill(~real[i][None], 0.0)
                ious[i] = iou.amax(dim=1)
        img, prior = assign.pos_mask.nonzero(as_tuple=True)
        target = gt.boxes[img, assign.gt_inds[img, prior]]
        ious[img, prior] = aligned_iou(boxes[img, prior], target)
        return ious

    # --------------------------------------------------------------------- inference
    def inference(
        self, out: HeadOutputs, priors: Priors, image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per level: threshold, top-k; then decode, clip, class-wise NMS, keep the best."""
        cls = flatten_levels(out.cls_logits, self.num_classes).float()
        quality = flatten_levels(out.quality, 1)[..., 0].float() if out.quality else None
        scores = self.prior_scores(cls, quality)  # (N, R, C)
        boxes = self.decode_boxes(flatten_levels(out.box_reg, 4).float(), priors)
        return [
            self.detect_image(scores[i], boxes[i], priors.num_level_priors, image_sizes[i])
            for i in range(len(scores))
        ]

    def detect_image(
        self, scores: Tensor, boxes: Tensor, counts: list[int], size: tuple[int, int]
    ) -> dict[str, Tensor]:
        """Detections of one image from ``(R, C)`` scores and ``(R, 4)`` boxes."""
        cfg, c = self.cfg, self.num_classes
        kept_boxes, kept_scores, kept_labels = [], [], []
        for s, b in zip(scores.split(counts), boxes.split(counts)):
            s = s.flatten()
            cand = (s > cfg.score_thresh).nonzero().squeeze(1)
            top, order = s[cand].topk(min(cfg.pre_nms_topk, len(cand)))
            idx = cand[order]
            kept_boxes.append(b[idx // c])
            kept_scores.append(top)
            kept_labels.append(idx % c)
        b = clip_boxes(torch.cat(kept_boxes), size)
        s, lab = torch.cat(kept_scores), torch.cat(kept_labels)
        nonempty = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s, lab = b[nonempty], s[nonempty], lab[nonempty]
        keep = batched_nms(b, s, lab, cfg.nms_thresh)[: cfg.max_detections]
        return {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}


def _subset(priors: Priors, inds: Tensor) -> Priors:
    """The priors ``inds`` as a :class:`Priors` (level counts are meaningless there)."""
    return Priors(priors.boxes[inds], priors.points[inds], priors.strides[inds], [len(inds)])


def _check_config(cfg: ModelConfig) -> None:
    if cfg.num_classes <= 0:
        raise ValueError(
            f"model.num_classes must be > 0 (set it from the data), got {cfg.num_classes}"
        )
    if list(cfg.strides) != STRIDES:
        raise ValueError(f"model.strides must be {STRIDES} (P3–P7), got {cfg.strides}")
    if cfg.fpn_channels <= 0 or cfg.num_convs < 0:
        raise ValueError(
            f"model.fpn_channels must be > 0 and num_convs ≥ 0, got {cfg.fpn_channels}, "
            f"{cfg.num_convs}"
        )
    for name in ("score_thresh", "nms_thresh"):
        value = getattr(cfg, name)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"model.{name} must be in [0, 1], got {value}")
    for name in ("pre_nms_topk", "max_detections"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"model.{name} must be > 0, got {getattr(cfg, name)}")

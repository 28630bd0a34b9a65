"""Detectors end to end on tiny inputs: losses, gradients, edge cases, inference."""

from __future__ import annotations

import pytest
import torch

import hcral.models.detector as detector_module
from hcral.boxes import aligned_iou
from hcral.models import MODELS, build_model
from hcral.models.detector import GtBatch, pad_targets

SIZES = [(128, 128), (100, 120)]
EXTRA_LOSSES = {
    "retinanet": set(),
    "atss": {"loss_centerness"},
    "fcos_atss": {"loss_quality"},
}


def _batch(device, crowd=False):
    images = torch.rand(2, 3, 128, 128, device=device)
    images[1, :, 100:, :] = 0
    images[1, :, :, 120:] = 0
    targets = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [50.0, 40.0, 120.0, 110.0]]),
            "labels": torch.tensor([0, 2]),
            "iscrowd": torch.tensor([False, crowd]),
        },
        {
            "boxes": torch.tensor([[30.0, 30.0, 90.0, 80.0]]),
            "labels": torch.tensor([1]),
            "iscrowd": torch.tensor([False]),
        },
    ]
    return images, [{k: v.to(device) for k, v in t.items()} for t in targets]


def _check_losses(losses, expected_keys):
    assert set(losses) == expected_keys
    for name, value in losses.items():
        assert value.dim() == 0 and value.dtype == torch.float32, name
        assert torch.isfinite(value), name


def _check_grads(model):
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert model.head.cls_logits.weight.grad.abs().sum() > 0
    assert model.head.box_reg.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_forward_gives_finite_scalar_losses_and_grads(name, device, tiny_cfg):
    model = build_model(tiny_cfg(name)).to(device).train()
    images, targets = _batch(device)
    losses = model(images, SIZES, targets)
    _check_losses(losses, {"loss_cls", "loss_reg"} | EXTRA_LOSSES[name])
    assert losses["loss_reg"] > 0
    sum(losses.values()).backward()
    _check_grads(model)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eval_output_respects_limits_and_image_size(name, device, tiny_cfg):
    model = build_model(tiny_cfg(name, score_thresh=0.0, max_detections=7)).to(device).eval()
    images, _ = _batch(device)
    with torch.no_grad():
        dets = model(images, SIZES)
    assert len(dets) == 2
    for det, (h, w) in zip(dets, SIZES):
        assert set(det) == {"boxes", "scores", "labels"}
        k = len(det["scores"])
        assert 0 < k <= 7 and det["boxes"].shape == (k, 4) and det["labels"].dtype == torch.int64
        boxes = det["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert ((det["labels"] >= 0) & (det["labels"] < 3)).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def test_score_thresh_filters_detections(tiny_cfg):
    model = build_model(tiny_cfg("retinanet", score_thresh=0.0, max_detections=1000)).eval()
    images, _ = _batch(torch.device("cpu"))
    with torch.no_grad():
        scores = model(images, SIZES)[0]["scores"]
        thresh = scores.median().item()  # a threshold that must drop about half of them
        model.cfg.score_thresh = thresh
        kept = model(images, SIZES)[0]["scores"]
    assert 0 < len(kept) < len(scores) and (kept > thresh).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_images_without_ground_truth_are_all_negative(name, device, tiny_cfg):
    model = build_model(tiny_cfg(name)).to(device).train()
    images, _ = _batch(device)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, SIZES, [empty, dict(empty)])
    _check_losses(losses, {"loss_cls", "loss_reg"} | EXTRA_LOSSES[name])
    assert losses["loss_cls"] > 0 and losses["loss_reg"] == 0
    sum(losses.values()).backward()
    assert model.head.cls_logits.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["atss", "fcos_atss"])
def test_criteria_run_on_every_rank_even_without_positives(name, tiny_cfg):
    # stateful criteria all-reduce inside forward: skipping the call on a rank without
    # positives would deadlock the other ranks
    model = build_model(tiny_cfg(name, cls_loss="hcrac", reg_loss="hcrar")).train()
    calls = []
    for criterion in (model.cls_loss, model.reg_loss):
        criterion.register_forward_hook(lambda m, args, out: calls.append(type(m).__name__))
    images, _ = _batch(torch.device("cpu"))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model(images, SIZES, [empty, empty])
    assert calls == ["HCRACLoss", "HCRARLoss"]
    assert all(torch.isfinite(v) for v in losses.values())


def test_crowd_boxes_are_never_targets(tiny_cfg, monkeypatch):
    model = build_model(tiny_cfg("retinanet")).train()
    seen = {}
    real_assign = model.assign

    def spy(priors, gt, pred_boxes):
        seen["gt"], seen["result"] = gt, real_assign(priors, gt, pred_boxes)
        return seen["result"]

    monkeypatch.setattr(model, "assign", spy)
    images, targets = _batch(torch.device("cpu"), crowd=True)
    losses = model(images, SIZES, targets)
    _check_losses(losses, {"loss_cls", "loss_reg"})
    gt, result = seen["gt"], seen["result"]
    assert gt.crowd.tolist() == [[False, True], [False, False]]
    assert not (result.gt_inds[0] == 1).any()  # the crowd GT of image 0 gets no positive
    assert (result.labels == -1).any()


class _SpyCls(torch.nn.Module):
    """Records the classification criterion's inputs; optionally asks for negative IoUs."""

    def __init__(self, needs_negative_ious):
        super().__init__()
        self.needs_negative_ious = needs_negative_ious
        self.calls = []

    def forward(self, logits, labels, ious, avg_factor):
        self.calls.append((logits.detach(), labels, ious, avg_factor))
        return logits.sum() * 0.0


@pytest.mark.parametrize("needs_negative_ious", [False, True])
def test_classification_criterion_inputs(tiny_cfg, monkeypatch, needs_negative_ious):
    model = build_model(tiny_cfg("atss")).train()
    model.cls_loss = _SpyCls(needs_negative_ious)
    seen = {}
    real_assign = model.assign

    def spy(priors, gt, pred_boxes):
        seen["result"] = real_assign(priors, gt, pred_boxes)
        return seen["result"]

    monkeypatch.setattr(model, "assign", spy)
    images, targets = _batch(torch.device("cpu"))
    model(images, SIZES, targets)
    (logits, labels, ious, avg_factor), result = model.cls_loss.calls[0], seen["result"]
    valid = result.labels >= 0
    assert logits.shape == (int(valid.sum()), 3) and labels.dtype == torch.int64
    assert ((labels >= 0) & (labels <= 3)).all()  # ignored priors are dropped
    assert avg_factor == max(float(result.pos_mask.sum()), 1.0)  # world of one rank
    pos = labels < 3
    assert (ious[pos] > 0).any() and ((ious >= 0) & (ious <= 1)).all()
    assert (ious[~pos] > 0).any() == needs_negative_ious


def test_prior_ious_hand_computed(tiny_cfg):
    model = build_model(tiny_cfg("atss"))
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 20], [100, 100, 110, 110]]])
    gt = GtBatch(
        boxes=torch.tensor([[[0.0, 0, 10, 10], [100, 100, 110, 110]]]),
        labels=torch.tensor([[0, 1]]),
        mask=torch.tensor([[True, True]]),
        crowd=torch.tensor([[False, True]]),
    )
    result = type("R", (), {})()
    result.pos_mask = torch.tensor([[False, True, False]])
    result.gt_inds = torch.tensor([[-1, 0, -1]])
    model.cls_loss.needs_negative_ious = False
    torch.testing.assert_close(model.prior_ious(boxes, gt, result), torch.tensor([[0.0, 0.5, 0]]))
    model.cls_loss.needs_negative_ious = True  # negatives: best non-crowd GT (crowd skipped)
    torch.testing.assert_close(model.prior_ious(boxes, gt, result), torch.tensor([[1.0, 0.5, 0]]))


def test_avg_factor_is_the_rank_mean_of_positives(tiny_cfg, monkeypatch):
    model = build_model(tiny_cfg("fcos_atss")).train()
    model.cls_loss = _SpyCls(False)
    # pretend a second rank saw 10 positives: the mean over the two ranks is used
    monkeypatch.setattr(detector_module, "reduce_mean", lambda t: (t + 10.0) / 2)
    images, targets = _batch(torch.device("cpu"))
    model(images, SIZES, targets)
    _, labels, _, avg_factor = model.cls_loss.calls[0]
    assert avg_factor == pytest.approx((float((labels < 3).sum()) + 10.0) / 2)


def test_positive_ious_are_those_of_the_decoded_boxes(tiny_cfg):
    model = build_model(tiny_cfg("fcos_atss")).train()
    captured = {}
    real = model.extra_losses

    def spy(pos, priors):
        captured["pos"] = pos
        return real(pos, priors)

    model.extra_losses = spy
    images, targets = _batch(torch.device("cpu"))
    model(images, SIZES, targets)
    pos = captured["pos"]
    torch.testing.assert_close(pos.ious, aligned_iou(pos.boxes, pos.target_boxes).detach())
    assert not pos.scores.requires_grad and ((pos.scores > 0) & (pos.scores < 1)).all()


@pytest.mark.parametrize(
    ("cls_loss", "reg_loss"),
    [("focal", "l1"), ("qfl", "giou"), ("vfl", "diou"), ("ghm", "ciou"), ("hcrac", "hcrar")],
)
def test_every_criterion_pair_trains(tiny_cfg, cls_loss, reg_loss):
    model = build_model(tiny_cfg("retinanet", cls_loss=cls_loss, reg_loss=reg_loss)).train()
    images, targets = _batch(torch.device("cpu"))
    losses = model(images, SIZES, targets)
    _check_losses(losses, {"loss_cls", "loss_reg"})
    sum(losses.values()).backward()
    _check_grads(model)


def test_vfnet_modules_train_and_infer(device, tiny_cfg):
    cfg = tiny_cfg("fcos_atss", star_dcn=True, bbox_refine=True, score_thresh=0.0)
    model = build_model(cfg).to(device).train()
    images, targets = _batch(device)
    losses = model(images, SIZES, targets)
    _check_losses(losses, {"loss_cls", "loss_reg", "loss_quality", "loss_reg_init"})
    sum(losses.values()).backward()
    _check_grads(model)
    assert model.head.refine_pred.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert all(len(d["boxes"]) > 0 for d in model(images, SIZES))


def test_eatss_with_predicted_boxes_passes_them_to_the_assigner(tiny_cfg, monkeypatch):
    import hcral.assigners

    cfg = tiny_cfg("fcos_atss", assigner="eatss", assigner_args={"use_pred_boxes": True})
    model = build_model(cfg).train()
    seen = {}
    real = hcral.assigners.ASSIGNERS["eatss"]

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setitem(hcral.assigners.ASSIGNERS, "eatss", spy)
    images, targets = _batch(torch.device("cpu"))
    model(images, SIZES, targets)
    r = sum(seen["num_level_priors"])
    assert seen["pred_boxes"].shape == (2, r, 4) and not seen["pred_boxes"].requires_grad
    assert "use_pred_boxes" not in seen


def test_autocast_losses_stay_float32(tiny_cfg):
    model = build_model(tiny_cfg("atss")).train()
    images, targets = _batch(torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, SIZES, targets)
    _check_losses(losses, {"loss_cls", "loss_reg", "loss_centerness"})


def test_preprocess_normalises_and_keeps_padding_zero(tiny_cfg):
    model = build_model(tiny_cfg("retinanet"))
    images, _ = _batch(torch.device("cpu"))
    x = model.preprocess(images, SIZES)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(x[0], (images[0] - mean) / std)
    torch.testing.assert_close(x[1, :, :100, :120], (images[1, :, :100, :120] - mean) / std)
    assert (x[1, :, 100:] == 0).all() and (x[1, :, :, 120:] == 0).all()


def test_pad_targets_masks_padding():
    t = [{"boxes": torch.ones(2, 4), "labels": torch.tensor([1, 0])}, {"boxes": torch.zeros(0, 4)}]
    gt = pad_targets(t, 3, torch.device("cpu"))
    assert gt.boxes.shape == (2, 2, 4)
    assert gt.mask.tolist() == [[True, True], [False, False]] and not gt.crowd.any()
    assert pad_targets([{"boxes": torch.zeros(0, 4)}], 3, torch.device("cpu")).mask.shape == (1, 1)


def test_bad_inputs_raise(tiny_cfg):
    model = build_model(tiny_cfg("retinanet")).train()
    images, targets = _batch(torch.device("cpu"))
    targets[1]["labels"] = torch.tensor([3])
    with pytest.raises(ValueError, match=r"targets\[1\]\['labels'\].*0\.\.2"):
        model(images, SIZES, targets)
    with pytest.raises(ValueError, match="targets"):
        model(images, SIZES)
    with pytest.raises(ValueError, match=r"image_sizes\[1\]"):
        model(images, [(128, 128), (129, 10)], targets)
    with pytest.raises(ValueError, match="images"):
        model(images[:, :1], SIZES, targets)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"name": "yolo"}, "model.name"),
        ({"num_classes": 0}, "num_classes"),
        ({"name": "retinanet", "star_dcn": True}, "star_dcn"),
        ({"assigner": "hungarian"}, "assigner"),
        ({"assigner": "atss", "assigner_args": {"use_pred_boxes": True}}, "use_pred_boxes"),
        ({"strides": [8, 16, 32]}, "strides"),
        ({"cls_loss": "nope"}, "nope"),
    ],
)
def test_bad_config_raises(tiny_cfg, overrides, match):
    with pytest.raises(ValueError, match=match):
        build_model(tiny_cfg(**overrides))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_overfits_one_image(name, tiny_cfg):
    # One image, one box: 30 Adam steps must cut the total loss clearly (~7 s per model).
    torch.manual_seed(0)
    model = build_model(tiny_cfg(name, num_classes=2)).train()
    images = torch.rand(1, 3, 128, 128) * 0.2
    images[0, :, 32:96, 40:104] += 0.7
    targets = [{"boxes": torch.tensor([[40.0, 32.0, 104.0, 96.0]]), "labels": torch.tensor([1])}]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    for _ in range(30):
        losses = model(images, [(128, 128)], targets)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append(total.item())
    assert history[-1] < 0.5 * history[0], history
    model.eval()
    with torch.no_grad():
        det = model(images, [(128, 128)])[0]
    # and it now finds the box: the best detection is the right class, tight and confident
    assert det["labels"][0] == 1 and det["scores"][0] > 0.5
    assert aligned_iou(det["boxes"][0], targets[0]["boxes"][0]) > 0.7


class _SpyReg(torch.nn.Module):
    """Records the regression criterion's inputs and returns a GIoU-free dummy loss."""

    def __init__(self):
        super().__init__()
        self.kwargs = {}

    def forward(self, pred_boxes, target_boxes, **kwargs):
        self.kwargs = dict(kwargs, pred_boxes=pred_boxes, target_boxes=target_boxes)
        return (pred_boxes - target_boxes).abs().sum() / kwargs["avg_factor"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_regression_targets_decode_back_to_the_ground_truth(name, tiny_cfg):
    model = build_model(tiny_cfg(name)).train()
    model.reg_loss = _SpyReg()
    captured = {}
    real = model.reg_weighting

    def spy(pos, priors):
        captured["pos"], captured["priors"] = pos, priors
        return real(pos, priors)

    model.reg_weighting = spy
    images, targets = _batch(torch.device("cpu"))
    model(images, SIZES, targets)
    kw, pos = model.reg_loss.kwargs, captured["pos"]
    subset = detector_module._subset(captured["priors"], pos.prior_inds)
    decoded = model.decode_boxes(kw["target_deltas"][None], subset)[0]
    torch.testing.assert_close(decoded, kw["target_boxes"], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(model.decode_boxes(kw["pred_deltas"][None], subset)[0], pos.boxes)
    assert kw["pred_deltas"].requires_grad and not kw["scores"].requires_grad


def test_atss_weights_regression_by_centerness(tiny_cfg):
    model = build_model(tiny_cfg("atss")).train()
    model.reg_loss = _SpyReg()
    images, targets = _batch(torch.device("cpu"))
    model(images, SIZES, targets)
    weight, avg = model.reg_loss.kwargs["weight"], model.reg_loss.kwargs["avg_factor"]
    assert weight.shape == model.reg_loss.kwargs["target_boxes"].shape[:1]
    assert ((weight > 0) & (weight <= 1)).all()  # ATSS positives have centres inside
    assert avg == pytest.approx(weight.sum().item())


def test_centerness_targets_hand_computed():
    from hcral.models.atss import centerness_targets

    points = torch.tensor([[5.0, 5.0], [5.0, 10.0], [30.0, 5.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]]).expand(3, 4)
    expected = torch.tensor([(5 / 15) ** 0.5, 1.0, 0.0])  # last point lies outside
    torch.testing.assert_close(centerness_targets(points, boxes), expected)

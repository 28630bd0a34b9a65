"""scripts/cls_gradients.py: the positive/background split by hand, and a real run."""

from __future__ import annotations

import math

import pytest
import torch
from tests._scripts import load_script, tiny_config

from hcral.engine.train import build_datasets, train


@pytest.fixture(scope="module")
def script():
    return load_script("cls_gradients")


def test_entry_gradients_split_by_hand(script):
    # A linear "loss" Σ w·x has gradient w. Priors: class 1, background (label 2), class 0.
    w = torch.tensor([[1.0, -2.0], [3.0, 4.0], [-5.0, 6.0]])
    labels = torch.tensor([1, 2, 0])
    pos, bg = script.entry_gradients(
        lambda x, *_: (w * x).sum(), torch.zeros(3, 2), labels, None, 1
    )
    assert pos == pytest.approx(2.0 + 5.0)  # (0, 1) and (2, 0)
    assert bg == pytest.approx(1.0 + 3.0 + 4.0 + 6.0)


def test_entry_gradients_of_focal_loss(script):
    from torchvision.ops import sigmoid_focal_loss

    from hcral.losses import build_cls_loss

    logits, labels = torch.tensor([[2.0, -1.0], [0.5, 0.3]]), torch.tensor([0, 2])
    x = logits.clone().requires_grad_()
    target = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    (grad,) = torch.autograd.grad(sigmoid_focal_loss(x, target, 0.25, 2.0, "sum") / 4.0, x)
    name, kwargs = script.LOSSES["focal"]
    focal = build_cls_loss(name, **kwargs)
    pos, bg = script.entry_gradients(focal, logits, labels, torch.zeros(2), 4.0)
    assert pos == pytest.approx(float(grad[0, 0].abs()), rel=1e-5)
    assert bg == pytest.approx(float(grad.abs().sum() - grad[0, 0].abs()), rel=1e-5)


def test_the_controls_weigh_positives_as_described(script):
    """`focal α0.36 w1.17` pushes a positive 1.68 times as hard as focal and a background
    entry as hard; `hcrac-focal ω only` pushes a positive of IoU u (1 + u) times as hard."""
    from hcral.losses import build_cls_loss

    def split(row, logits, labels, ious):
        name, kwargs = script.LOSSES[row]
        return script.entry_gradients(build_cls_loss(name, **kwargs), logits, labels, ious, 1.0)

    logits, labels = torch.tensor([[0.3, -1.0], [-2.0, -0.5]]), torch.tensor([0, 2])
    ious = torch.tensor([0.6, 0.0])  # a background prior far from every GT: ω = 1
    pos, bg = split("focal", logits, labels, ious)
    pos_m, bg_m = split("focal α0.36 w1.17", logits, labels, ious)
    assert pos_m / pos == pytest.approx(0.36 * 1.17 / 0.25) == pytest.approx(1.68, abs=0.01)
    assert bg_m / bg == pytest.approx(0.64 * 1.17 / 0.75) == pytest.approx(1.0, abs=0.005)
    pos_w, bg_w = split("hcrac-focal ω only", logits, labels, ious)
    assert (pos_w / pos, bg_w / bg) == (pytest.approx(1.6), pytest.approx(1.0))


def test_measure_a_trained_run(script, tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.train.max_iters = 1
    cfg.train.output_dir = str(tmp_path / "run")
    train(cfg, train_set=build_datasets(cfg)[0])  # a run folder: config.yaml + last.pt
    got = script.measure(tmp_path / "run", batches=2)
    assert script.measure(tmp_path / "run", batches=2) == got  # same batches, same flips
    assert set(got) == set(script.LOSSES)
    for pos, bg in got.values():
        assert math.isfinite(pos) and math.isfinite(bg) and pos > 0 and bg > 0

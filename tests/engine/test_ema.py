"""ModelEMA: the update formula by hand, the ramp, buffers, and its place in training."""

from __future__ import annotations

import math

import pytest
import torch
from tests.engine._fakes import ToyDataset, ToyDetector, toy_config
from torch import nn

from hcral.engine.checkpoint import (
    CheckpointError,
    inference_weights,
    load_checkpoint,
    load_weights,
)
from hcral.engine.ema import ModelEMA
from hcral.engine.train import train


def test_update_follows_the_ramped_formula_by_hand():
    model = nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(1.0)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    expected = 1.0
    for t, w in enumerate([3.0, -1.0, 5.0], start=1):
        model.weight.data.fill_(w)
        d = 0.9 * (1 - math.exp(-t / 2.0))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(model)
        expected = d * expected + (1 - d) * w
        assert ema.module.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema.updates == 3
    # the trained model is untouched and the copy is frozen and in eval mode
    assert model.weight.item() == 5.0 and model.weight.requires_grad
    assert not ema.module.weight.requires_grad and not ema.module.training


def test_decay_ramps_up_to_its_final_value():
    ema = ModelEMA(nn.Linear(1, 1), decay=0.999, tau=10.0)
    assert ema.current_decay() == pytest.approx(0.999 * (1 - math.exp(-0.1)))
    ema.updates = 200  # 20 tau later the ramp is over
    assert ema.current_decay() == pytest.approx(0.999, abs=1e-8)


def test_float_buffers_are_averaged_and_integer_buffers_copied():
    model = nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.5, tau=1e-9)  # the ramp is over at once: decay 0.5
    model.train()
    model(torch.tensor([[2.0, 4.0], [4.0, 8.0]]))  # running_mean: 0.1 * (3, 6)
    ema.update(model)
    torch.testing.assert_close(ema.module.running_mean, torch.tensor([0.15, 0.3]))
    assert ema.module.num_batches_tracked.item() == 1 == model.num_batches_tracked.item()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(nn.Linear(1, 1), decay=1.0, tau=1.0)
    with pytest.raises(ValueError, match="tau"):
        ModelEMA(nn.Linear(1, 1), decay=0.9, tau=0.0)


def _run(out, resume=None, model=None, evaluate_fn=None, **train_kw) -> dict:
    cfg = toy_config(str(out), **({"ema_decay": 0.8, "ema_tau": 3.0} | train_kw))
    torch.manual_seed(0)
    data = {"train_set": ToyDataset()}
    if evaluate_fn is not None:
        data["val_set"] = ToyDataset(2)
    return train(cfg, resume, model=model or ToyDetector(), evaluate_fn=evaluate_fn, **data)


def test_training_evaluates_the_ema_weights_and_saves_both(tmp_path):
    seen = []

    def evaluate(model, dataset, cfg, device, output_json=None):
        seen.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        return {"AP": 1.0}

    model = ToyDetector()
    result = _run(tmp_path, model=model, evaluate_fn=evaluate)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert result["evaluated_weights"] == "ema" and ckpt["ema"]["updates"] == 9
    ema_weights, raw = ckpt["ema"]["module"], ckpt["model"]
    assert not torch.allclose(ema_weights["head.weight"], raw["head.weight"])
    torch.testing.assert_close(seen[-1]["head.weight"], ema_weights["head.weight"])
    torch.testing.assert_close(model.head.weight.detach().cpu(), raw["head.weight"])
    assert model.training  # evaluating the EMA copy left the trained model as it was


def test_without_ema_the_trained_weights_are_evaluated(tmp_path):
    result = _run(tmp_path, ema_decay=0.0)
    assert result["evaluated_weights"] == "raw"
    assert load_checkpoint(tmp_path / "last.pt")["ema"] is None


def test_ema_does_not_change_the_trained_weights(tmp_path):
    """The average only watches: with or without it, the same seed trains the same
    weights (so `--weights raw` of an EMA run is the run without EMA)."""
    _run(tmp_path / "ema")
    _run(tmp_path / "plain", ema_decay=0.0)
    ema, plain = (load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("ema", "plain"))
    for name, value in plain.items():
        torch.testing.assert_close(ema[name], value, atol=0, rtol=0, msg=name)


def test_resume_restores_the_average_bit_for_bit(tmp_path):
    _run(tmp_path / "full")
    _run(tmp_path / "cut", max_iters=4)
    _run(tmp_path / "cut", resume=True)
    full, cut = (load_checkpoint(tmp_path / d / "last.pt")["ema"] for d in ("full", "cut"))
    assert full["updates"] == cut["updates"] == 9
    for name, value in full["module"].items():
        torch.testing.assert_close(cut["module"][name], value, atol=1e-6, rtol=0, msg=name)


def test_ema_switched_on_at_resume_starts_from_the_resumed_weights(tmp_path, caplog):
    _run(tmp_path, max_iters=4, ema_decay=0.0)
    raw = load_checkpoint(tmp_path / "last.pt")["model"]
    _run(tmp_path, resume=True, max_iters=5)  # one more step, now with an EMA
    assert "holds no EMA weights" in caplog.text
    ema = load_checkpoint(tmp_path / "last.pt")["ema"]
    assert ema["updates"] == 1
    # the first update's decay is 0.8 * (1 - e^(-1/3)): mostly the resumed weights
    assert not torch.equal(ema["module"]["head.weight"], raw["head.weight"])
    d = 0.8 * (1 - math.exp(-1 / 3))
    new = load_checkpoint(tmp_path / "last.pt")["model"]["head.weight"]
    torch.testing.assert_close(ema["module"]["head.weight"], d * raw["head.weight"] + (1 - d) * new)


def test_skipped_steps_do_not_move_the_average(tmp_path):
    result = _run(tmp_path, model=ToyDetector(nan_image_ids=(105,)), on_nonfinite="skip")
    assert result["skipped_steps"] == 3
    assert load_checkpoint(tmp_path / "last.pt")["ema"]["updates"] == 6


def test_inference_weights_choice(tmp_path):
    _run(tmp_path)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert inference_weights(ckpt) is ckpt["ema"]["module"]
    assert inference_weights(ckpt, "ema") is ckpt["ema"]["module"]
    assert inference_weights(ckpt, "raw") is ckpt["model"]
    with pytest.raises(ValueError, match="weights must be one of"):
        inference_weights(ckpt, "best")
    with pytest.raises(CheckpointError, match="no EMA weights"):
        inference_weights({**ckpt, "ema": None}, "ema", "x.pt")
    assert inference_weights({k: v for k, v in ckpt.items() if k != "ema"}) is ckpt["model"]
    model = load_weights(ToyDetector(), tmp_path / "last.pt", which="raw")
    torch.testing.assert_close(model.head.weight.detach(), ckpt["model"]["head.weight"])
    model = load_weights(ToyDetector(), tmp_path / "last.pt")
    torch.testing.assert_close(model.head.weight.detach(), ckpt["ema"]["module"]["head.weight"])

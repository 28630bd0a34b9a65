"""Real training on the built-in sample data: the loss falls (e2e), a few images overfit (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hcral.config import Config
from hcral.data.sample import make_sample
from hcral.engine.checkpoint import load_checkpoint
from hcral.engine.logging import read_csv
from hcral.engine.train import train


def _tiny_config(paths: dict[str, str], out: Path, epochs: int, lr: float) -> Config:
    cfg = Config()
    for key, value in paths.items():
        setattr(cfg.data, key, value)
    cfg.data.min_size, cfg.data.max_size = [128], 128
    cfg.model.backbone, cfg.model.fpn_channels, cfg.model.num_convs = "resnet18", 32, 2
    t = cfg.train
    t.output_dir, t.epochs, t.batch_size, t.base_batch_size, t.lr = str(out), epochs, 4, 4, lr
    t.warmup_iters, t.lr_steps, t.log_every = 10, [epochs * 3 // 4], 1
    cfg.eval.batch_size = 8
    return cfg


@pytest.mark.e2e
def test_short_training_run_lowers_the_loss(tmp_path):
    paths = make_sample(tmp_path / "data", num_train=8, num_val=4, image_size=128)
    cfg = _tiny_config(paths, tmp_path / "run", epochs=15, lr=0.01)
    cfg.train.ema_decay, cfg.train.ema_tau = 0.9, 5.0  # the real detector's EMA path too
    result = train(cfg)
    losses = [row["loss"] for row in read_csv(tmp_path / "run/log.csv")]
    assert len(losses) == result["iterations"] == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, losses
    assert {"AP", "AP50", "AP75", "APs", "APm", "APl"} <= set(result)
    assert json.loads((tmp_path / "run/metrics.json").read_text())["iterations"] == 30
    assert (tmp_path / "run/last.pt").is_file() and (tmp_path / "run/epoch_15.pt").is_file()
    ckpt = load_checkpoint(tmp_path / "run/last.pt")
    assert result["evaluated_weights"] == "ema" and ckpt["ema"]["updates"] == 30
    assert ckpt["ema"]["module"].keys() == ckpt["model"].keys()


@pytest.mark.slow
def test_overfits_a_few_images(tmp_path):
    paths = make_sample(tmp_path / "data", num_train=4, num_val=1, image_size=128)
    paths["val_json"], paths["val_images"] = paths["train_json"], paths["train_images"]
    cfg = _tiny_config(paths, tmp_path / "run", epochs=150, lr=0.02)
    cfg.data.flip_prob = 0.0
    cfg.train.log_every, cfg.train.checkpoint_every = 10, 0  # one checkpoint, at the end
    result = train(cfg)
    assert result["AP50"] > 50.0, result  # percent

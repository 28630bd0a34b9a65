"""predict(): weights + stored config → PNGs with drawn boxes and a detections JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hcral.config import Config, ConfigError
from hcral.engine.checkpoint import export_weights, save_checkpoint
from hcral.models import build_model
from hcral.predict import draw_detections, load_detector, predict

NAMES = ["zero", "one", "two"]


def _cfg(tmp_path) -> Config:
    cfg = Config()
    m = cfg.model
    m.name, m.backbone, m.fpn_channels, m.num_convs, m.num_classes = (
        "fcos_atss",
        "resnet18",
        32,
        1,
        3,
    )
    # score_thresh 0: an untrained model's scores (~0.01) still give boxes to draw
    m.score_thresh, m.max_detections = 0.0, 4
    cfg.data.min_size, cfg.data.max_size = [192], 256
    cats = [{"id": 2 * i + 1, "name": n} for i, n in enumerate(NAMES)][::-1]  # unsorted
    cfg.data.train_json = str(tmp_path / "train.json")
    (tmp_path / "train.json").write_text(json.dumps({"categories": cats}))
    return cfg


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.full((150, 210, 3), 128, np.uint8)).save(path)
    return path


def _checkpoint(tmp_path, cfg) -> tuple:
    model = build_model(cfg.model)
    pt = save_checkpoint(
        {"format": 1, "model": model.state_dict(), "config": cfg.to_dict()},
        tmp_path / "run" / "epoch_1.pt",
    )
    meta = {"config": json.dumps(cfg.to_dict()), "class_names": json.dumps(["a", "b", "c"])}
    st = export_weights(model, tmp_path / "model.safetensors", metadata=meta)
    return model, pt, st


def test_predict_from_checkpoint_writes_png_and_json(tmp_path, image):
    cfg = _cfg(tmp_path)
    _, pt, _ = _checkpoint(tmp_path, cfg)
    out = predict(pt, [image, image], tmp_path / "out", score_thresh=0.0)
    records = json.loads(out.read_text())
    assert len(records) == 2
    for rec in records:
        png = Image.open(out.parent / rec["drawn"])
        assert png.size == (210, 150)  # drawn on the original image, not the resized one
        drawn = np.asarray(png.convert("RGB"))
        assert (drawn != 128).any()  # boxes were drawn
        assert 1 <= len(rec["detections"]) <= 4
        for det in rec["detections"]:
            x1, y1, x2, y2 = det["bbox"]
            assert 0 <= x1 <= x2 <= 210 + 1e-3 and 0 <= y1 <= y2 <= 150 + 1e-3
            # names from train.json's categories in id order
            assert det["label"] == NAMES[det["class_id"]]
    assert records[0]["drawn"] != records[1]["drawn"]


def test_score_thresh_filters_everything_above_one(tmp_path, image):
    cfg = _cfg(tmp_path)
    _, pt, _ = _checkpoint(tmp_path, cfg)
    out = predict(pt, [image], tmp_path / "out", score_thresh=1.0)
    assert json.loads(out.read_text())[0]["detections"] == []
    with pytest.raises(ValueError, match="score_thresh"):
        predict(pt, [image], tmp_path / "out", score_thresh=1.5)


def test_safetensors_carries_config_and_names(tmp_path):
    cfg = _cfg(tmp_path)
    model, _, st = _checkpoint(tmp_path, cfg)
    loaded, loaded_cfg, names = load_detector(st)
    assert names == ["a", "b", "c"] and loaded_cfg == cfg and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_weights_without_config_need_one(tmp_path):
    cfg = _cfg(tmp_path)
    st = export_weights(build_model(cfg.model), tmp_path / "bare.safetensors")
    with pytest.raises(ConfigError, match="no config"):
        load_detector(st)
    _, _, names = load_detector(st, cfg)
    assert names == NAMES
    cfg.model.num_classes = 5  # the weights have 3 classes
    with pytest.raises(ValueError, match="does not fit"):
        load_detector(st, cfg)


def test_draw_detections_colours_the_box_outline():
    image = torch.zeros(3, 40, 50, dtype=torch.uint8)
    det = {
        "boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0]]),
        "scores": torch.tensor([0.9]),
        "labels": torch.tensor([1]),
    }
    out = draw_detections(image, det, ["a", "b"])
    assert out[:, 15, 10].sum() > 0 and out[:, 5, 20].sum() > 0  # on the outline
    assert out[:, 35, 45].sum() == 0  # outside the box and its caption
    empty = {k: v[:0] for k, v in det.items()}
    assert torch.equal(draw_detections(image, empty, ["a", "b"]), image)


def test_checkpoint_ema_weights_are_used_unless_raw_is_asked(tmp_path, image, capsys):
    from hcral import cli

    cfg = _cfg(tmp_path)
    model, plain, _ = _checkpoint(tmp_path, cfg)
    raw = model.state_dict()
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in raw.items()}
    state = {"format": 1, "model": raw, "ema": {"module": ema, "updates": 3}}
    pt = save_checkpoint({**state, "config": cfg.to_dict()}, tmp_path / "ema" / "last.pt")
    for weights, expected in [("auto", ema), ("ema", ema), ("raw", raw)]:
        loaded = load_detector(pt, weights=weights)[0].state_dict()
        for name, value in expected.items():
            torch.testing.assert_close(loaded[name], value, msg=f"{weights}: {name}")
    assert load_detector(plain)[0].state_dict().keys() == raw.keys()  # no EMA: trained ones
    argv = ["predict", str(plain), str(image), "--out", str(tmp_path / "o"), "--weights", "ema"]
    assert cli.main(argv) == 2
    assert "holds no EMA weights" in capsys.readouterr().err

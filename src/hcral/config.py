"""Experiment configuration: four flat dataclasses, loaded from one YAML file.

A config file has up to four sections, ``model``, ``data``, ``train`` and ``eval``,
each a flat mapping onto the dataclass of that name. There is no inheritance between
files: each experiment file states what it changes from the dataclass defaults.
Unknown sections or keys are errors naming the file and key. ``--set key=value``
overrides use dotted keys (``train.lr=0.02``) and YAML-parse the value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the file and key."""


@dataclass
class ModelConfig:
    name: str = "fcos_atss"  # retinanet | atss | fcos_atss
    num_classes: int = 0  # 0: take it from the training dataset
    backbone: str = "resnet18"  # resnet18 | resnet34 | resnet50 | resnet101
    pretrained: str | None = None  # local path to backbone weights; never downloaded
    frozen_stages: int = 1  # ResNet stem + stages frozen (0 = none)
    fpn_channels: int = 256
    num_convs: int = 4  # convs per head tower
    strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    anchor_scale: float = 8.0  # ATSS/FCOS+ATSS: one square prior of anchor_scale × stride
    assigner: str = ""  # max_iou | atss | eatss; "" = the detector default (RetinaNet: max_iou)
    assigner_args: dict[str, Any] = field(default_factory=dict)
    cls_loss: str = "focal"  # focal | qfl | vfl | ghm | hcrac
    cls_loss_args: dict[str, Any] = field(default_factory=dict)
    reg_loss: str = "giou"  # l1 | giou | diou | ciou | eiou | focal_eiou | alpha_iou | wiou | hcrar
    reg_loss_args: dict[str, Any] = field(default_factory=dict)
    star_dcn: bool = False  # VFNet star-shaped deformable conv (FCOS+ATSS)
    bbox_refine: bool = False  # VFNet box refinement (FCOS+ATSS)
    score_thresh: float = 0.05
    pre_nms_topk: int = 1000  # per level
    nms_thresh: float = 0.6
    max_detections: int = 100


@dataclass
class DataConfig:
    train_json: str = "data/sample/annotations/train.json"
    train_images: str = "data/sample/train"
    val_json: str = "data/sample/annotations/val.json"
    val_images: str = "data/sample/val"
    min_size: list[int] = field(default_factory=lambda: [320])  # several = multi-scale
    max_size: int = 512
    flip_prob: float = 0.5
    size_divisibility: int = 128  # pad so P7 (stride 128) tiles the image
    skip_bad: bool = False  # skip broken annotations with a counted warning
    num_workers: int = 0


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    epochs: int = 12
    max_iters: int = 0  # > 0 stops early (tests, smoke runs)
    batch_size: int = 8  # per process
    lr: float = 0.01  # for base_batch_size; scaled linearly with the global batch
    base_batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.1
    lr_steps: list[int] = field(default_factory=lambda: [8, 11])  # epochs; ×0.1 each
    grad_clip: float = 35.0  # max grad norm; 0 = off
    amp: bool = True  # only takes effect on CUDA
    deterministic: bool = False  # CUDA: deterministic kernels, so a resumed run is exact
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 1  # epochs
    on_nonfinite: str = "stop"  # stop | skip
    eval_every: int = 0  # epochs; 0 = only at the end
    ema_decay: float = 0.0  # > 0: also keep an EMA of the weights and evaluate it (0.9998)
    ema_tau: float = 2000.0  # EMA ramp-up: decay_t = ema_decay * (1 - exp(-t / ema_tau))


@dataclass
class EvalConfig:
    batch_size: int = 8
    max_images: int = 0  # > 0 evaluates a prefix (quick checks)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


def config_from_dict(raw: dict[str, Any], where: str = "<dict>") -> Config:
    """Build a :class:`Config` from nested dicts; unknown keys raise :class:`ConfigError`."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping, got {type(raw).__name__}")
    classes = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
    unknown = sorted(set(raw) - set(classes))
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {unknown}; known: {sorted(classes)}")
    parts = {}
    for name, cls in classes.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section '{name}' must be a mapping")
        parts[name] = _section(cls, values, f"{where}: section '{name}'")
    return Config(**parts)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a raw config dict (values parsed as YAML)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.lr=0.02")
        section, name = parts
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"--set {item!r}: section '{section}' is not a mapping")
        raw[section][name] = yaml.safe_load(value)
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config with ``yaml.safe_load`` (no Python objects) and apply overrides."""
    raw: dict[str, Any] = {}
    where = "<defaults>"
    if path is not None:
        where = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{where}: cannot read config: {e}") from e
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: invalid YAML: {e}") from e
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, where)

"""Helpers for the tests of scripts/: import a script by path, and a tiny training config."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hcral.config import Config
from hcral.data.sample import make_sample

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str, folder: Path = SCRIPTS) -> ModuleType:
    """``<folder>/<name>.py`` (default scripts/, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses defined in the file look their module up there
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def tiny_config(tmp_path: Path) -> Config:
    """A few-second training setup: 4 sample images of 128 px, a small ATSS, batch 2."""
    paths = make_sample(tmp_path / "data", num_train=4, num_val=1, image_size=128)
    cfg = Config()
    for key, value in paths.items():
        setattr(cfg.data, key, value)
    cfg.data.min_size, cfg.data.max_size = [128], 128
    cfg.model.fpn_channels, cfg.model.num_convs = 32, 1
    cfg.train.batch_size, cfg.train.log_every = 2, 1
    return cfg


def run_trace(script: ModuleType, cfg: Config, tmp_path: Path, iters: int = 3):
    """Run a trace script's ``main`` on ``cfg``: (its trace.csv rows, the run's log.csv rows)."""
    import csv

    import yaml

    from hcral.engine.logging import read_csv

    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    script.main([str(config), "--iters", str(iters), "--out", str(tmp_path / "trace")])
    with open(tmp_path / "trace" / "trace.csv") as f:
        rows = list(csv.DictReader(f))
    assert (tmp_path / "trace" / "trace.png").stat().st_size > 10_000
    return rows, read_csv(tmp_path / "trace" / "run" / "log.csv")

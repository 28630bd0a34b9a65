"""Shared helpers of the compare tests: grid writing and picklable fake trainers."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from hcral import compare
from hcral.config import Config

REPO = Path(__file__).resolve().parents[2]
ABLATIONS = REPO / "configs" / "ablations"


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_base_cfg(tmp_path: Path) -> Path:
    return write_yaml(
        tmp_path / "base.yaml",
        {
            "model": {"name": "atss", "cls_loss_args": {"mu": 5.0, "theta": 0.7}},
            "train": {"seed": 10},
        },
    )


class FakeTrain:
    """Deterministic metrics from (mu, seed); records calls; can crash once on demand."""

    def __init__(self, crash_on: tuple[str, int] | None = None):
        self.calls: list[tuple[str, int, bool | None]] = []
        self.crash_on = crash_on

    def __call__(self, cfg: Config, resume=None):
        out = Path(cfg.train.output_dir)
        key = (out.parent.name, cfg.train.seed)
        self.calls.append((out.parent.name, cfg.train.seed, resume))
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))  # as training does
        if self.crash_on == key:
            self.crash_on = None
            (out / compare.CHECKPOINT_NAME).write_bytes(b"ckpt")
            raise RuntimeError("killed")
        ap = 30.0 + cfg.model.cls_loss_args.get("mu", 0) + 0.1 * (cfg.train.seed - 10)
        return {"AP": ap, "AP50": ap + 20, "AP75": ap - 2, "APs": 1.0, "APm": 2.0, "APl": 3.0}


def write_grid(tmp_path: Path, base_cfg: Path) -> Path:
    return write_yaml(
        tmp_path / "grid.yaml",
        {"base": base_cfg.name, "studies": {"mu": {"axes": {"model.cls_loss_args.mu": [0, 5]}}}},
    )


class ChildTrain:
    """A picklable fake for ``--jobs``: records the worker's pid, GPU and threads."""

    def __init__(self, fail_cell: str = ""):
        self.fail_cell = fail_cell

    def __call__(self, cfg: Config, resume=None):
        cell = Path(cfg.train.output_dir).parent.name
        print(f"training {cell}")  # goes to the run's train.log, not the terminal
        if cell == self.fail_cell:
            raise RuntimeError("worker failed on purpose")
        ap = 30.0 + cfg.model.cls_loss_args.get("mu", 0)
        gpu, threads = os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("OMP_NUM_THREADS")
        return {
            "AP": ap,
            "AP50": ap,
            "AP75": ap,
            "pid": os.getpid(),
            "gpu": gpu,
            "threads": threads,
        }

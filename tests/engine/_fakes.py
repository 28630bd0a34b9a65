"""A tiny detector and dataset that follow the engine's interfaces, for fast loop tests.

Also a command line (``python -m tests.engine._fakes OUT_DIR ...``) that trains them,
used by the subprocess tests (signals, torchrun).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from hcral.config import Config, TrainConfig
from hcral.losses._state import RunningStat


class ToyDataset(Dataset):
    """``n`` fixed random 32x40 images with one box each, plus augmentation that draws
    from the global torch, ``random`` and numpy RNGs (so resume must restore all three).
    """

    num_classes = 2

    def __init__(self, n: int = 12, augment: bool = True) -> None:
        self.n, self.augment = n, augment

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        g = torch.Generator().manual_seed(1000 + i)
        image = torch.rand(3, 32, 40, generator=g)
        x0, y0 = torch.randint(0, 16, (2,), generator=g).tolist()
        box = torch.tensor([[x0, y0, x0 + 12.0, y0 + 10.0]])
        if self.augment:
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
                box = torch.stack([40 - box[:, 2], box[:, 1], 40 - box[:, 0], box[:, 3]], 1)
            image = image * (0.9 + 0.1 * random.random()) + 0.01 * float(np.random.rand())  # noqa: NPY002
        target = {
            "boxes": box,
            "labels": torch.tensor([i % 2]),
            "iscrowd": torch.tensor([False]),
            "image_id": 100 + i,
        }
        return image.clamp(0, 1), target


class ToyDetector(nn.Module):
    """Regresses one box per image and classifies it; a RunningStat weights the class loss.

    Args:
        nan_image_ids: images whose presence in a batch makes ``loss_cls`` NaN.
        step_sleep: seconds to sleep per forward (to make a run slow enough to signal).
        fail_at_call: raise on that (1-based) forward call, to simulate a crashing rank.
    """

    def __init__(
        self, nan_image_ids: tuple[int, ...] = (), step_sleep: float = 0.0, fail_at_call: int = 0
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Linear(8, 6)
        self.cls_stat = RunningStat(momentum=0.3)  # stands in for the loss criteria's state
        self.nan_image_ids = set(nan_image_ids)
        self.step_sleep, self.fail_at_call, self.calls = step_sleep, fail_at_call, 0

    def forward(self, images: Tensor, image_sizes: list, targets: list | None = None) -> Any:
        self.calls += 1
        if self.fail_at_call and self.calls == self.fail_at_call:
            raise RuntimeError("toy detector exploded on purpose")
        time.sleep(self.step_sleep)
        out = self.head(self.conv(images).relu().mean((2, 3)))  # (N, 6)
        if targets is None:
            return [
                {
                    "boxes": out[i : i + 1, :4] * 32,
                    "scores": out[i, 4:5].sigmoid(),
                    "labels": out[i, 4:].argmax().reshape(1),
                }
                for i in range(len(images))
            ]
        boxes = torch.stack([t["boxes"][0] for t in targets]) / 32  # (N, 4)
        labels = torch.stack([t["labels"][0] for t in targets])  # (N,)
        per_image = F.smooth_l1_loss(out[:, :4], boxes, reduction="none").sum(1)
        weight = self.cls_stat.update(per_image.detach().sum(), len(targets))
        loss_cls = F.cross_entropy(out[:, 4:], labels) * weight
        ids = {int(t["image_id"]) for t in targets}
        if ids & self.nan_image_ids:
            loss_cls = loss_cls * float("nan")
        return {"loss_cls": loss_cls, "loss_reg": per_image.mean()}


def toy_config(out_dir: str, **train: Any) -> Config:
    """A config for the toy parts: 3 epochs of 12 images, batch 4, no warm-up to speak of."""
    base = dict(
        output_dir=str(out_dir),
        epochs=3,
        batch_size=4,
        lr=0.05,
        base_batch_size=4,
        warmup_iters=2,
        lr_steps=[2],
        log_every=1,
        amp=False,
        deterministic=True,  # exact resume on CUDA too
        grad_clip=10.0,
    )
    cfg = Config(train=TrainConfig(**(base | train)))
    cfg.data.size_divisibility = 8
    return cfg


def tiny_real_config(
    paths: dict[str, str], out_dir: str, epochs: int, batch_size: int, pretrained: str | None
) -> Config:
    """A small FCOS+ATSS (ResNet-18, 32 FPN channels) on 128-px sample images."""
    cfg = Config()
    for key, value in paths.items():
        setattr(cfg.data, key, value)
    cfg.data.min_size, cfg.data.max_size, cfg.data.flip_prob = [128], 128, 0.0
    cfg.model.backbone, cfg.model.fpn_channels, cfg.model.num_convs = "resnet18", 32, 2
    cfg.model.pretrained = pretrained  # pretrained => FrozenBatchNorm: images independent
    t = cfg.train
    t.output_dir, t.epochs, t.batch_size, t.base_batch_size = out_dir, epochs, batch_size, 4
    t.warmup_iters, t.log_every, t.amp = 10, 1, False
    return cfg


def _train_real(args: argparse.Namespace) -> None:
    from hcral.data.sample import make_sample
    from hcral.engine.train import train

    # the test creates the data first, so ranks never write it concurrently
    paths = make_sample(args.sample, num_train=args.images, num_val=2, image_size=128)
    cfg = tiny_real_config(paths, args.out_dir, args.epochs, args.batch_size, args.pretrained)
    cfg.train.max_iters = args.max_iters
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    from hcral.engine.train import train

    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-iters", type=int, default=0)
    p.add_argument("--images", type=int, default=12)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--fail-rank", type=int, default=-1)
    p.add_argument("--pretrained", help="backbone weights file (real model only)")
    p.add_argument("--sample", help="train the real tiny FCOS+ATSS on make_sample data here")
    args = p.parse_args()
    if args.sample:
        _train_real(args)
        return
    cfg = toy_config(
        args.out_dir, epochs=args.epochs, batch_size=args.batch_size, max_iters=args.max_iters
    )
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)  # train() seeds only what it builds itself
    model = ToyDetector(step_sleep=args.sleep, fail_at_call=2 if rank == args.fail_rank else 0)
    result = train(cfg, model=model, train_set=ToyDataset(args.images, not args.no_augment))
    if rank == 0:
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

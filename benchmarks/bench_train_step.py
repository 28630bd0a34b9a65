"""Time one training step (forward + backward + SGD step) of our detectors.

Two comparisons, each on one fixed synthetic batch, median over repeats:

1. our RetinaNet (focal + L1, and focal + GIoU) vs torchvision's
   ``retinanet_resnet50_fpn`` (no weights, same backbone, same input size, all BN
   trainable and no stage frozen on both sides) — target ratio ≤ 1.2;
2. the full method (EATSS + HCRAC + HCRAR) vs focal + GIoU + ATSS on our FCOS+ATSS
   with the auxiliary modules — target ratio ≤ 1.1 (the loss must not cost much);
3. focal + GIoU + ATSS with a weight EMA updated after every step (``train.ema_decay``)
   vs without — target ratio ≤ 1.05.

On CUDA every model is also timed with AMP (autocast fp16 + GradScaler) and reported
as images/s. Results go to stdout as a markdown table (docs/bench_train_step.md)::

    OMP_NUM_THREADS=2 python benchmarks/bench_train_step.py --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hcral.config import ModelConfig
from hcral.engine.ema import ModelEMA
from hcral.models import build_model

Step = Callable[[], None]


@dataclass
class Batch:
    images: Tensor  # (N, 3, S, S) in [0, 1]
    targets: list[dict[str, Tensor]]


def make_batch(n: int, size: int, num_classes: int, boxes: int, device: torch.device) -> Batch:
    """A seeded batch: ``boxes`` random boxes of 16 px to ``size / 2`` per image."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, size, size, generator=g)
    targets = []
    for _ in range(n):
        wh = torch.empty(boxes, 2).uniform_(16, size / 2, generator=g)
        xy = torch.rand(boxes, 2, generator=g) * (size - wh)
        targets.append(
            {
                "boxes": torch.cat((xy, xy + wh), dim=1).to(device),
                "labels": torch.randint(num_classes, (boxes,), generator=g).to(device),
                "iscrowd": torch.zeros(boxes, dtype=torch.bool, device=device),
            }
        )
    return Batch(images.to(device), targets)


def ours(name: str, backbone: str, num_classes: int, **losses) -> nn.Module:
    """One of our detectors, from scratch, nothing frozen (like torchvision's)."""
    cfg = ModelConfig(name=name, backbone=backbone, num_classes=num_classes, frozen_stages=0)
    for key, value in losses.items():
        setattr(cfg, key, value)
    return build_model(cfg)


def torchvision_retinanet(num_classes: int, size: int) -> nn.Module:
    from torchvision.models.detection import retinanet_resnet50_fpn

    # min/max_size = the input size: its internal resize becomes a no-op
    return retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=size, max_size=size
    )


def make_step(model: nn.Module, batch: Batch, is_ours: bool, amp: bool, ema: bool) -> Step:
    """A closure running one SGD step of ``model`` on ``batch`` (then an EMA update)."""
    device = batch.images.device
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    sizes = [tuple(img.shape[-2:]) for img in batch.images]
    inputs = (
        (batch.images, sizes, batch.targets) if is_ours else (list(batch.images), batch.targets)
    )
    average = ModelEMA(model, decay=0.9998, tau=2000.0) if ema else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            losses = model(*inputs)
        scaler.scale(sum(losses.values())).backward()
        scaler.step(opt)
        scaler.update()
        if average is not None:
            average.update(model)

    return step


def time_once(step: Step, device: torch.device) -> float:
    """Wall time of one call of ``step`` in seconds (synchronised on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def time_round_robin(steps: dict[str, Step], repeats: int, warmup: int, device) -> dict:
    """Median seconds per step of each entry, timed in turns (one step of each per round)
    so that load from other processes hits every model alike instead of the unlucky one."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            times[name].append(time_once(step, device))
    return {name: statistics.median(t) for name, t in times.items()}


def candidates(
    args: argparse.Namespace,
) -> dict[str, tuple[Callable[[], nn.Module], bool, bool]]:
    """name -> (model factory, is ours, with EMA); built lazily, one model at a time."""
    c, b = args.num_classes, args.backbone
    aux = {"star_dcn": True, "bbox_refine": True}
    hcral = {"assigner": "eatss", "cls_loss": "hcrac", "reg_loss": "hcrar"}
    hcral["reg_loss_args"] = {"focusing": False, "loss_weight": 1.5}

    def baseline() -> nn.Module:
        return ours("fcos_atss", b, c, assigner="atss", cls_loss="focal", reg_loss="giou", **aux)

    return {
        "torchvision RetinaNet": (lambda: torchvision_retinanet(c, args.size), False, False),
        "RetinaNet focal+L1": (
            lambda: ours("retinanet", b, c, assigner="max_iou", cls_loss="focal", reg_loss="l1"),
            True,
            False,
        ),
        "RetinaNet focal+GIoU": (
            lambda: ours("retinanet", b, c, assigner="max_iou", cls_loss="focal", reg_loss="giou"),
            True,
            False,
        ),
        "FCOS+ATSS focal+GIoU+ATSS": (baseline, True, False),
        "FCOS+ATSS HCRAL (EATSS+HCRAC+HCRAR)": (
            lambda: ours("fcos_atss", b, c, **hcral, **aux),
            True,
            False,
        ),
        "FCOS+ATSS focal+GIoU+ATSS +EMA": (baseline, True, True),
    }


def run(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median step seconds per model, fp32 and (on CUDA) AMP."""
    device = torch.device(args.device)
    batch = make_batch(args.batch, args.size, args.num_classes, args.boxes, device)
    modes = [False, True] if device.type == "cuda" else [False]
    results: dict[str, dict[str, float]] = {name: {} for name in candidates(args)}
    for amp in modes:
        steps = {}
        for name, (factory, is_ours, ema) in candidates(args).items():
            torch.manual_seed(0)
            steps[name] = make_step(factory(), batch, is_ours, amp, ema)
        medians = time_round_robin(steps, args.repeats, args.warmup, device)
        for name, seconds in medians.items():
            results[name]["amp" if amp else "fp32"] = seconds
        del steps
    return results


def report(results: dict[str, dict[str, float]], batch: int) -> str:
    """Markdown table of step times and the two target ratios."""
    modes = list(next(iter(results.values())))
    head = "| model | " + " | ".join(f"{m} s/step | {m} img/s" for m in modes) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(modes))]
    for name, times in results.items():
        cells = " | ".join(f"{times[m]:.3f} | {batch / times[m]:.1f}" for m in modes)
        lines.append(f"| {name} | {cells} |")
    lines.append("")
    tv = results["torchvision RetinaNet"]
    pairs = [
        ("RetinaNet focal+L1", "torchvision RetinaNet", 1.2),
        ("RetinaNet focal+GIoU", "torchvision RetinaNet", 1.2),
        ("FCOS+ATSS HCRAL (EATSS+HCRAC+HCRAR)", "FCOS+ATSS focal+GIoU+ATSS", 1.1),
        ("FCOS+ATSS focal+GIoU+ATSS +EMA", "FCOS+ATSS focal+GIoU+ATSS", 1.05),
    ]
    for mine, ref, target in pairs:
        for m in modes:
            ratio = results[mine][m] / (tv if ref == "torchvision RetinaNet" else results[ref])[m]
            # Judge the ratio as printed, so a line never reads "1.05x (target ≤ 1.05x: OVER)".
            verdict = "ok" if round(ratio, 2) <= target else "OVER TARGET"
            lines.append(f"- {m}: {mine} / {ref} = {ratio:.2f}x (target ≤ {target}x: {verdict})")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", default="resnet50", help="ours; torchvision's is resnet50")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=512, help="square input side in pixels")
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--boxes", type=int, default=8, help="ground-truth boxes per image")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    print(
        f"# {args.device}, torch {torch.__version__}, {threads} threads, batch {args.batch} x "
        f"{args.size}x{args.size}, backbone {args.backbone}, median of {args.repeats}"
    )
    print(report(run(args), args.batch))


if __name__ == "__main__":
    main()

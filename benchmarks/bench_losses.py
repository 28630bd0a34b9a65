"""Speed and peak extra memory of the HCRAL losses against torchvision's baselines.

COCO-sized inputs: R = 100k priors, C = 80 classes, 1k positives. Each loss runs
forward + backward; the criteria are in training mode, so the EMA updates are timed
too. Losses are run round-robin (one call of each per round) so that load from other
processes on a shared machine hits all of them alike; we report the median time per
call and the median over rounds of each per-round ratio.

Peak extra memory: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory held
before the call; on CPU the allocation/free events of ``torch.profiler``
(profile_memory=True, read from its Chrome trace) replayed in time order, the peak of
their running sum. Both count what one forward + backward allocates on top of its
inputs, including the input's gradient (``.grad`` is reset first).

Usage: ``python benchmarks/bench_losses.py [--rounds 15] [--device cpu]``;
``--profile NAME`` prints where one loss spends its time instead (torch.profiler,
operators sorted by self time on the device), e.g. ``--profile "HCRAC (ours)"``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from hcral.boxes import aligned_giou
from hcral.losses.ghm import GHMCLoss
from hcral.losses.hcrac import HCRACLoss
from hcral.losses.hcrar import HCRARLoss

CLS = ("focal (torchvision)", "GHM-C (ours)", "HCRAC (ours)")


def make_cls_inputs(r: int, c: int, pos: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(r, c, generator=g) * 2 - 4).to(device).requires_grad_()
    labels = torch.full((r,), c, dtype=torch.int64)
    labels[torch.randperm(r, generator=g)[:pos]] = torch.randint(0, c, (pos,), generator=g)
    ious = torch.rand(r, generator=g) * 0.9
    return {"logits": logits, "labels": labels.to(device), "ious": ious.to(device)}


def make_reg_inputs(pos: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(pos, 2, generator=g) * 600
    target = torch.cat((xy, xy + 20 + torch.rand(pos, 2, generator=g) * 200), 1)
    pred = target + torch.randn(pos, 4, generator=g) * 15
    scores = torch.rand(pos, generator=g)
    return {
        "pred": pred.to(device).requires_grad_(),
        "target": target.to(device),
        "scores": scores.to(device),
    }


def cases(cls_in: dict, reg_in: dict) -> dict[str, Callable[[], torch.Tensor]]:
    """Name -> a closure computing one loss (forward only; the runner does backward)."""
    logits, labels, ious = cls_in["logits"], cls_in["labels"], cls_in["ious"]
    c = logits.shape[1]
    n_pos = float((labels < c).sum())
    # The focal baseline gets its one-hot targets for free (built outside the timing).
    onehot = torch.nn.functional.one_hot(labels, c + 1)[:, :c].float()
    hcrac, ghmc = HCRACLoss().to(logits.device), GHMCLoss().to(logits.device)
    hcrar = HCRARLoss().to(logits.device)
    pred, target, scores = reg_in["pred"], reg_in["target"], reg_in["scores"]
    return {
        "focal (torchvision)": lambda: sigmoid_focal_loss(logits, onehot, reduction="sum") / n_pos,
        "GHM-C (ours)": lambda: ghmc(logits, labels, ious, n_pos),
        "HCRAC (ours)": lambda: hcrac(logits, labels, ious, n_pos),
        "GIoU (torchvision)": lambda: (
            generalized_box_iou_loss(pred, target, reduction="sum") / len(pred)
        ),
        "GIoU (hcral.boxes)": lambda: (1 - aligned_giou(pred, target)).sum() / len(pred),
        "HCRAR (ours)": lambda: hcrar(pred, target, scores=scores, avg_factor=len(pred)),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(fns: dict, rounds: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per forward+backward call of each case, one call of each per round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(rounds + 3):  # the first 3 rounds warm up
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn().backward()
            _sync(device)
            if i >= 3:
                times[name].append(time.perf_counter() - t0)
    return times


def peak_extra_bytes(fn: Callable[[], torch.Tensor], device: torch.device) -> int:
    """Peak bytes allocated by one forward+backward on top of what was held before."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn().backward()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn().backward()
    # The trace's "[memory]" instant events are every allocation (+bytes) and free (-bytes).
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)["traceEvents"]
    events = sorted(
        (e["ts"], e["args"]["Bytes"])
        for e in trace
        if e.get("name") == "[memory]" and e["args"].get("Device Type") == 0
    )
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def print_profile(fn: Callable[[], None], device: torch.device, calls: int = 10) -> None:
    """The operators of ``calls`` forward + backward passes, by self time on ``device``."""
    for _ in range(3):
        fn()  # warm-up: allocator, kernel selection
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25))


# Each loss's ratio is against the torchvision peer of its group, timed in the same rounds.
BASELINE = {
    "focal (torchvision)": "focal (torchvision)",
    "GHM-C (ours)": "focal (torchvision)",
    "HCRAC (ours)": "focal (torchvision)",
    "GIoU (torchvision)": "GIoU (torchvision)",
    "GIoU (hcral.boxes)": "GIoU (torchvision)",
    "HCRAR (ours)": "GIoU (torchvision)",
}


def print_table(times: dict, fns: dict, inputs: tuple, args: argparse.Namespace, device) -> None:
    """Markdown table: median time, median per-round ratio against the baseline, peak memory."""
    cls_in, reg_in = inputs
    pc_bytes = args.priors * args.classes * 4
    print(
        f"device={device} threads={torch.get_num_threads()} R={args.priors} "
        f"C={args.classes} positives={args.positives} rounds={args.rounds} "
        f"torch={torch.__version__}"
    )
    print()
    print("| loss (fwd+bwd) | median ms | ratio vs baseline (median of rounds) | peak extra MB |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        base = times[BASELINE[name]]
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        for t in (cls_in["logits"], reg_in["pred"]):
            t.grad = None  # so every loss pays for allocating its input's gradient
        mem = peak_extra_bytes(fns[name], device)
        extra = f" ({mem / pc_bytes:.1f}× R·C·4 B)" if name in CLS else ""
        print(
            f"| {name} | {statistics.median(ts) * 1e3:.2f} | {ratio:.2f}× {BASELINE[name]} | "
            f"{mem / 2**20:.2f}{extra} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--priors", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--positives", type=int, default=1000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--profile", metavar="NAME", help="profile one loss (a table row name)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cls_in = make_cls_inputs(args.priors, args.classes, args.positives, device)
    reg_in = make_reg_inputs(args.positives, device)
    fns = cases(cls_in, reg_in)
    if args.profile:
        print_profile(fns[args.profile], device)
        return
    # Two groups: a 1k-box loss timed between 32 MB ones would mostly measure their
    # memory traffic; each loss is compared with its baseline inside its own group.
    groups = (
        {k: v for k, v in fns.items() if k in CLS},
        {k: v for k, v in fns.items() if k not in CLS},
    )
    times = {}
    for group in groups:
        times.update(time_round_robin(group, args.rounds, device))
    print_table(times, fns, (cls_in, reg_in), args, device)


if __name__ == "__main__":
    main()

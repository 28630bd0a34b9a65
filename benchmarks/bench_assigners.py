"""Benchmark of the label assigners (docs/bench_assigners.md holds the measured table).

Scene: FPN P3–P7 priors of an 800×1333 image (strides 8..128): 22,300 ATSS priors (one
square anchor of 8·stride per location) and 200,700 RetinaNet anchors (9 per location);
a batch of 2 images with M random GTs each (centres uniform in the image, sides
log-uniform in 8..600 px, seeded). For every assigner and M: median wall time and CPU
time over ``--reps`` runs, and the peak memory of one run measured in a fresh process
(CPU: growth of the peak resident set, /proc/self/status VmHWM reset through
/proc/self/clear_refs; CUDA: torch.cuda.max_memory_allocated). Then ATSS against the
brute-force reference of tests/assigners/reference.py at M=100.

``--sample-data DIR`` instead counts the GTs that ATSS and EATSS leave without a
positive on the built-in sample dataset (hcral.data.sample.make_sample, written to DIR
if missing).

Timings run with glibc's malloc pinned to reuse freed memory (the steady state of a
training process; the script re-executes itself with MALLOC_MMAP_THRESHOLD_ set);
``--default-allocator`` measures a cold process instead, where every large tensor is
mmapped afresh and first-touch page faults add to every call.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_assigners.py [--reps 5] [--device cpu]
    OMP_NUM_THREADS=1 python benchmarks/bench_assigners.py --sample-data data/sample \
        [--sample-size 256] [--figure docs/figures/eatss_extras_iou.png]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from hcral.assigners import ASSIGNERS

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH, BATCH, NUM_CLASSES = 800, 1333, 2, 80
NUM_GTS = (1, 10, 100, 500)


def _reference():
    """tests/assigners/reference.py (brute force and FPN priors), loaded by path."""
    path = ROOT / "tests" / "assigners" / "reference.py"
    spec = importlib.util.spec_from_file_location("assigner_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


REF = _reference()


def random_gts(m: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``BATCH`` images of ``m`` GTs: boxes, labels, mask, crowd."""
    g = torch.Generator().manual_seed(seed)
    ctr = torch.rand(BATCH, m, 2, generator=g) * torch.tensor([WIDTH, HEIGHT])
    wh = torch.exp(torch.empty(BATCH, m, 2).uniform_(math.log(8), math.log(600), generator=g))
    boxes = torch.cat((ctr - wh / 2, ctr + wh / 2), dim=-1)
    labels = torch.randint(0, NUM_CLASSES, (BATCH, m), generator=g)
    mask = torch.ones(BATCH, m, dtype=torch.bool)
    crowd = torch.zeros(BATCH, m, dtype=torch.bool)
    return tuple(t.to(device) for t in (boxes, labels, mask, crowd))


def call(name: str, m: int, device: torch.device, **kwargs):
    """A zero-argument closure running assigner ``name`` on the benchmark scene."""
    anchors = "retinanet" if name == "max_iou" else "atss"
    priors, nlp = REF.fpn_priors(HEIGHT, WIDTH, anchors=anchors, device=device)
    boxes, labels, mask, crowd = random_gts(m, device)
    args = (boxes, labels, mask, crowd, NUM_CLASSES)
    if name == "max_iou":
        return lambda: ASSIGNERS[name](priors, *args, **kwargs), len(priors)
    return lambda: ASSIGNERS[name](priors, nlp, *args, **kwargs), len(priors)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, reps: int, device: torch.device) -> tuple[float, float]:
    """Median wall and CPU milliseconds over ``reps`` runs after one warm-up."""
    fn()
    wall, cpu = [], []
    for _ in range(reps):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_memory_mb(name: str, m: int, device: torch.device) -> float:
    """Peak memory of one run, in this (fresh) process."""
    fn, _ = call(name, m, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    base = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - base) / 1024


def memory_in_subprocess(name: str, m: int, device: torch.device) -> float:
    # Every allocation above 64 KiB goes to mmap, so freed memory leaves the RSS at once.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, __file__, "--memory-of", name, str(m), "--device", str(device)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def brute_force_ms(m: int, device: torch.device) -> float:
    """One run of the reference ATSS (plain loops) on the benchmark scene."""
    priors, nlp = REF.fpn_priors(HEIGHT, WIDTH, device=device)
    args = random_gts(m, device)
    t0 = time.perf_counter()
    REF.ref_atss_assign(priors, nlp, *args, NUM_CLASSES)
    return (time.perf_counter() - t0) * 1e3


def interleaved(fns: dict, reps: int, device: torch.device) -> dict[str, float]:
    """Median ms of each closure, run in turn ``reps`` times (one warm-up each).

    Alternating the runs exposes every closure to the same machine noise, so the ratios
    are steadier than those of back-to-back medians. CPU time on CPU, wall time on CUDA.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    for fn in fns.values():
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            _sync(device)
            t0 = clock()
            fn()
            _sync(device)
            times[name].append(clock() - t0)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def print_ratios(reps: int, device: torch.device) -> None:
    """EATSS (window search and dense test) against ATSS, interleaved in this process."""
    print("\n| M | ATSS ms | EATSS ms | EATSS / ATSS | EATSS dense ms | dense / ATSS |")
    print("|---:|---:|---:|---:|---:|---:|")
    for m in NUM_GTS:
        atss, _ = call("atss", m, device)
        eatss, _ = call("eatss", m, device)
        dense, _ = call("eatss", m, device, search="dense")
        ms = interleaved({"atss": atss, "eatss": eatss, "dense": dense}, reps, device)
        a, e, d = ms["atss"], ms["eatss"], ms["dense"]
        print(f"| {m} | {a:.2f} | {e:.2f} | {e / a:.2f} | {d:.2f} | {d / a:.2f} |", flush=True)


def run_benchmark(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    malloc = os.environ.get("MALLOC_MMAP_THRESHOLD_", "default")
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"MALLOC_MMAP_THRESHOLD_={malloc}")  # fmt: skip
    print("| assigner | priors R | M | wall ms (median) | CPU ms (median) | peak MB |")
    print("|---|---:|---:|---:|---:|---:|")
    names = [n for n in ("atss", "eatss", "max_iou") if n in args.assigners]
    for m in NUM_GTS:
        for name in names:
            fn, r = call(name, m, device)
            reps = args.reps if name != "max_iou" else max(1, args.reps // 2)
            wall, cpu = timed(fn, reps, device)
            mem = memory_in_subprocess(name, m, device)
            print(f"| {name} | {r} | {m} | {wall:.1f} | {cpu:.1f} | {mem:.1f} |", flush=True)
    if {"atss", "eatss"} <= set(names):
        print_ratios(args.reps, device)
    if "atss" in names and not args.skip_brute_force:
        brute = brute_force_ms(100, device)
        fast, _ = timed(call("atss", 100, device)[0], args.reps, device)
        print(f"ATSS M=100: brute force {brute:.0f} ms, vectorised {fast:.1f} ms "
              f"(wall), speed-up {brute / fast:.0f}x")  # fmt: skip


def sample_data(
    out_dir: str,
    size: int,
    device: torch.device,
    figure: str | None = None,
    min_extra_iou: float = 0.0,
) -> None:
    """Count GTs ATSS / EATSS leave without a positive on the sample dataset's train split,
    and compare the IoU of the ATSS positives with that of the extras EATSS adds."""
    from hcral.data.sample import make_sample

    train_json = Path(out_dir) / "annotations" / "train.json"
    if not train_json.is_file():  # a dataset already there is used whatever its size
        train_json = Path(make_sample(out_dir)["train_json"])
    coco = json.loads(train_json.read_text())
    per_image: dict[int, list[list[float]]] = {img["id"]: [] for img in coco["images"]}
    native = max(max(img["height"], img["width"]) for img in coco["images"])
    scale = size / native
    for ann in coco["annotations"]:
        x, y, w, h = (v * scale for v in ann["bbox"])
        per_image[ann["image_id"]].append([x, y, x + w, y + h])
    side = math.ceil(size / 128) * 128  # padded like DataConfig.size_divisibility
    priors, nlp = REF.fpn_priors(side, side, device=device)
    boxes_list = [b for b in per_image.values() if b]
    m = max(len(b) for b in boxes_list)
    boxes = torch.zeros(len(boxes_list), m, 4)
    mask = torch.zeros(len(boxes_list), m, dtype=torch.bool)
    for i, b in enumerate(boxes_list):
        boxes[i, : len(b)] = torch.tensor(b)
        mask[i, : len(b)] = True
    labels = torch.zeros_like(mask, dtype=torch.int64)
    args = [t.to(device) for t in (boxes, labels, mask, torch.zeros_like(mask))]
    total = int(mask.sum())
    print(f"sample train split: {len(boxes_list)} images with GTs, {total} GTs, "
          f"images scaled {native}->{size} px, priors of {side}x{side}")  # fmt: skip
    area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))[mask]
    small = area < 32**2
    print("| assigner | GTs without a positive | of which small (<32²) | positives per GT |")
    print("|---|---:|---:|---:|")
    results = {}
    for name in ("atss", "eatss"):
        extra_args = {"min_extra_iou": min_extra_iou} if name == "eatss" else {}
        res = results[name] = ASSIGNERS[name](priors, nlp, *args, 1, **extra_args)
        hits = torch.zeros(len(boxes_list), m + 1, dtype=torch.int64, device=device)
        hits.scatter_add_(1, res.gt_inds + 1, torch.ones_like(res.gt_inds))
        empty = (hits[:, 1:] == 0).cpu()[mask]
        unmatched, share = int(res.num_unmatched_gts.sum()), 100 * empty.float().mean()
        per_gt = int(res.pos_mask.sum()) / total
        print(
            f"| {name} | {unmatched} ({share:.2f}%) | {int((empty & small).sum())} | {per_gt:.2f} |"
        )
    positive_quality(results["atss"], results["eatss"], nlp, figure)


def positive_quality(atss, eatss, num_level_priors, figure: str | None = None) -> None:
    """IoU of the ATSS positives against the extra positives EATSS adds, and their levels;
    with ``figure``, their IoU histograms as a PNG."""
    extra = eatss.pos_mask & ~atss.pos_mask
    level = torch.repeat_interleave(
        torch.arange(len(num_level_priors)), torch.tensor(num_level_priors)
    ).to(extra.device).expand_as(extra)  # fmt: skip
    print("\n| positives | count | IoU mean | IoU median | IoU < 0.3 | share per level P3..P7 |")
    print("|---|---:|---:|---:|---:|---|")
    for name, mask, ious in (
        ("ATSS", atss.pos_mask, atss.max_ious),
        ("EATSS extras", extra, eatss.max_ious),
    ):
        iou, lv = ious[mask].cpu(), level[mask].cpu()
        shares = " / ".join(
            f"{100 * float((lv == k).float().mean()):.0f}%" for k in range(len(num_level_priors))
        )
        print(f"| {name} | {iou.numel()} | {iou.mean():.3f} | {iou.median():.3f} | "
              f"{100 * float((iou < 0.3).float().mean()):.0f}% | {shares} |")  # fmt: skip
    if figure:
        from hcral.viz import plot_iou_histograms

        groups = {"ATSS positives": atss.max_ious[atss.pos_mask]}
        groups["EATSS extra positives"] = eatss.max_ious[extra]
        plot_iou_histograms(groups, figure)
        print(f"wrote {figure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--assigners", nargs="+", default=["atss", "eatss", "max_iou"])
    parser.add_argument("--skip-brute-force", action="store_true")
    parser.add_argument("--sample-data", metavar="DIR")
    parser.add_argument("--sample-size", type=int, default=320, help="resized image side")
    parser.add_argument("--figure", metavar="PNG", help="with --sample-data: IoU histograms")
    parser.add_argument(
        "--min-extra-iou", type=float, default=0.0, help="with --sample-data: EATSS's gate"
    )
    parser.add_argument("--memory-of", nargs=2, metavar=("ASSIGNER", "M"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--default-allocator",
        action="store_true",
        help="keep glibc's default malloc tuning: large tensors are then mmapped afresh "
        "(page faults) on every call, as in a short-lived process",
    )
    args = parser.parse_args()
    if not args.default_allocator and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # A long-running training process reuses freed heap memory; pin that steady state
        # so the timings measure the assigners, not first-touch page faults.
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(2**28), MALLOC_TRIM_THRESHOLD_=str(2**30))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with torch.no_grad():
        if args.memory_of:
            print(peak_memory_mb(args.memory_of[0], int(args.memory_of[1]), device))
        elif args.sample_data:
            sample_data(args.sample_data, args.sample_size, device, args.figure, args.min_extra_iou)
        else:
            run_benchmark(args)


if __name__ == "__main__":
    main()

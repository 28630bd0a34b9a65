"""Speed of hcral's deformable conv against torchvision's kernel, forward + backward.

Shapes of the FCOS+ATSS star-DCN head on a 256×256 batch: N = 8 images, C = O = 64
channels, a 3×3 kernel with padding 1, FPN levels of H = W = 32, 16, 8, 4, 2. Offsets
are ``3 · N(0, 1)`` pixels, so a good share of the samples falls near or outside the
borders. Input, offset and weight all require gradients (as in the head).

The two implementations run round-robin (one call of each per round) so that load
from other processes on a shared machine hits both alike; we report the median time
per call and the median over rounds of the per-round ratio torchvision / ours.

Usage: ``python benchmarks/bench_deform.py [--rounds 9] [--threads 1] [--device cpu]``
(``--threads 0`` keeps torch's default thread count; on a loaded machine more threads
than free cores make both numbers noisy).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torchvision.ops

from hcral.models.deform import deform_conv2d_sampled

IMPLS = {"torchvision": torchvision.ops.deform_conv2d, "ours": deform_conv2d_sampled}


def make_inputs(n: int, c: int, size: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(size)
    x = torch.randn(n, c, size, size, generator=g)
    offset = torch.randn(n, 18, size, size, generator=g) * 3
    weight = torch.randn(c, c, 3, 3, generator=g) * 0.05
    return tuple(t.to(device).requires_grad_() for t in (x, offset, weight))


def time_call(fn: Callable, inputs: tuple[torch.Tensor, ...], device: torch.device) -> float:
    """Seconds of one forward + backward."""
    for t in inputs:
        t.grad = None
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(*inputs, padding=(1, 1)).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_level(size: int, args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    inputs = make_inputs(args.batch, args.channels, size, device)
    for fn in IMPLS.values():  # warm-up: allocator, lazy init
        time_call(fn, inputs, device)
    times = {name: [] for name in IMPLS}
    for _ in range(args.rounds):
        for name, fn in IMPLS.items():
            times[name].append(time_call(fn, inputs, device))
    ratios = [tv / ours for tv, ours in zip(times["torchvision"], times["ours"], strict=True)]
    return {
        "torchvision": statistics.median(times["torchvision"]),
        "ours": statistics.median(times["ours"]),
        "ratio": statistics.median(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 16, 8, 4, 2])
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(
        f"deform_conv2d fwd+bwd, N={args.batch} C=O={args.channels} 3x3 pad 1, "
        f"{args.device}, {torch.get_num_threads()} thread(s), median of {args.rounds} rounds"
    )
    print(f"{'H=W':>5} {'torchvision ms':>15} {'ours ms':>9} {'ratio':>7}")
    total = {"torchvision": 0.0, "ours": 0.0}
    for size in args.sizes:
        r = bench_level(size, args)
        total = {k: total[k] + r[k] for k in total}
        print(
            f"{size:>5} {r['torchvision'] * 1e3:>15.2f} {r['ours'] * 1e3:>9.2f} {r['ratio']:>6.1f}x"
        )
    ratio = total["torchvision"] / total["ours"]
    print(
        f"{'all':>5} {total['torchvision'] * 1e3:>15.2f} {total['ours'] * 1e3:>9.2f} {ratio:>6.1f}x"
    )


if __name__ == "__main__":
    main()

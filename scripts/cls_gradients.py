"""How hard each classification loss pushes on background and positive entries.

For trained runs, replays a few training batches through the run's detector and, on the
classification entries its assigner produces, measures the gradient that focal loss,
GHM-C and HCRAC (fresh criteria, defaults of the shipped configs) would send to the
logits:

    python scripts/cls_gradients.py runs/reg_short/atss_short/GIoU/seed_0 \\
        runs/hyper_short_atss/hcrac_mu/mu=5.0/seed_0 --batches 6

prints a Markdown table: per run and loss, the summed |∂L/∂x| over positive entries
(a positive prior's own class) and over background entries (every other entry of a
non-ignored prior), averaged over the batches. Equal totals on both sides are what any
loss settles to; what differs is how the background total grows when many background
entries score high (docs/results.md §15).
"""

from __future__ import annotations

import argparse
from pathlib import Path

#: row name → (loss of ``hcral.losses.CLS_LOSSES``, its arguments). The last three are
#: the focal-base variant of HCRAC (docs/method.md §2), it without ρ, and plain focal loss
#: with about as much more weight on the positives (configs/ablations/hcrac_control_short.yaml).
LOSSES = {
    "focal": ("focal", {"alpha": 0.25, "gamma": 2.0}),
    "ghm": ("ghm", {"bins": 20, "m_ghm": 0.75}),
    "hcrac": ("hcrac", {"bins": 20, "mu": 5.0, "theta": 0.7}),
    "hcrac-focal": ("hcrac", {"base": "focal", "mu": 5.0, "theta": 0.7}),
    "hcrac-focal ω only": ("hcrac", {"base": "focal", "theta": 0.7, "use_rci": False}),
    "focal α0.36 w1.17": ("focal", {"alpha": 0.36, "gamma": 2.0, "loss_weight": 1.17}),
}


def entry_gradients(criterion, logits, labels, ious, avg_factor) -> tuple[float, float]:
    """(Σ|∂L/∂x| over positive entries, the same over background entries) of one call.

    ``logits (P, C)``, ``labels (P,)`` in ``0..C`` (C = background), ``ious (P,)``.
    """
    import torch

    from hcral.losses._reduce import one_hot_targets

    x = logits.detach().float().clone().requires_grad_()
    (grad,) = torch.autograd.grad(criterion(x, labels, ious, avg_factor), x)
    own = one_hot_targets(labels, x.shape[1]).bool()
    return float(grad.abs()[own].sum()), float(grad.abs()[~own].sum())


def _batches(run: Path, batches: int) -> list[tuple]:
    """The classification inputs ``(logits, labels, ious, avg_factor)`` of the first
    ``batches`` batches of the run's first training epoch (its own image order, flips
    drawn from a fixed seed), through the run's last weights."""
    import torch

    from hcral.config import load_config
    from hcral.engine.checkpoint import load_weights
    from hcral.engine.trace import record_calls
    from hcral.engine.train import build_datasets, make_train_loader, seed_everything
    from hcral.models.build import build_model

    # An HCRAC criterion makes the detector compute the IoUs of background priors too.
    cfg = load_config(run / "config.yaml", ["model.cls_loss=hcrac", "model.cls_loss_args={}"])
    model = build_model(cfg.model)
    load_weights(model, run / "last.pt", strict=False)  # the run's own loss state differs
    loader = make_train_loader(build_datasets(cfg)[0], cfg, rank=0, world_size=1, epoch=0)
    seed_everything(0)  # the augmentation draws from the global RNG
    keep = lambda module, args, kwargs, output: {"args": args}  # noqa: E731
    with record_calls(lambda m: m is model.cls_loss, keep) as rows, torch.no_grad():
        for _, batch in zip(range(batches), loader):
            model.train()(batch.images, batch.image_sizes, batch.targets)
    return [row["args"] for row in rows]


def measure(run: Path, batches: int) -> dict[str, tuple[float, float]]:
    """loss name → (mean positive total, mean background total) over the batches."""
    from hcral.losses import build_cls_loss

    calls = _batches(run, batches)
    out = {}
    for name, (loss, kwargs) in LOSSES.items():
        criterion = build_cls_loss(loss, **kwargs)  # GHM/ρ̄ statistics run over the batches
        sums = [entry_gradients(criterion, *call) for call in calls]
        out[name] = tuple(sum(s[k] for s in sums) / len(sums) for k in (0, 1))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (config.yaml, last.pt)")
    parser.add_argument("--batches", type=int, default=6)
    args = parser.parse_args(argv)
    print("| run | loss | Σ\\|∇\\| positive | Σ\\|∇\\| background | background / positive |")
    print("|---|---|---:|---:|---:|")
    for run in args.runs:
        for name, (pos, bg) in measure(run, args.batches).items():
            print(f"| {run} | {name} | {pos:.4f} | {bg:.4f} | {bg / max(pos, 1e-12):.2f} |")


if __name__ == "__main__":
    main()

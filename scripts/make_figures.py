"""Regenerate the figures in docs/figures/.

Always writes ``weight_functions.png`` (ω, ρ, F(u), r as computed by hcral.losses).
Given trained runs, also writes ``--scatter-png`` (default ``score_vs_iou.png``; the
paper's Fig. 3 idea), one panel per NAME (runs that share a NAME are pooled), and prints
a Markdown table of each panel's score-IoU agreement (:func:`scatter_table`):

    python scripts/make_figures.py
    python scripts/make_figures.py \\
        --run baseline configs/fcos_atss_focal_giou.yaml runs/base/last.pt \\
        --run HCRAL configs/fcos_atss_hcral.yaml runs/hcral/last.pt --max-images 200

Each ``--run NAME CONFIG WEIGHTS`` builds the detector from CONFIG, loads WEIGHTS (a
training checkpoint or a ``.safetensors`` export) and collects the score and IoU of
its positives on the config's validation set (see :func:`hcral.viz.collect_score_iou`).

Given ``--entry-run NAME CONFIG WEIGHTS`` (repeatable; runs that share a NAME, e.g. the
seeds of one grid cell, are pooled), writes ``--entry-png`` (default
``entry_scores.png``): histograms of the scores of background and positive
classification entries (:func:`hcral.viz.collect_entry_scores`), and prints a Markdown
table of them.

Given ``--hcrar-run NAME CONFIG WEIGHTS`` (repeatable, pooled by NAME), prints how HCRAR
(with ``--hcrar-args``, default the shipped configs' ``{alpha: -0.1, ep: 0.001,
focusing: false}``) would weight each run's positives against plain GIoU, by IoU bin
(:func:`hcrar_table`). No figure.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(config: str, weights: str, device: str):
    """(model in eval mode, validation dataset, config) of one trained run."""
    from hcral.config import load_config
    from hcral.data.coco import CocoDetection
    from hcral.data.transforms import build_transforms
    from hcral.engine.checkpoint import load_weights
    from hcral.models.build import build_model

    cfg = load_config(config)
    d = cfg.data
    dataset = CocoDetection(
        d.val_json, d.val_images, build_transforms(False, d.min_size, d.max_size)
    )
    if cfg.model.num_classes == 0:
        cfg.model.num_classes = len(dataset.class_names)
    model = load_weights(build_model(cfg.model), weights).to(device).eval()
    return model, dataset, cfg


def _scatter_pairs(name: str, config: str, weights: str, args: argparse.Namespace):
    import torch

    from hcral.viz import collect_score_iou

    model, dataset, cfg = _load(config, weights, args.device)
    print(f"{name}: {config} + {weights} on {len(dataset)} val images (max {args.max_images})")
    with torch.no_grad():
        return collect_score_iou(
            model,
            dataset,
            args.device,
            args.max_images,
            mode=args.mode,
            size_divisibility=cfg.data.size_divisibility,
        )


def _pooled(runs: list[list[str]], collect: Callable[[str, str, str], tuple]) -> dict:
    """name → a tuple of arrays, each concatenated over the runs sharing that name.

    ``collect(name, config, weights)`` returns one run's tuple (arrays or tensors).
    """
    import numpy as np

    pooled: dict[str, list] = {}
    for name, config, weights in runs:
        pair = tuple(np.asarray(a) for a in collect(name, config, weights))
        pooled.setdefault(name, []).append(pair)
    return {
        name: tuple(np.concatenate([g[k] for g in groups]) for k in range(len(groups[0])))
        for name, groups in pooled.items()
    }


def _scatter(runs: list[list[str]], args: argparse.Namespace) -> dict:
    """name → (scores, IoUs) of the positives, pooled over the runs of a name."""
    return _pooled(runs, lambda name, config, weights: _scatter_pairs(name, config, weights, args))


def scatter_table(pairs: dict) -> str:
    """Markdown: per name, how far the positives' scores are from their IoUs.

    Columns: positives, mean IoU, mean score, Pearson r(score, IoU), mean |score − IoU|
    (0 on the diagonal) and the share scored below their IoU.
    """
    import numpy as np

    lines = [
        "| detector | positives | mean IoU | mean score | r(score, IoU) | mean abs(score − IoU) "
        "| score < IoU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (s, u) in pairs.items():
        r = np.corrcoef(u, s)[0, 1] if len(s) > 1 else float("nan")
        lines.append(
            f"| {name} | {len(s)} | {u.mean():.3f} | {s.mean():.3f} | {r:.2f} "
            f"| {np.abs(s - u).mean():.3f} | {(s < u).mean():.1%} |"
        )
    return "\n".join(lines)


def _entry_scores(runs: list[list[str]], args: argparse.Namespace) -> dict:
    """name → (background scores, positive scores), pooled over the runs of a name."""
    from hcral.viz import collect_entry_scores

    def collect(name: str, config: str, weights: str) -> tuple:
        model, dataset, cfg = _load(config, weights, args.device)
        print(f"{name}: {weights} on {len(dataset)} val images (max {args.max_images})")
        return collect_entry_scores(
            model, dataset, args.device, args.max_images, cfg.data.size_divisibility
        )

    return _pooled(runs, collect)


IOU_BINS = (0.0, 0.3, 0.5, 0.7, 0.85, 1.0)


def hcrar_terms(scores, pred, target, criterion) -> tuple:
    """(IoU (P,), HCRAR weight r̃ · CF_reg (P,), 1 − GIoU (P,)) of one run's positives.

    ``criterion``: the :class:`hcral.losses.hcrar.HCRARLoss` whose α, ep, r_max, γ, δ,
    focusing and centre are used (its loss weight and r̄ EMA are not). r̄ is the mean r
    over these positives: the value the EMA of batch means settles at.
    """
    import torch

    from hcral.boxes import aligned_giou
    from hcral.losses.hcrar import hcrar_weight, iou_and_centre_ratio, rci_coefficient

    c = criterion
    s, p, t = (torch.as_tensor(x, dtype=torch.float64) for x in (scores, pred, target))
    ious, ratio = iou_and_centre_ratio(p, t)
    r = rci_coefficient(s, ious, c.alpha, c.ep, c.r_max)
    w = hcrar_weight(p, t, r, ious, gamma=c.gamma, delta=c.delta, focusing=c.focusing,
                     centre=c.centre, centre_ratio=ratio)  # fmt: skip
    return ious.numpy(), w.numpy(), (1 - aligned_giou(p, t)).numpy()


def hcrar_table(terms: dict, bins: tuple = IOU_BINS) -> str:
    """Markdown: per name and IoU bin, the positives' share and HCRAR's share of the weight
    and of the loss, against GIoU (weight 1 each). ``terms``: name → :func:`hcrar_terms`."""
    import numpy as np

    lines = [
        "| detector | IoU | positives | share | mean r̃·CF | share of weight "
        "| share of GIoU loss | share of HCRAR loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (u, w, g) in terms.items():
        which = np.clip(np.digitize(u, bins[1:-1], right=False), 0, len(bins) - 2)
        for k in range(len(bins) - 1):
            m = which == k
            mean_w = f"{w[m].mean():.2f}" if m.any() else "–"
            lines.append(
                f"| {name} | {bins[k]:.2f}–{bins[k + 1]:.2f} | {m.sum()} | {m.mean():.1%} "
                f"| {mean_w} | {w[m].sum() / w.sum():.1%} | {g[m].sum() / g.sum():.1%} "
                f"| {(w * g)[m].sum() / (w * g).sum():.1%} |"
            )
        lines.append(f"| {name} | all | {len(u)} | 100% | {w.mean():.2f} | 100% | 100% | 100% |")
    return "\n".join(lines)


def _hcrar_criterion(text: str):
    """The HCRARLoss that ``--hcrar-args`` (a YAML mapping) describes; names and values
    are checked here, before any run is loaded or figure written."""
    import yaml

    from hcral.losses import build_reg_loss

    hcrar_args = yaml.safe_load(text) or {}
    if not isinstance(hcrar_args, dict):
        raise ValueError(f"--hcrar-args must be a YAML mapping, got {text!r}")
    return build_reg_loss("hcrar", **hcrar_args)


def _hcrar_terms(runs: list[list[str]], args: argparse.Namespace, criterion) -> dict:
    """name → :func:`hcrar_terms` with ``criterion``, pooled over the runs of a name."""
    from hcral.viz import collect_assigned_boxes

    def collect(name: str, config: str, weights: str) -> tuple:
        model, dataset, cfg = _load(config, weights, args.device)
        print(f"{name}: {weights} on {len(dataset)} val images (max {args.max_images})")
        boxes = collect_assigned_boxes(
            model, dataset, args.device, args.max_images, cfg.data.size_divisibility
        )
        return hcrar_terms(*boxes, criterion)

    return _pooled(runs, collect)


def entry_table(scores: dict) -> str:
    """Markdown: per name, the background mean and shares above 0.05 / 0.3, positives' mean."""
    lines = [
        "| detector | background entries | mean | > 0.05 | > 0.3 | positive entries | mean |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (bg, pos) in scores.items():
        lines.append(
            f"| {name} | {len(bg)} | {bg.mean():.3f} | {(bg > 0.05).mean():.1%} "
            f"| {(bg > 0.3).mean():.2%} | {len(pos)} | {pos.mean():.3f} |"
        )
    return "\n".join(lines)


def _add_run_option(parser: argparse.ArgumentParser, flag: str, what: str) -> None:
    """A repeatable ``FLAG NAME CONFIG WEIGHTS`` option; runs sharing NAME are pooled."""
    parser.add_argument(
        flag,
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "CONFIG", "WEIGHTS"),
        help=f"a trained detector {what} (runs sharing NAME are pooled)",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    _add_run_option(parser, "--run", "for the score-vs-IoU figure, e.g. a baseline and HCRAL")
    parser.add_argument("--scatter-png", default="score_vs_iou.png")
    _add_run_option(parser, "--entry-run", "for the entry-score histograms")
    parser.add_argument("--entry-png", default="entry_scores.png")
    _add_run_option(
        parser, "--hcrar-run", "whose positives get HCRAR's weights, printed by IoU bin"
    )
    parser.add_argument(
        "--hcrar-args",
        default="{alpha: -0.1, ep: 0.001, focusing: false}",
        help="HCRAR's parameters for --hcrar-run, a YAML mapping",
    )
    parser.add_argument("--max-images", type=int, default=200)
    parser.add_argument("--mode", default="auto", choices=["auto", "assigned", "detections"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    criterion = _hcrar_criterion(args.hcrar_args) if args.hcrar_run else None

    from hcral.viz import plot_entry_scores, plot_score_vs_iou, plot_weight_functions

    out = args.out / "weight_functions.png"
    plot_weight_functions(out)
    print(f"wrote {out}")
    if args.run:
        pairs = _scatter(args.run, args)
        out = args.out / args.scatter_png
        plot_score_vs_iou(pairs, out)
        print(scatter_table(pairs))
        print(f"wrote {out}")
    if args.entry_run:
        scores = _entry_scores(args.entry_run, args)
        out = args.out / args.entry_png
        plot_entry_scores(scores, out)
        print(entry_table(scores))
        print(f"wrote {out}")
    if args.hcrar_run:
        print(hcrar_table(_hcrar_terms(args.hcrar_run, args, criterion)))


if __name__ == "__main__":
    main()

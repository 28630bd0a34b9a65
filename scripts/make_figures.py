"""Regenerate the figures in docs/figures/.

Always writes ``weight_functions.png`` (ω, ρ, F(u), r as computed by hcral.losses).
Given two trained runs, also writes ``score_vs_iou.png`` (the paper's Fig. 3 idea):

    python scripts/make_figures.py
    python scripts/make_figures.py \\
        --run baseline configs/fcos_atss_focal_giou.yaml runs/base/last.pt \\
        --run HCRAL configs/fcos_atss_hcral.yaml runs/hcral/last.pt --max-images 200

Each ``--run NAME CONFIG WEIGHTS`` builds the detector from CONFIG, loads WEIGHTS (a
training checkpoint or a ``.safetensors`` export) and collects the score and IoU of
its positives on the config's validation set (see :func:`hcral.viz.collect_score_iou`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _scatter_pairs(name: str, config: str, weights: str, args: argparse.Namespace):
    import torch

    from hcral.config import load_config
    from hcral.data.coco import CocoDetection
    from hcral.data.transforms import build_transforms
    from hcral.engine.checkpoint import load_weights
    from hcral.models.build import build_model
    from hcral.viz import collect_score_iou

    cfg = load_config(config)
    d = cfg.data
    dataset = CocoDetection(
        d.val_json, d.val_images, build_transforms(False, d.min_size, d.max_size)
    )
    if cfg.model.num_classes == 0:
        cfg.model.num_classes = len(dataset.class_names)
    model = load_weights(build_model(cfg.model), weights).to(args.device)
    print(f"{name}: {config} + {weights} on {len(dataset)} val images (max {args.max_images})")
    with torch.no_grad():
        return collect_score_iou(
            model,
            dataset,
            args.device,
            args.max_images,
            mode=args.mode,
            size_divisibility=d.size_divisibility,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "figures")
    parser.add_argument(
        "--run",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "CONFIG", "WEIGHTS"),
        help="a trained detector for the score-vs-IoU figure (give two: baseline, HCRAL)",
    )
    parser.add_argument("--max-images", type=int, default=200)
    parser.add_argument("--mode", default="auto", choices=["auto", "assigned", "detections"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from hcral.viz import plot_score_vs_iou, plot_weight_functions

    out = args.out / "weight_functions.png"
    plot_weight_functions(out)
    print(f"wrote {out}")
    if args.run:
        pairs = {name: _scatter_pairs(name, cfg, w, args) for name, cfg, w in args.run}
        out = args.out / "score_vs_iou.png"
        plot_score_vs_iou(pairs, out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""The ``hcral`` command line: train, eval, predict, data make-sample, compare.

Every sub-command is a thin wrapper: it parses arguments, loads the config and hands
plain values to the library function that does the work. Heavy imports (torch models,
pycocotools) happen inside the command so that ``hcral --help`` is instant.

User errors (a bad config key, a missing file, a malformed dataset) are printed as one
line ``hcral: error: ...`` on stderr with exit status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any  # argparse's sub-parser action type is private

from hcral import __version__
from hcral.config import ConfigError, load_config

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _pick_device(name: str | None) -> str:
    if name:
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_train(args: argparse.Namespace) -> int:
    from hcral.engine.train import train

    cfg = load_config(args.config, args.set)
    result = train(cfg, resume=args.resume)
    _print_metrics(result)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from hcral.data import CocoDetection, build_transforms
    from hcral.engine.distributed import init_distributed
    from hcral.engine.evaluate import evaluate
    from hcral.predict import load_detector

    cfg = load_config(args.config, args.set)
    info = init_distributed(_pick_device(args.device))
    transforms = build_transforms(
        train=False, min_size=cfg.data.min_size, max_size=cfg.data.max_size, flip_prob=0.0
    )
    dataset = CocoDetection(
        cfg.data.val_json, cfg.data.val_images, transforms=transforms, skip_bad=cfg.data.skip_bad
    )
    cfg.model.num_classes = len(dataset.class_names)
    model, _, _ = load_detector(args.checkpoint, cfg, args.weights)
    metrics = evaluate(model.to(info.device), dataset, cfg, info.device, args.output_json)
    _print_metrics(metrics)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hcral.predict import predict

    cfg = load_config(args.config) if args.config else None
    out = predict(
        args.checkpoint,
        args.images,
        args.out,
        score_thresh=args.score_thresh,
        device=_pick_device(args.device),
        config=cfg,
        weights=args.weights,
    )
    print(f"wrote {len(args.images)} image(s) and {out.name} to {out.parent}")
    return 0


def cmd_make_sample(args: argparse.Namespace) -> int:
    from hcral.data import make_sample

    paths = make_sample(
        args.dir,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        overwrite=args.overwrite,
    )
    print(f"sample dataset in {args.dir}:")
    for key, value in paths.items():
        print(f"  {key}: {value}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if args.dry_run:
        from hcral.compare import plan_runs

        plan = plan_runs(
            args.grid, args.seeds, args.out, args.first_seed, args.study, args.reuse_from
        )
        print(plan.describe())
        return 0
    from hcral.compare import run_compare

    gpus = [g for g in args.gpus.split(",") if g] if args.gpus else []
    report = run_compare(
        args.grid,
        args.seeds,
        args.out,
        jobs=args.jobs,
        gpus=gpus,
        first_seed=args.first_seed,
        report_only=args.report_only,
        only=args.study,
        reuse_from=args.reuse_from,
        reference=args.reference,
    )
    print(f"comparison report: {report}")
    return 0


def _print_metrics(metrics: dict) -> None:
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"{key:<12} {value:8.3f}")
        else:
            print(f"{key:<12} {value}")


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override config values, e.g. --set train.lr=0.02 model.backbone=resnet50",
    )


def _add_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        choices=("auto", "ema", "raw"),
        default="auto",
        help="weights of a .pt checkpoint: auto = the EMA ones if the run kept them "
        "(train.ema_decay > 0), ema, or raw = the trained ones (default: auto)",
    )


def _add_train(sub: Any, common: argparse.ArgumentParser) -> None:
    """``hcral train CONFIG [--set ...] [--resume [PATH]]``."""
    p = sub.add_parser("train", parents=[common], help="train a detector from a YAML config")
    p.add_argument("config", type=Path, help="experiment YAML (see configs/)")
    _add_set(p)
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="PATH",
        help="resume from PATH, or from the run's last.pt when no PATH is given",
    )
    p.set_defaults(func=cmd_train)


def _add_eval(sub: Any, common: argparse.ArgumentParser) -> None:
    """``hcral eval CONFIG CHECKPOINT``: COCO AP on ``data.val_json``."""
    p = sub.add_parser("eval", parents=[common], help="COCO AP of a checkpoint on data.val_json")
    p.add_argument("config", type=Path, help="experiment YAML")
    p.add_argument("checkpoint", type=Path, help=".pt checkpoint or .safetensors weights")
    _add_set(p)
    p.add_argument(
        "--output-json",
        type=Path,
        default=None,
        help="also write the detections in COCO results format",
    )
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    _add_weights(p)
    p.set_defaults(func=cmd_eval)


def _add_predict(sub: Any, common: argparse.ArgumentParser) -> None:
    """``hcral predict CHECKPOINT IMAGES... --out DIR``."""
    p = sub.add_parser("predict", parents=[common], help="draw detections on image files")
    p.add_argument("checkpoint", type=Path, help=".pt checkpoint or .safetensors weights")
    p.add_argument("images", type=Path, nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--score-thresh", type=float, default=0.3, help="min score drawn (0.3)")
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config YAML, for weights files that carry no config",
    )
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    _add_weights(p)
    p.set_defaults(func=cmd_predict)


def _add_data(sub: Any, common: argparse.ArgumentParser) -> None:
    """``hcral data make-sample DIR``: the built-in sample dataset."""
    p = sub.add_parser("data", parents=[common], help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    q = data_sub.add_parser(
        "make-sample", parents=[common], help="write the built-in sample dataset (no download)"
    )
    q.add_argument("dir", type=Path, help="output directory, e.g. data/sample")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--num-train", type=int, default=480, help="training images (480)")
    q.add_argument("--num-val", type=int, default=120, help="validation images (120)")
    q.add_argument("--image-size", type=int, default=256, help="square image side (256)")
    q.add_argument(
        "--overwrite", action="store_true", help="replace a different dataset already in DIR"
    )
    q.set_defaults(func=cmd_make_sample)


def _add_compare(sub: Any, common: argparse.ArgumentParser) -> None:
    """``hcral compare GRID``: an ablation grid over seeds."""
    p = sub.add_parser("compare", parents=[common], help="run an ablation grid over seeds")
    p.add_argument("grid", type=Path, help="grid YAML (see configs/ablations/)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per grid cell (3)")
    p.add_argument("--first-seed", type=int, default=0, help="index of the first seed (0)")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output directory")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (1)")
    p.add_argument("--gpus", default="", help="e.g. 0,1: GPUs the parallel runs use in turn")
    p.add_argument(
        "--study",
        action="append",
        default=[],
        metavar="NAME",
        help="run and report only this study of the grid (repeatable; default: all)",
    )
    p.add_argument(
        "--reuse-from",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="copy runs still to do from identical finished runs under DIR (repeatable)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="train nothing, write nothing: count the runs finished, to train and to copy",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: write the tables from the runs finished so far",
    )
    p.add_argument(
        "--reference",
        metavar="CELL",
        help="compare every cell with this one instead of the grid's reference "
        "(e.g. --report-only --reference GIoU); each study reported must have it",
    )
    p.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each sub-command stores its handler in ``func``."""
    # --debug is accepted before or after the sub-command; SUPPRESS keeps a sub-parser
    # default from overwriting a value given to the main parser.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show full tracebacks on errors",
    )
    parser = argparse.ArgumentParser(
        prog="hcral",
        parents=[common],
        description="Dense object detection with HCRAC/HCRAR losses and the EATSS assigner.",
    )
    parser.add_argument("--version", action="version", version=f"hcral {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train(sub, common)
    _add_eval(sub, common)
    _add_predict(sub, common)
    _add_data(sub, common)
    _add_compare(sub, common)
    return parser


def _fail(message: str) -> int:
    print(f"hcral: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    debug = getattr(args, "debug", False)
    try:
        return func(args)
    except (ConfigError, ValueError, OSError) as e:
        if debug:
            raise
        # One line: multi-line messages (YAML parser errors) are joined.
        return _fail(" ".join(str(e).split()))
    except KeyboardInterrupt:
        if debug:
            raise
        print("hcral: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())

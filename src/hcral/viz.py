"""Figures: HCRAL's weight functions, score-vs-IoU scatter (paper Fig. 3), AP bar plots,
IoU histograms of assigned positives, score histograms of background and positive entries.

Every plot uses matplotlib's Agg backend (no display needed) and writes a PNG. The
curve data are computed by pure functions (:func:`weight_function_curves`) so tests can
check the plotted values against SPEC §2–3 at hand-computed points.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from hcral.compare import StudyTable

Curves = dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: never open a window
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- weight functions


def weight_function_curves(
    theta: float = 0.7,
    mu: float = 5.0,
    gamma: float = 1.2,
    delta: float = 1.5,
    alpha: float = -0.1,
    ep: float = 1e-3,
    r_ious: Iterable[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    num: int = 401,
) -> Curves:
    """The four HCRAL weight functions sampled on a grid, as ``{panel: {label: (x, y)}}``.

    Panels: ``omega`` (ω vs IoU, positives and negatives, SPEC Eq. 3), ``rho`` (RCI
    numerator ``exp(μ(u−s)₊) − 1`` vs ``u − s``, Eq. 5, before normalisation by ρ̄),
    ``focusing`` (F(u), Eq. 7) and ``r`` (r vs score, one curve per IoU, Eq. 8).
    Values come from the loss modules' own weight functions, so the figure shows what
    training computes.
    """
    from hcral.losses.hcrac import adaptive_omega, rci_numerator
    from hcral.losses.hcrar import focusing_factor, rci_coefficient

    u = torch.linspace(0, 1, num, dtype=torch.float64)
    gap = torch.linspace(-0.5, 1.0, num, dtype=torch.float64)  # u - s
    ones = torch.ones_like(u, dtype=torch.bool)
    curves: Curves = {
        "omega": {
            "positives": (u, adaptive_omega(u, ones, theta=theta)),
            "negatives": (u, adaptive_omega(u, ~ones, theta=theta)),
        },
        # The numerator depends on u - s only; keep u and s inside [0, 1].
        "rho": {f"μ={mu:g}": (gap, rci_numerator(gap.clamp(min=0), (-gap).clamp(min=0), mu=mu))},
        "focusing": {
            f"γ={gamma:g}, δ={delta:g}": (u, focusing_factor(u, gamma=gamma, delta=delta))
        },
        "r": {
            f"IoU={iou:g}": (u, rci_coefficient(u, torch.full_like(u, iou), alpha=alpha, ep=ep))
            for iou in r_ious
        },
    }
    return {
        panel: {k: (x.numpy(), y.detach().double().cpu().numpy()) for k, (x, y) in lines.items()}
        for panel, lines in curves.items()
    }


_PANELS = {
    "omega": ("ω: adaptive matrix (θ={theta:g})", "IoU u", "ω"),
    "rho": ("ρ numerator: exp(μ(u−s)₊) − 1", "u − s (IoU − score)", "ρ (un-normalised)"),
    "focusing": ("F(u): focusing factor", "IoU u", "F(u)"),
    "r": ("r: RCI coefficient (α={alpha:g}, ep={ep:g})", "score s", "r (log scale)"),
}


def plot_weight_functions(out_png: str | Path, **params: Any) -> Curves:
    """Draw the four weight functions (2×2 panels) into ``out_png``.

    Args:
        out_png: output file; its folder is created.
        **params: forwarded to :func:`weight_function_curves` (θ=0.7, μ=5, γ=1.2,
            δ=1.5, α=−0.1, ep=1e-3 by default, as in the paper).
    Returns:
        The plotted curves, as returned by :func:`weight_function_curves`.
    """
    curves = weight_function_curves(**params)
    names = {"theta": 0.7, "alpha": -0.1, "ep": 1e-3, **params}
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 8), constrained_layout=True)
    for ax, (panel, lines) in zip(axes.flat, curves.items()):
        title, xlabel, ylabel = _PANELS[panel]
        for j, (label, (x, y)) in enumerate(lines.items()):
            # dashed second line: ω of negatives lies on top of positives' below θ
            ax.plot(x, y, label=label, ls="--" if panel == "omega" and j else "-")
        ax.set(title=title.format(**names), xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].axvline(names["theta"], color="gray", ls=":", lw=1)
    r_ax = axes[1, 1]
    r_ax.set_yscale("log")
    r_ax.axhline(1.0, color="gray", ls=":", lw=1)  # r > 1: region 1, punished more
    fig.suptitle("HCRAL weight functions, computed by hcral.losses.hcrac / hcrar", fontsize=10)
    _save(fig, out_png)
    return curves


def _save(fig: Any, out_png: str | Path) -> None:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)


# --------------------------------------------------------------------------- score vs IoU


def _panel_title(name: str, n: int, corr: float, width: int = 36) -> str:
    """A scatter panel's title: the name wrapped at ``width`` characters (long names ran
    into the next panel), then the count and r on their own line."""
    return f"{textwrap.fill(name, width)}\nn={n}, r={corr:.2f}"


def plot_score_vs_iou(
    pairs_by_name: Mapping[str, tuple[Any, Any]], out_png: str | Path, max_points: int = 20000
) -> dict[str, tuple[int, float]]:
    """Scatter score vs IoU of positives, one panel per detector, with the y = x diagonal.

    The paper's Fig. 3 idea: a consistent detector's points hug the diagonal; points far
    above it are over-confident boxes, far below it good boxes with low scores.

    Args:
        pairs_by_name: name → (scores (P,), ious (P,)), arrays or tensors.
        out_png: output file.
        max_points: points drawn per panel; beyond it a fixed-seed random subset is drawn.
            The count and r in the title are always over all P points.

    Returns:
        name → (P, r(score, IoU)), the numbers in each panel's title.
    """
    if not pairs_by_name:
        raise ValueError("pairs_by_name: need at least one (scores, ious) pair")
    plt = _pyplot()
    n = len(pairs_by_name)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 5.0), squeeze=False, constrained_layout=True)
    rng = np.random.default_rng(0)
    stats: dict[str, tuple[int, float]] = {}
    for ax, (name, (scores, ious)) in zip(axes.flat, pairs_by_name.items()):
        s, u = _as_numpy(scores), _as_numpy(ious)
        if s.shape != u.shape or s.ndim != 1:
            raise ValueError(
                f"pairs_by_name[{name!r}]: scores {s.shape} and ious {u.shape} "
                "must be 1-D of equal length"
            )
        # r over every point, before thinning: the title must agree with the tables
        # (scripts/make_figures.py) that report r of the same pairs.
        corr = float(np.corrcoef(u, s)[0, 1]) if len(s) > 1 else math.nan
        stats[name] = (len(s), corr)
        if len(s) > max_points:
            keep = rng.choice(len(s), max_points, replace=False)
            s, u = s[keep], u[keep]
        ax.scatter(u, s, s=4, alpha=0.35, linewidths=0)
        ax.plot([0, 1], [0, 1], color="k", lw=1, ls="--", label="score = IoU")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="IoU with assigned GT",
            ylabel="score",
            title=_panel_title(name, *stats[name]),
        )
        ax.set_aspect("equal")
        ax.legend(loc="upper left", fontsize=8)
    _save(fig, out_png)
    return stats


def plot_iou_histograms(
    ious_by_name: Mapping[str, Any], out_png: str | Path, bins: int = 20
) -> list[np.ndarray]:
    """Overlaid histograms (share of each group per IoU bin) of positives' IoUs.

    Used to compare the ATSS positives with the extra positives EATSS adds
    (``benchmarks/bench_assigners.py --sample-data DIR --figure PNG``).

    Args:
        ious_by_name: name → IoUs in [0, 1] ``(P,)``, arrays or tensors.
        out_png: output file.
        bins: equal-width bins over [0, 1].
    Returns:
        The plotted shares, one ``(bins,)`` array per group, each summing to 1.
    """
    if not ious_by_name:
        raise ValueError("ious_by_name: need at least one group of IoUs")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), constrained_layout=True)
    edges = np.linspace(0.0, 1.0, bins + 1)
    shares = []
    for name, ious in ious_by_name.items():
        u = _as_numpy(ious)
        if u.ndim != 1 or not len(u):
            raise ValueError(f"ious_by_name[{name!r}]: need a non-empty 1-D array, got {u.shape}")
        share = np.histogram(np.clip(u, 0.0, 1.0), edges)[0] / len(u)
        shares.append(share)
        label = f"{name} (n={len(u)}, median {np.median(u):.2f})"
        ax.stairs(share, edges, label=label, fill=True, alpha=0.45)
    ax.set(xlim=(0, 1), xlabel="IoU of the prior with its GT", ylabel="share of the group")
    ax.legend(fontsize=8)
    _save(fig, out_png)
    return shares


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _one_by_one(
    dataset: Any, max_images: int, size_divisibility: int, device: torch.device | str
) -> Iterator[tuple[Tensor, tuple[int, int], dict]]:
    """``(image (1, 3, H', W') zero-padded to the divisibility, (h, w), target)`` for the
    first ``max_images`` items of ``dataset`` (all when ``max_images`` ≤ 0)."""
    n = len(dataset) if max_images <= 0 else min(len(dataset), max_images)
    for i in range(n):
        image, target = dataset[i]
        h, w = image.shape[-2:]
        pad = ((-w) % size_divisibility, (-h) % size_divisibility)
        yield (
            torch.nn.functional.pad(image, (0, pad[0], 0, pad[1]))[None].to(device),
            (h, w),
            target,
        )


def _gather(
    per_image: Callable[..., tuple[Tensor, ...]],
    images: Iterable[tuple[Tensor, tuple[int, int], dict]],
    empty: tuple[np.ndarray, ...],
) -> tuple[np.ndarray, ...]:
    """Each output of ``per_image(batch, [size], target)`` as float32, concatenated over
    ``images`` (as :func:`_one_by_one` yields them); ``empty`` when there is no image."""
    parts = [
        tuple(x.float().cpu() for x in per_image(batch, [size], target))
        for batch, size, target in images
    ]
    if not parts:
        return empty
    return tuple(torch.cat(x).numpy() for x in zip(*parts))


@torch.no_grad()
def collect_score_iou(
    model: torch.nn.Module,
    dataset: Any,
    device: torch.device | str,
    max_images: int = 100,
    mode: str = "auto",
    min_iou: float = 0.5,
    size_divisibility: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Score and IoU of a trained detector's positives, one image at a time.

    Two ways to say which predictions are "positives":

    - ``"assigned"`` (the paper's Fig. 3, used by ``"auto"`` when the model is a
      :class:`~hcral.models.detector.DenseDetector`): the model's own assigner picks the
      positive priors exactly as in training; each gives the sigmoid score of its
      assigned class (the classification score, without FCOS+ATSS's quality factor) and
      the IoU of its decoded box with its assigned ground truth.
    - ``"detections"`` (any model with the ``model(images, image_sizes)`` inference
      interface): each final detection (after score threshold and NMS) is matched to
      the same-class ground truth of largest IoU and kept when that IoU ≥ ``min_iou``.

    Args:
        model: trained detector; put in eval mode.
        dataset: indexable, yielding ``(image (3, H, W) in [0, 1], target)`` with target
            ``boxes`` (M, 4) in the resized image's pixels, ``labels`` (M,), optional
            ``iscrowd`` (M,).
        device: where to run.
        max_images: images to use (≤ 0: all).
        mode: ``"auto"``, ``"assigned"`` or ``"detections"``.
        min_iou: IoU threshold of the ``"detections"`` mode.
        size_divisibility: images are zero-padded to a multiple of this.
    Returns:
        (scores (P,), ious (P,)) float arrays over all images.
    """
    from hcral.models.detector import DenseDetector

    if mode == "auto":
        mode = "assigned" if isinstance(model, DenseDetector) else "detections"
    if mode not in ("assigned", "detections"):
        raise ValueError(f"mode must be 'auto', 'assigned' or 'detections', got {mode!r}")
    if mode == "assigned" and not isinstance(model, DenseDetector):
        raise ValueError(f"mode 'assigned' needs a DenseDetector, got {type(model).__name__}")
    pairs = _assigned_pairs if mode == "assigned" else _detection_pairs
    model.eval()
    return _gather(
        lambda batch, sizes, target: pairs(model, batch, sizes, target, min_iou),
        _one_by_one(dataset, max_images, size_divisibility, device),
        empty=(np.zeros(0), np.zeros(0)),
    )


def _assigned_forward(
    model: Any, images: Tensor, image_sizes: list[tuple[int, int]], target: dict
) -> tuple[Tensor, Tensor, Any, Any]:
    """The training forward up to the assignment (DenseDetector.forward / .losses).

    Returns the logits ``(1, R, C)``, decoded boxes ``(1, R, 4)``, the
    :class:`~hcral.assigners.AssignResult` and the padded ground truths.
    """
    from hcral.models.detector import flatten_levels, pad_targets

    out = model.head(model.fpn(model.backbone(model.preprocess(images, image_sizes))))
    priors = model.priors([m.shape[-2:] for m in out.cls_logits], images.device)
    cls = flatten_levels(out.cls_logits, model.num_classes).float()  # (1, R, C)
    boxes = model.decode_boxes(flatten_levels(out.box_reg, 4).float(), priors)  # (1, R, 4)
    gt = pad_targets([target], model.num_classes, images.device)
    return cls, boxes, model.assign(priors, gt, boxes), gt


def _assigned_positives(
    model: Any, images: Tensor, image_sizes: list[tuple[int, int]], target: dict
) -> tuple[Tensor, Tensor, Tensor]:
    """Scores (P,), decoded boxes (P, 4) and assigned GT boxes (P, 4) of the priors the
    model's assigner makes positive."""
    cls, boxes, assign, gt = _assigned_forward(model, images, image_sizes, target)
    img, prior = assign.pos_mask.nonzero(as_tuple=True)
    labels = assign.labels[img, prior]
    target_boxes = gt.boxes[img, assign.gt_inds[img, prior]]
    return cls[img, prior, labels].sigmoid(), boxes[img, prior], target_boxes


def _assigned_pairs(
    model: Any, images: Tensor, image_sizes: list[tuple[int, int]], target: dict, _min_iou: float
) -> tuple[Tensor, Tensor]:
    """(P,) scores and IoUs of the priors the model's assigner makes positive."""
    from hcral.boxes import aligned_iou

    scores, boxes, target_boxes = _assigned_positives(model, images, image_sizes, target)
    return scores, aligned_iou(boxes, target_boxes)


@torch.no_grad()
def collect_assigned_boxes(
    model: torch.nn.Module,
    dataset: Any,
    device: torch.device | str,
    max_images: int = 100,
    size_divisibility: int = 128,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What a box loss sees of a trained detector's positives, one image at a time.

    The positives are those of :func:`collect_score_iou`'s ``"assigned"`` mode: the
    model's own assigner picks them exactly as in training.

    Args:
        model: a trained :class:`~hcral.models.detector.DenseDetector`; put in eval mode.
        dataset, device, max_images, size_divisibility: as :func:`collect_score_iou`.
    Returns:
        (scores (P,), predicted boxes (P, 4), assigned GT boxes (P, 4)) float arrays over
        all images, boxes xyxy in the resized image's pixels, scores the sigmoid of the
        assigned class (HCRAR's ``s``).
    """
    from hcral.models.detector import DenseDetector

    if not isinstance(model, DenseDetector):
        name = type(model).__name__
        raise ValueError(f"collect_assigned_boxes needs a DenseDetector, got {name}")
    model.eval()
    return _gather(
        lambda batch, sizes, target: _assigned_positives(model, batch, sizes, target),
        _one_by_one(dataset, max_images, size_divisibility, device),
        empty=(np.zeros(0), np.zeros((0, 4)), np.zeros((0, 4))),
    )


def _detection_pairs(
    model: Any, images: Tensor, image_sizes: list[tuple[int, int]], target: dict, min_iou: float
) -> tuple[Tensor, Tensor]:
    """(P,) scores and IoUs of final detections matched to a same-class GT (IoU ≥ min_iou)."""
    from hcral.boxes import box_iou

    det = model(images, image_sizes)[0]
    gt_boxes = torch.as_tensor(target["boxes"], dtype=torch.float32, device=images.device)
    gt_labels = torch.as_tensor(target["labels"], device=images.device)
    if len(det["boxes"]) == 0 or len(gt_boxes) == 0:
        return torch.zeros(0), torch.zeros(0)
    iou = box_iou(det["boxes"].float(), gt_boxes)  # (K, M)
    same = det["labels"][:, None] == gt_labels[None, :]
    best = iou.masked_fill(~same, -1.0).amax(dim=1)  # (K,)
    keep = best >= min_iou
    return det["scores"][keep], best[keep]


# --------------------------------------------------------------------------- entry scores


@torch.no_grad()
def collect_entry_scores(
    model: torch.nn.Module,
    dataset: Any,
    device: torch.device | str,
    max_images: int = 100,
    size_divisibility: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid scores of the classification entries a trained detector's loss sees.

    The model's own assigner labels the priors of each image as in training. An entry
    is one (prior, class) pair: it is *positive* for a positive prior's own class, and
    *background* (target 0) for every class of a negative prior and the other classes
    of a positive prior. Ignored priors (label −1) are left out. A classifier that
    separates objects from background keeps nearly all background entries below the
    inference score threshold (0.05 in the shipped configs).

    Args:
        model: a trained :class:`~hcral.models.detector.DenseDetector`; put in eval mode.
        dataset: as for :func:`collect_score_iou`.
        device: where to run.
        max_images: images to use (≤ 0: all).
        size_divisibility: images are zero-padded to a multiple of this.
    Returns:
        (background (B,), positive (P,)) float32 score arrays over all images.
    """
    from hcral.losses._reduce import one_hot_targets

    def split(batch: Tensor, sizes: list[tuple[int, int]], target: dict) -> tuple[Tensor, Tensor]:
        cls, _, assign, _ = _assigned_forward(model, batch, sizes, target)
        labels = assign.labels[0]  # (R,) 0..C-1 positive, C background, -1 ignored
        valid = labels >= 0
        scores = cls[0, valid].sigmoid()  # (R', C)
        own = one_hot_targets(labels[valid], cls.shape[-1]).bool()
        return scores[~own], scores[own]

    model.eval()
    return _gather(
        split,
        _one_by_one(dataset, max_images, size_divisibility, device),
        empty=(np.zeros(0, np.float32), np.zeros(0, np.float32)),
    )


def plot_entry_scores(
    scores_by_name: Mapping[str, tuple[Any, Any]], out_png: str | Path, bins: int = 20
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Histograms of background and positive entry scores, one line per detector.

    Left panel: the share of background entries per score bin (log scale, so the rare
    confident false positives show); right panel: the same for positive entries.

    Args:
        scores_by_name: name → (background scores (B,), positive scores (P,)) in [0, 1],
            as :func:`collect_entry_scores` returns them.
        out_png: output file.
        bins: equal-width bins over [0, 1].
    Returns:
        name → (background shares (bins,), positive shares (bins,)), each summing to 1.
    """
    if not scores_by_name:
        raise ValueError("scores_by_name: need at least one (background, positive) pair")
    plt = _pyplot()
    fig, (ax_bg, ax_pos) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    edges = np.linspace(0.0, 1.0, bins + 1)
    shares = {}
    for name, groups in scores_by_name.items():
        pair = []
        for kind, values in zip(("background", "positive"), groups):
            v = _as_numpy(values)
            if v.ndim != 1 or not len(v):
                raise ValueError(f"scores_by_name[{name!r}]: no {kind} scores (shape {v.shape})")
            pair.append(np.histogram(np.clip(v, 0.0, 1.0), edges)[0] / len(v))
        shares[name] = (pair[0], pair[1])
        above = float((_as_numpy(groups[0]) > 0.05).mean())
        ax_bg.stairs(pair[0], edges, label=f"{name} ({above:.1%} > 0.05)")
        ax_pos.stairs(pair[1], edges, label=f"{name} (mean {_as_numpy(groups[1]).mean():.2f})")
    ax_bg.set(yscale="log", xlabel="score", ylabel="share of background entries")
    ax_pos.set(xlabel="score", ylabel="share of positive entries")
    for ax in (ax_bg, ax_pos):
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8)
    _save(fig, out_png)
    return shares


# --------------------------------------------------------------------------- traces


def plot_trace(
    rows: Sequence[Mapping[str, float]],
    panels: Sequence[tuple[Sequence[tuple[str, str]], Mapping[str, Any]]],
    out_png: str | Path,
    title: str = "",
) -> None:
    """Per-iteration values, one panel per ``(lines, axis settings)`` of ``panels``.

    Each line ``(key, label)`` plots ``row[key]`` against ``row["iter"]`` (a gap where a
    row lacks the key); the axis settings go to ``Axes.set`` (e.g. ``{"yscale": "log"}``).
    """
    if not rows:
        raise ValueError("rows: nothing to plot")
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=True)
    axes = np.atleast_1d(axes)
    it = [r["iter"] for r in rows]
    for ax, (lines, settings) in zip(axes, panels):
        for key, label in lines:
            ax.plot(it, [r.get(key, math.nan) for r in rows], label=label)
        ax.set(**settings)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("iteration")
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, out_png)


# --------------------------------------------------------------------------- AP bars


def plot_ap_bars(table: StudyTable, out_png: str | Path, metric: str = "AP") -> None:
    """Bar per cell: mean ``metric`` over seeds, error bar = its t interval (none if n=1).

    The reference cell is drawn in a different colour; each bar carries the cell's
    mark (≈, ▲, ▼, –) from :func:`hcral.compare.compare_mark`.
    """
    if not table.rows:
        raise ValueError(f"table {table.study!r}: no rows to plot")
    plt = _pyplot()
    names = [r.name for r in table.rows]
    summ = [r.metrics[metric] for r in table.rows]
    means = np.array([s.mean for s in summ])
    err = np.array([s.hi - s.mean if s.has_interval else 0.0 for s in summ])
    colors = ["tab:gray" if n == table.reference else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 4), constrained_layout=True)
    x = np.arange(len(names))
    ax.bar(x, means, yerr=err, capsize=4, color=colors)
    for xi, m, e, row in zip(x, means, err, table.rows):
        if math.isfinite(m):
            ax.annotate(row.mark, (xi, m + e), ha="center", va="bottom", fontsize=9)
    finite = means[np.isfinite(means)]
    if finite.size:  # zoom in: differences of a few tenths of AP are what matters
        lo, hi = (finite - err[np.isfinite(means)]).min(), (finite + err[np.isfinite(means)]).max()
        pad = max(0.15 * (hi - lo), 0.05 * abs(hi), 1e-3)
        ax.set_ylim(max(0.0, lo - pad), hi + pad)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    pct = round(table.confidence * 100)
    lo_n, hi_n = min(s.n for s in summ), max(s.n for s in summ)
    n = f"{lo_n}" if lo_n == hi_n else f"{lo_n}–{hi_n}"  # pooled tables can mix seed counts
    ax.set(ylabel=metric, title=f"{table.study}: {metric} (n={n} seeds, {pct}% t interval)")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, out_png)

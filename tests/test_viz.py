"""Figures: weight-function values against SPEC at hand points, PNGs written, score/IoU pairs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests._scripts import load_script
from torch import nn

from hcral import viz
from hcral.compare import CellSummary, StudyTable, Summary


def _at(curve: tuple[np.ndarray, np.ndarray], x: float) -> float:
    xs, ys = curve
    i = int(np.argmin(np.abs(xs - x)))
    assert abs(xs[i] - x) < 1e-9, f"{x} is not a grid point"
    return float(ys[i])


@pytest.fixture(scope="module")
def curves():
    return viz.weight_function_curves(num=401)  # grid step 1/400 on [0, 1], 1.5/400 on gap


def test_omega_curve_matches_eq3(curves):
    pos, neg = curves["omega"]["positives"], curves["omega"]["negatives"]
    assert _at(pos, 0.5) == pytest.approx(1.5)
    assert _at(pos, 1.0) == pytest.approx(2.0)
    assert _at(neg, 0.5) == pytest.approx(1.5)  # below θ: 1 + u
    assert _at(neg, 0.7) == pytest.approx(1.7)  # peak 1 + θ
    assert _at(neg, 0.85) == pytest.approx(1.7 * 0.15 / 0.3, rel=1e-5)  # (1+θ)(1-u)/(1-θ)
    assert _at(neg, 1.0) == pytest.approx(0.0, abs=1e-6)


def test_rho_curve_matches_eq5(curves):
    (rho,) = curves["rho"].values()
    assert _at(rho, 0.25) == pytest.approx(math.exp(1.25) - 1, rel=1e-5)
    assert _at(rho, 1.0) == pytest.approx(math.exp(5.0) - 1, rel=1e-5)
    x, y = rho
    assert np.all(y[x <= 0] == 0)  # score at or above the IoU: no weight


def test_focusing_curve_matches_eq7(curves):
    (f,) = curves["focusing"].values()
    x, y = f
    assert _at(f, 0.0) == pytest.approx(1.0) and _at(f, 1.0) == pytest.approx(1.0)
    # peak δ = 1.5 at u* = 1 / (1 + γ) = 0.4545...
    assert y.max() == pytest.approx(1.5, abs=1e-4)
    assert x[np.argmax(y)] == pytest.approx(1 / 2.2, abs=2.5e-3)
    u = 0.25  # hand value: φ = 0.25 · 0.75^1.2 / (u* (1 - u*)^1.2)
    u_star = 1 / 2.2
    phi = u * 0.75**1.2 / (u_star * (1 - u_star) ** 1.2)
    assert _at(f, u) == pytest.approx(1 + 0.5 * phi, rel=1e-5)


def test_r_curve_matches_eq8(curves):
    r = curves["r"]
    assert set(r) == {"IoU=0.1", "IoU=0.3", "IoU=0.5", "IoU=0.7", "IoU=0.9"}
    assert _at(r["IoU=0.3"], 0.5) == pytest.approx((0.5 + 0.1 + 1e-3) / (0.3 + 1e-3), rel=1e-5)
    # r = 1 exactly on the line s = u + α (α = -0.1): s = 0.6 for IoU 0.7
    assert _at(r["IoU=0.7"], 0.6) == pytest.approx(1.0, rel=1e-5)


def _capture(monkeypatch) -> list:
    figs = []
    real_save = viz._save

    def save(fig, out_png):
        figs.append(fig)
        real_save(fig, out_png)

    monkeypatch.setattr(viz, "_save", save)
    return figs


def test_plot_weight_functions_writes_png_of_the_curves(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    out = tmp_path / "sub" / "w.png"
    curves = viz.plot_weight_functions(out, theta=0.6)
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    omega_ax = figs[0].axes[0]
    neg = next(line for line in omega_ax.get_lines() if line.get_label() == "negatives")
    assert np.allclose(neg.get_ydata(), curves["omega"]["negatives"][1])
    assert _at(curves["omega"]["negatives"], 0.6) == pytest.approx(1.6)  # θ was forwarded
    assert "θ=0.6" in omega_ax.get_title()


def test_plot_score_vs_iou(tmp_path):
    out = tmp_path / "scatter.png"
    rng = np.random.default_rng(0)
    u = rng.uniform(0, 1, 300)
    viz.plot_score_vs_iou({"baseline": (u * 0.5, u), "HCRAL": (torch.tensor(u), u)}, out)
    assert out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="baseline"):
        viz.plot_score_vs_iou({"baseline": (u[:3], u)}, out)
    with pytest.raises(ValueError, match="pairs_by_name"):
        viz.plot_score_vs_iou({}, out)


def test_plot_score_vs_iou_r_is_over_all_points(tmp_path):
    # 2000 points, 100 drawn: r of a 100-point subset differs from r of all 2000 in the
    # second decimal, so a title computed after thinning would not match the tables.
    rng = np.random.default_rng(1)
    u = rng.uniform(0, 1, 2000)
    s = np.clip(0.5 * u + rng.normal(0, 0.2, 2000), 0, 1)
    stats = viz.plot_score_vs_iou({"a": (s, u)}, tmp_path / "s.png", max_points=100)
    full = np.corrcoef(u, s)[0, 1]
    sub = np.random.default_rng(0).choice(2000, 100, replace=False)
    assert abs(np.corrcoef(u[sub], s[sub])[0, 1] - full) > 0.01  # the check can fail
    assert stats == {"a": (2000, pytest.approx(full, abs=1e-12))}


def test_scatter_panel_title_wraps_long_names():
    title = viz._panel_title("gated EATSS + HCRAC-focal + HCRAR, pooled seeds", 8397, 0.5449)
    lines = title.split("\n")
    assert lines[-1] == "n=8397, r=0.54"
    assert len(lines) == 3 and all(len(line) <= 36 for line in lines)
    assert " ".join(lines[:-1]) == "gated EATSS + HCRAC-focal + HCRAR, pooled seeds"
    assert viz._panel_title("ATSS", 10, 0.1) == "ATSS\nn=10, r=0.10"


def test_plot_iou_histograms_shares(tmp_path):
    out = tmp_path / "hist.png"
    shares = viz.plot_iou_histograms(
        {"ATSS": np.array([0.05, 0.55, 0.55, 0.95]), "extras": torch.tensor([0.1, 0.12])},
        out,
        bins=10,
    )
    assert out.stat().st_size > 5_000
    assert shares[0] == pytest.approx([0.25, 0, 0, 0, 0, 0.5, 0, 0, 0, 0.25])
    assert shares[1] == pytest.approx([0, 1.0, 0, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ValueError, match="extras"):
        viz.plot_iou_histograms({"extras": np.zeros(0)}, out)
    with pytest.raises(ValueError, match="ious_by_name"):
        viz.plot_iou_histograms({}, out)


def _table() -> StudyTable:
    rows = [
        CellSummary("FL", {"AP": Summary(3, 36.0, 0.2, 35.5, 36.5)}, 60.0, "ref"),
        CellSummary("HCRAC", {"AP": Summary(3, 37.0, 0.3, 36.3, 37.7)}, 60.0, "▲"),
        CellSummary("QFL", {"AP": Summary(1, 36.2, math.nan, math.nan, math.nan)}, 60.0, "–"),
    ]
    return StudyTable("cls", "FL", rows)


def test_plot_ap_bars_heights_and_error_bars(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    out = tmp_path / "bars.png"
    viz.plot_ap_bars(_table(), out)
    assert out.stat().st_size > 5_000
    ax = figs[0].axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([36.0, 37.0, 36.2])
    # error bar segments: (x, mean - err) -> (x, mean + err); err = hi - mean, 0 for n = 1
    (segments,) = [c.get_segments() for c in ax.collections]
    spans = [seg[1][1] - seg[0][1] for seg in segments]
    assert spans == pytest.approx([1.0, 1.4, 0.0])
    assert [t.get_text() for t in ax.texts] == ["ref", "▲", "–"]
    assert ax.get_title() == "cls: AP (n=1–3 seeds, 95% t interval)"  # cells differ in n


def test_plot_ap_bars_empty_table(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        viz.plot_ap_bars(StudyTable("s", "a", []), tmp_path / "x.png")


# --------------------------------------------------------------------------- score / IoU


class FixedDetector(nn.Module):
    """Returns the same detections for every image (inference interface only)."""

    def forward(self, images, image_sizes):
        dev = images.device
        boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 20], [50, 50, 60, 60.0]], device=dev)
        scores = torch.tensor([0.9, 0.6, 0.8], device=dev)
        labels = torch.tensor([0, 0, 1], device=dev)
        return [{"boxes": boxes, "scores": scores, "labels": labels} for _ in image_sizes]


def test_collect_score_iou_detections(device):
    target = {"boxes": torch.tensor([[0, 0, 10, 10.0], [50, 50, 60, 60.0]]), "labels": [0, 0]}
    data = [(torch.zeros(3, 64, 80), target)] * 3
    scores, ious = viz.collect_score_iou(FixedDetector(), data, device, max_images=2)
    # det 0: IoU 1 with GT 0; det 1: IoU 100/200 = 0.5 (kept, ≥ 0.5); det 2: class 1, no
    # GT of its class -> dropped although it overlaps GT 1 perfectly. Two images.
    assert scores.tolist() == pytest.approx([0.9, 0.6] * 2)
    assert ious.tolist() == pytest.approx([1.0, 0.5] * 2)
    scores, _ = viz.collect_score_iou(FixedDetector(), data, device, mode="detections", min_iou=0.6)
    assert scores.tolist() == pytest.approx([0.9] * 3)
    with pytest.raises(ValueError, match="DenseDetector"):
        viz.collect_score_iou(FixedDetector(), data, device, mode="assigned")
    with pytest.raises(ValueError, match="mode"):
        viz.collect_score_iou(FixedDetector(), data, device, mode="nope")


def test_collect_score_iou_assigned_uses_the_assigner(device):
    build = pytest.importorskip("hcral.models.build")
    from hcral.config import ModelConfig

    cfg = ModelConfig(name="retinanet", num_classes=2, fpn_channels=64, num_convs=1)
    try:
        model = build.build_model(cfg).to(device)
    except (ImportError, ValueError) as e:  # parts written by other tasks may be missing
        pytest.skip(f"retinanet not buildable yet: {e}")
    # A 64×64 box at (32, 32): RetinaNet anchors at stride 8..16 overlap it with IoU > 0.5.
    target = {"boxes": torch.tensor([[32.0, 32.0, 96.0, 96.0]]), "labels": torch.tensor([1])}
    data = [(torch.rand(3, 250, 256), target)]
    scores, ious = viz.collect_score_iou(model, data, device)
    assert len(scores) == len(ious) >= 1
    assert np.all((scores > 0) & (scores < 1)) and np.all((ious >= 0) & (ious <= 1))
    # Same model, detection matching instead: a different, independent path still runs.
    viz.collect_score_iou(model, data, device, mode="detections", min_iou=0.0)


def _small_retinanet(device):
    build = pytest.importorskip("hcral.models.build")
    from hcral.config import ModelConfig

    cfg = ModelConfig(name="retinanet", num_classes=3, fpn_channels=64, num_convs=1)
    torch.manual_seed(0)
    return build.build_model(cfg).to(device)


def test_collect_entry_scores_splits_every_valid_entry(device):
    model = _small_retinanet(device)
    # Two GTs of classes 1 and 2; RetinaNet anchors overlap each with IoU > 0.5, and
    # anchors with IoU in [0.4, 0.5) are ignored.
    boxes = torch.tensor([[32.0, 32.0, 96.0, 96.0], [120.0, 100.0, 200.0, 140.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2])}
    data = [(torch.rand(3, 250, 256), target)] * 2
    background, positive = viz.collect_entry_scores(model, data, device)
    image = torch.nn.functional.pad(data[0][0], (0, 0, 0, 6))[None].to(device)
    with torch.no_grad():
        cls, _, assign, _ = viz._assigned_forward(model.eval(), image, [(250, 256)], target)
    labels = assign.labels[0]
    valid, pos = int((labels >= 0).sum()), int(((labels >= 0) & (labels < 3)).sum())
    assert 0 < pos and (labels == -1).any()  # the case has positives and ignored priors
    assert len(positive) == 2 * pos and len(background) == 2 * (valid * 3 - pos)
    # The positive entries are exactly the assigned positives' own-class scores.
    own, _ = viz.collect_score_iou(model, data, device, mode="assigned")
    assert np.sort(positive) == pytest.approx(np.sort(own))
    # Image 0's background, rebuilt by hand: all classes of negative priors, the two
    # other classes of each positive prior, in prior order.
    probs, lab = cls[0].sigmoid().cpu(), labels.cpu()
    rows = [p[[c for c in range(3) if c != int(k)]] for p, k in zip(probs, lab) if k >= 0]
    assert background[: len(background) // 2] == pytest.approx(torch.cat(rows).numpy(), abs=1e-6)
    assert viz.collect_entry_scores(model, data, device, max_images=1)[1].shape == (pos,)


def test_plot_entry_scores_shares(tmp_path):
    out = tmp_path / "scores.png"
    shares = viz.plot_entry_scores(
        {"a": (np.array([0.01, 0.02, 0.03, 0.55]), torch.tensor([0.95, 0.15]))}, out, bins=10
    )
    assert out.stat().st_size > 5_000
    assert shares["a"][0] == pytest.approx([0.75, 0, 0, 0, 0, 0.25, 0, 0, 0, 0])
    assert shares["a"][1] == pytest.approx([0, 0.5, 0, 0, 0, 0, 0, 0, 0, 0.5])
    with pytest.raises(ValueError, match="no positive scores"):
        viz.plot_entry_scores({"b": (np.ones(3), np.zeros(0))}, out)
    with pytest.raises(ValueError, match="scores_by_name"):
        viz.plot_entry_scores({}, out)


def test_make_figures_script_writes_weight_figure(tmp_path):
    module = load_script("make_figures")
    module.main(["--out", str(tmp_path)])
    assert (tmp_path / "weight_functions.png").stat().st_size > 10_000
    assert not (tmp_path / "score_vs_iou.png").exists()  # no --run given


def test_make_figures_entry_table():
    module = load_script("make_figures")
    bg, pos = np.array([0.01, 0.04, 0.1, 0.5]), np.array([0.2, 0.6])
    lines = module.entry_table({"HCRAC": (bg, pos)}).splitlines()
    assert lines[2] == "| HCRAC | 4 | 0.163 | 50.0% | 25.00% | 2 | 0.400 |"


def test_make_figures_scatter_table():
    module = load_script("make_figures")
    s = np.array([0.5, 0.2, 0.9, 0.4])
    u = np.array([0.5, 0.6, 0.7, 0.8])
    lines = module.scatter_table({"HCRAL": (s, u)}).splitlines()
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    r = np.corrcoef(u, s)[0, 1]
    # |s - u| = 0, 0.4, 0.2, 0.4 -> 0.25; below the diagonal: 0.2 < 0.6 and 0.4 < 0.8
    assert cells == ["HCRAL", "4", "0.650", "0.500", f"{r:.2f}", "0.250", "50.0%"]


def test_plot_trace_lines_and_gaps(tmp_path, monkeypatch):
    figs = _capture(monkeypatch)
    rows = [{"iter": 1, "a": 2.0, "b": 1.0}, {"iter": 2, "a": 3.0}]
    panels = [([("a", "A")], {"yscale": "log"}), ([("b", "B"), ("a", "A again")], {})]
    viz.plot_trace(rows, panels, tmp_path / "t.png", "title")
    assert (tmp_path / "t.png").stat().st_size > 5_000
    top, bottom = figs[0].axes
    assert top.get_yscale() == "log" and top.get_title() == "title"
    assert list(top.lines[0].get_ydata()) == [2.0, 3.0]
    b = bottom.lines[0].get_ydata()
    assert b[0] == 1.0 and math.isnan(b[1])  # row 2 has no "b"
    with pytest.raises(ValueError, match="rows"):
        viz.plot_trace([], panels, tmp_path / "x.png")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> list[str]:
    """[config.yaml, last.pt] of a one-iteration tiny ATSS run, for the make_figures tests."""
    from tests._scripts import tiny_config

    from hcral.engine.train import build_datasets, train

    tmp_path = tmp_path_factory.mktemp("tiny_run")
    cfg = tiny_config(tmp_path)
    cfg.train.max_iters = 1
    cfg.train.output_dir = str(tmp_path / "run")
    train(cfg, train_set=build_datasets(cfg)[0])
    return [str(tmp_path / "run" / "config.yaml"), str(tmp_path / "run" / "last.pt")]


def test_make_figures_pools_runs_that_share_a_name(tmp_path, capsys, tiny_run):
    run = tiny_run
    module = load_script("make_figures")
    argv = ["--out", str(tmp_path / "f"), "--max-images", "1", "--scatter-png", "s.png"]
    module.main(argv + ["--run", "one", *run])
    one = _table_rows(capsys.readouterr().out)
    module.main(argv + ["--run", "two", *run, "--run", "two", *run, "--run", "other", *run])
    rows = _table_rows(capsys.readouterr().out)
    assert (tmp_path / "f" / "s.png").stat().st_size > 0
    assert list(rows) == ["two", "other"] and rows["other"] == one["one"]
    assert int(rows["two"][0]) == 2 * int(one["one"][0]) > 0  # the same run twice, pooled
    assert rows["two"][1:] == one["one"][1:]
    # --entry-run pools the same way: counts add up, means and shares stay
    entry_argv = argv + ["--entry-png", "e.png"]
    module.main(entry_argv + ["--entry-run", "one", *run])
    one = _table_rows(capsys.readouterr().out)
    module.main(entry_argv + ["--entry-run", "two", *run, "--entry-run", "two", *run])
    rows = _table_rows(capsys.readouterr().out)
    assert (tmp_path / "f" / "e.png").stat().st_size > 0
    bg, pos = int(one["one"][0]), int(one["one"][4])
    assert [int(rows["two"][0]), int(rows["two"][4])] == [2 * bg, 2 * pos] and bg > 0
    assert rows["two"][1:4] + rows["two"][5:] == one["one"][1:4] + one["one"][5:]


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    return {r[0].strip(): [c.strip() for c in r[1:]] for r in rows[1:] if r[0].strip() != "---"}


def test_collect_assigned_boxes_are_the_scatter_positives(device):
    from hcral.boxes import aligned_iou

    model = _small_retinanet(device)
    target = {"boxes": torch.tensor([[32.0, 32.0, 96.0, 96.0]]), "labels": torch.tensor([1])}
    data = [(torch.rand(3, 250, 256), target)] * 2
    scores, boxes, gts = viz.collect_assigned_boxes(model, data, device)
    ref_scores, ref_ious = viz.collect_score_iou(model, data, device)
    assert boxes.shape == gts.shape == (len(scores), 4) and len(scores) >= 2
    assert np.allclose(gts, [[32.0, 32.0, 96.0, 96.0]])  # every positive has the one GT
    assert np.allclose(scores, ref_scores)
    assert np.allclose(aligned_iou(torch.tensor(boxes), torch.tensor(gts)).numpy(), ref_ious)
    assert len(viz.collect_assigned_boxes(model, data, device, max_images=1)[0]) * 2 == len(scores)
    with pytest.raises(ValueError, match="DenseDetector"):
        viz.collect_assigned_boxes(FixedDetector(), data, device)


def test_make_figures_hcrar_terms_and_table_by_hand():
    from hcral.losses.hcrar import HCRARLoss

    module = load_script("make_figures")
    target = [[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 20.0]]
    pred = [[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 10.0]]  # IoU 1, and IoU 0.5
    criterion = HCRARLoss(alpha=-0.1, ep=0.001, focusing=False, loss_weight=9.0)
    ious, w, g = module.hcrar_terms([0.5, 0.1], pred, target, criterion)
    # r = (s - α + ep) / (u + ep); r̄ = their mean; box 2's centre is off by 5 px in a
    # 10 x 20 enclosing box: CF = exp(25 / 500). 1 - GIoU: 0, and 1 - 0.5 (C = union).
    r = np.array([0.601 / 1.001, 0.201 / 0.501])
    expected_w = r / r.mean() * np.array([1.0, np.exp(0.05)])
    assert ious == pytest.approx([1.0, 0.5]) and g == pytest.approx([0.0, 0.5])
    assert w == pytest.approx(expected_w)
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in module.hcrar_table({"x": (ious, w, g)}).splitlines()[2:]
    ]
    by_bin = {row[1]: row[2:] for row in rows}
    assert len(rows) == 6 and set(by_bin) >= {"0.50–0.70", "0.85–1.00", "all"}
    share_w = expected_w / expected_w.sum()
    assert by_bin["0.50–0.70"] == ["1", "50.0%", f"{expected_w[1]:.2f}", f"{share_w[1]:.1%}",
                                   "100.0%", "100.0%"]  # fmt: skip
    assert by_bin["0.85–1.00"] == ["1", "50.0%", f"{expected_w[0]:.2f}", f"{share_w[0]:.1%}",
                                   "0.0%", "0.0%"]  # fmt: skip
    assert by_bin["0.00–0.30"][:2] == ["0", "0.0%"] and by_bin["0.00–0.30"][2] == "–"
    assert by_bin["all"][:3] == ["2", "100%", f"{expected_w.mean():.2f}"]
    # r_max clamps r before r̄: with r_max 0.45, box 1's r = 0.6004 becomes 0.45
    clamped = HCRARLoss(r_max=0.45, focusing=False)
    _, w_clamped, _ = module.hcrar_terms([0.5, 0.1], pred, target, clamped)
    r_c = np.array([0.45, 0.201 / 0.501])
    assert w_clamped == pytest.approx(r_c / r_c.mean() * np.array([1.0, np.exp(0.05)]))


def test_make_figures_hcrar_run_pools(tmp_path, capsys, tiny_run):
    run = tiny_run
    module = load_script("make_figures")
    argv = ["--out", str(tmp_path / "f"), "--max-images", "1"]

    def rows(out: str) -> list[list[str]]:
        lines = [line for line in out.splitlines() if line.startswith("| ")][1:]
        return [[c.strip() for c in line.strip("|").split("|")] for line in lines]

    module.main(argv + ["--hcrar-run", "one", *run])
    one = rows(capsys.readouterr().out)
    module.main(argv + ["--hcrar-run", "two", *run, "--hcrar-run", "two", *run])
    two = rows(capsys.readouterr().out)
    assert [r[1] for r in one][-1] == "all" and int(one[-1][2]) > 0
    for a, b in zip(one, two, strict=True):  # counts double, shares and means stay
        assert int(b[2]) == 2 * int(a[2]) and b[3:] == a[3:]


@pytest.mark.parametrize(
    "text, match",
    [("[1, 2]", "--hcrar-args must be a YAML mapping"), ("{nope: 1}", "bad arguments"),
     ("{alpha: 0.5}", "alpha must be <= 0")],
)  # fmt: skip
def test_make_figures_bad_hcrar_args_fail_before_loading(tmp_path, text, match):
    module = load_script("make_figures")
    missing = [str(tmp_path / "no.yaml"), str(tmp_path / "no.pt")]  # never opened
    argv = ["--out", str(tmp_path / "f"), "--hcrar-args", text, "--hcrar-run", "x", *missing]
    with pytest.raises(ValueError, match=match):
        module.main(argv)
    assert not (tmp_path / "f").exists()  # not even the weight-function figure

"""Aggregating a study's runs into rows, the paired column and the Markdown table."""

from __future__ import annotations

import math

import pytest

from hcral import compare
from hcral.compare import (
    Summary,
    compare_mark,
    render_markdown,
    seeds_to_separate,
    summarize,
    summarize_study,
)


def _runs(values: dict[str, list[float]]) -> dict[str, list[dict]]:
    return {
        name: [{"AP": v, "AP50": v + 20, "AP75": v - 1, "wall_time_s": 90.0} for v in vals]
        for name, vals in values.items()
    }


def test_summarize_study_marks_and_markdown():
    runs = _runs({"focal": [36.0, 36.2, 36.4], "hcrac": [37.0, 37.2, 37.4], "qfl": [36.1, 36.3]})
    table = summarize_study("cls", "focal", runs)
    marks = {r.name: r.mark for r in table.rows}
    # focal: mean 36.2, std 0.2, half 4.303*0.2/sqrt3 = 0.497 -> [35.70, 36.70];
    # hcrac: [36.70, 37.70] -> touches 36.70? 36.2+0.4969=36.6969 < 37.2-0.4969=36.7031: ▲
    assert marks == {"focal": "ref", "hcrac": "▲", "qfl": "≈"}
    text = render_markdown(table)
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| cell"))
    assert "AP50" in header and "ΔAP" in header
    hcrac = next(line for line in lines if "`hcrac`" in line)
    assert "37.2 ± 0.2 [36.7, 37.7]" in hcrac and "1.5 min" in hcrac
    # Welch: se = sqrt(2 · 0.04 / 3) = 0.1633, df = 4, t = 2.7764 -> 1.0 ± 0.4534
    assert "+1.0 [+0.5, +1.5]" in hcrac
    hc = next(r for r in table.rows if r.name == "hcrac")
    assert hc.delta_ci == pytest.approx((1.0 - 0.45338, 1.0 + 0.45338), abs=1e-4)
    assert "57.2 ± 0.2" in hcrac  # AP50 column
    assert hcrac.rstrip(" |").endswith("▲")
    assert "- `hcrac`: 37.0 / 37.2 / 37.4" in lines and "- `qfl`: 36.1 / 36.3" in lines
    # Only the ≈ cell gets a seeds estimate; qfl's ΔAP is 0, so no number of seeds does.
    heading = "Seeds per cell for intervals apart at the observed ΔAP and spread:"
    tail = lines[lines.index(heading) :]
    assert "- `qfl`: more than 1000 (or ΔAP = 0)" in tail
    assert not any("`hcrac`" in line for line in tail)


def test_paired_difference_interval_hand_values():
    # d = [1, 1, 0]: mean 2/3, sd √(1/3), se 1/3, t2 = 4.3027 -> 0.6667 ± 1.4342
    cell, ref = {0: 2.0, 1: 3.0, 2: 4.0, 5: 9.0}, {0: 1.0, 1: 2.0, 2: 4.0}
    mean, lo, hi, n = compare.paired_difference_interval(cell, ref)
    assert n == 3  # seed 5 has no partner
    assert (mean, lo, hi) == pytest.approx((2 / 3, 2 / 3 - 1.434218, 2 / 3 + 1.434218), abs=1e-5)
    mean, lo, hi, n = compare.paired_difference_interval({0: 2.0}, ref)
    assert (mean, n) == (1.0, 1) and math.isnan(lo) and math.isnan(hi)
    mean, lo, hi, n = compare.paired_difference_interval({7: 2.0}, ref)
    assert n == 0 and math.isnan(mean)


def _seeded(values: dict[str, list[float]], seeds: list[int]) -> dict[str, list[dict]]:
    runs = _runs(values)
    for rows in runs.values():
        for r, k in zip(rows, seeds, strict=True):
            r["seed"] = k
    return runs


def test_paired_column_is_sharper_when_seeds_move_all_cells_alike():
    # Seed 2 is lucky for both cells: Welch's interval spans 0, the paired one does not.
    # d = [0.6, 0.4, 0.6]: mean 0.5333, sd 0.11547, se 0.066667, half 4.3027 · se = 0.28684
    runs = _seeded({"GIoU": [5.9, 6.6, 8.8], "HCRAR": [6.5, 7.0, 9.4]}, [10, 11, 12])
    runs["HCRAR"].reverse()  # pairs by seed, not by list order
    table = summarize_study("reg", "GIoU", runs)
    row = next(r for r in table.rows if r.name == "HCRAR")
    assert row.delta_ci[0] < 0 < row.delta_ci[1]
    assert row.paired_n == 3 and row.paired_delta == pytest.approx(0.53333, abs=1e-4)
    assert row.paired_ci == pytest.approx((0.53333 - 0.28684, 0.53333 + 0.28684), abs=1e-4)
    text = render_markdown(table)
    assert "paired ΔAP [95% CI]" in text
    hcrar = next(line for line in text.splitlines() if "`HCRAR`" in line)
    assert "+0.5 [+0.2, +0.8] (n=3)" in hcrar
    assert compare.table_dict(table)["rows"][1]["paired_n"] == 3


def test_paired_column_needs_seed_ids():
    table = summarize_study("cls", "a", _runs({"a": [1.0, 2.0], "b": [1.5, 2.5]}))
    assert all(r.paired_n == 0 for r in table.rows)
    line = next(x for x in render_markdown(table).splitlines() if "`b`" in x)
    assert "| – |" in line
    dup = _seeded({"a": [1.0, 2.0], "b": [1.5, 2.5]}, [3, 3])  # same seed twice: no pairing
    assert summarize_study("cls", "a", dup).rows[1].paired_n == 0


def test_seeds_to_separate_hand_values():
    # std 1 each, ΔAP 1: n = 17 gives t16 · 2 / √17 = 2.1199 · 0.4851 = 1.028 (apart? no);
    # n = 18 gives t17 · 2 / √18 = 2.1098 · 0.4714 = 0.995 < 1.
    assert seeds_to_separate(1.0, 1.0, 1.0) == 18
    assert seeds_to_separate(-1.0, 1.0, 1.0) == 18  # the sign does not matter
    assert seeds_to_separate(3.0, 0.0, 0.0) == 2  # no spread: two seeds suffice
    assert seeds_to_separate(0.0, 1.0, 1.0) is None
    assert seeds_to_separate(math.nan, 1.0, 1.0) is None
    assert seeds_to_separate(1.0, math.nan, 1.0) is None
    assert seeds_to_separate(0.01, 2.0, 2.0) is None  # beyond max_seeds


def test_seeds_to_separate_agrees_with_the_overlap_mark():
    # Cells with exactly std 1 at n seeds: the estimate n separates them, n - 1 does not.
    n = seeds_to_separate(1.0, 1.0, 1.0)

    def cell(mean: float, k: int) -> Summary:
        return summarize([mean + v for v in _unit_std(k)])

    assert compare_mark(cell(1.0, n), cell(0.0, n)) == "▲"
    assert compare_mark(cell(1.0, n - 1), cell(0.0, n - 1)) == "≈"


def _unit_std(k: int) -> list[float]:
    """k values of mean 0 and sample std exactly 1 (up to rounding)."""
    raw = [float(i) for i in range(k)]
    mean = sum(raw) / k
    std = math.sqrt(sum((v - mean) ** 2 for v in raw) / (k - 1))
    return [(v - mean) / std for v in raw]


def test_summarize_study_missing_metric_or_reference():
    with pytest.raises(ValueError, match="AP75"):
        summarize_study("s", "a", {"a": [{"AP": 1.0, "AP50": 2.0}]})
    with pytest.raises(ValueError, match="reference"):
        summarize_study("s", "zzz", _runs({"a": [1.0]}))


def _by_seed(values: dict[str, dict[int, float]]) -> dict[str, list[dict]]:
    return {
        name: [{"AP": v, "AP50": v, "AP75": v, "seed": k} for k, v in seeds.items()]
        for name, seeds in values.items()
    }


def test_ladder_steps_compare_each_cell_with_the_one_above():
    runs = _by_seed({
        "A": {0: 1.0, 1: 2.0, 2: 3.0},
        "B": {0: 2.0, 1: 4.0, 2: 3.0},
        "C": {0: 2.5, 1: 4.5, 3: 3.0},  # seed 3 has no partner in B
        "D": {0: 10.0, 1: 11.0, 2: 12.0},
    })  # fmt: skip
    table = summarize_study("ladder", "A", runs, ladder=True)
    ab, bc, cd = table.steps
    assert [(s.lower, s.upper) for s in table.steps] == [("A", "B"), ("B", "C"), ("C", "D")]
    # A→B: means 2 and 3, both std 1. Welch: se √(2/3), df 4, t 2.7764 -> 1 ± 2.2670.
    # Paired: d = [1, 2, 0], sd 1, se 1/√3, t2 4.3027 -> 1 ± 2.4842.
    assert ab.delta == pytest.approx(1.0) and ab.mark == "≈"
    assert ab.welch_ci == pytest.approx((1 - 2.26697, 1 + 2.26697), abs=1e-4)
    assert ab.paired_ci == pytest.approx((1 - 2.48418, 1 + 2.48418), abs=1e-4)
    assert ab.seed_deltas == pytest.approx({0: 1.0, 1: 2.0, 2: 0.0})
    # least n with t_{n-1} · 2 / √n < 1: n = 18 (t17 = 2.110 -> 0.995); n = 17 gives 1.028
    assert ab.seeds_needed == 18
    # B→C pairs only seeds 0 and 1 (d = 0.5 twice); the Welch delta uses all of C's seeds
    assert bc.seed_deltas == pytest.approx({0: 0.5, 1: 0.5})
    assert bc.paired_delta == pytest.approx(0.5) and bc.delta == pytest.approx(10 / 3 - 3)
    assert cd.mark == "▲" and cd.seeds_needed is None
    text = render_markdown(table)
    assert "- `A` (seeds 0–2): 1.0 / 2.0 / 3.0" in text and "- `C` (seeds 0, 1, 3): " in text
    assert "| `A` → `B` | +1.0 | [-1.3, +3.3] | [-1.5, +3.5] | +1.0 / +2.0 / +0.0 | 18 |" in text
    cd_line = next(line for line in text.splitlines() if "`C` → `D`" in line)
    assert cd_line.endswith("| apart |")
    steps = compare.table_dict(table)["steps"]
    assert [s["seed_deltas"] for s in steps][1] == pytest.approx({"0": 0.5, "1": 0.5})


def test_no_step_table_unless_the_study_is_a_ladder():
    runs = _by_seed({"A": {0: 1.0, 1: 2.0}, "B": {0: 2.0, 1: 4.0}})
    table = summarize_study("s", "A", runs)
    assert table.steps == [] and compare.table_dict(table)["steps"] == []
    assert "What each rung adds" not in render_markdown(table)
    assert "What each rung adds" in render_markdown(summarize_study("s", "A", runs, ladder=True))

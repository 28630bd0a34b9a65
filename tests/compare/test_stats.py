"""Mean ± std, t quantiles, Welch intervals and interval marks, by hand values."""

from __future__ import annotations

import math

import pytest

from hcral.compare import (
    Summary,
    compare_mark,
    difference_interval,
    format_summary,
    intervals_overlap,
    summarize,
    t_quantile,
)


def test_summarize_hand_values():
    # mean 2, deviations -1, 0, 1 -> var (1 + 0 + 1) / 2 = 1, std 1;
    # t_{0.975, 2} = 4.3027 -> half width 4.3027 / sqrt(3) = 2.4841
    s = summarize([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.lo == pytest.approx(2.0 - 2.48414, abs=1e-4)
    assert s.hi == pytest.approx(2.0 + 2.48414, abs=1e-4)


def test_summarize_two_values():
    # std of (36, 38) = sqrt(2); half width 12.706 * sqrt(2) / sqrt(2) = 12.706
    s = summarize([36.0, 38.0])
    assert s.std == pytest.approx(math.sqrt(2))
    assert s.hi - s.mean == pytest.approx(12.7062, abs=1e-3)


def test_summarize_single_seed_has_no_interval():
    s = summarize([37.5])
    assert s.n == 1 and s.mean == 37.5
    assert math.isnan(s.std) and not s.has_interval
    assert format_summary(s) == "37.5 (n=1)"


def test_summarize_empty_raises():
    with pytest.raises(ValueError, match="values"):
        summarize([])


def test_t_quantile_scipy_and_table_agree(monkeypatch):
    with_scipy = [t_quantile(df) for df in (1, 2, 4, 9, 30)]
    assert with_scipy == pytest.approx([12.706, 4.303, 2.776, 2.262, 2.042], abs=1e-3)
    import builtins

    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    table = [t_quantile(df) for df in (1, 2, 4, 9, 30)]
    assert table == pytest.approx(with_scipy, abs=1e-3)
    assert t_quantile(22) == 2.086  # between rows: the smaller df's (larger) value
    with pytest.raises(ValueError, match="scipy"):
        t_quantile(3, confidence=0.9)


def test_t_quantile_bad_df():
    with pytest.raises(ValueError, match="df"):
        t_quantile(0)


def test_difference_interval_hand_values():
    # a: n=4, mean 10, std 2; b: n=3, mean 7, std 1 -> va = 1, vb = 1/3, se = 1.1547,
    # Welch df = (4/3)^2 / (1/3 + (1/9)/2) = 1.7778 / 0.38889 = 4.5714, t = 2.6682 (scipy)
    a, b = Summary(4, 10.0, 2.0, 0, 0), Summary(3, 7.0, 1.0, 0, 0)
    lo, hi = difference_interval(a, b)
    assert (lo + hi) / 2 == pytest.approx(3.0)
    assert (hi - lo) / 2 == pytest.approx(t_quantile(4.5714) * 1.1547, rel=1e-4)
    assert 2.6 < (hi - lo) / 2 / 1.1547 < 2.8
    assert difference_interval(Summary(2, 5.0, 0.0, 5, 5), Summary(2, 4.0, 0.0, 4, 4)) == (1, 1)
    one = Summary(1, 5.0, math.nan, math.nan, math.nan)
    assert all(math.isnan(v) for v in difference_interval(one, b))


def test_difference_interval_can_be_significant_while_intervals_overlap():
    # std 0.408 each: intervals [9.35, 10.65] and [10.35, 11.65] overlap, but Welch's
    # (df 6, t 2.447, se 0.289) is [0.29, 1.71]: the overlap mark is the conservative test.
    a = summarize([9.5, 10.0, 10.5, 10.0])
    b = summarize([10.5, 11.0, 11.5, 11.0])
    assert compare_mark(b, a) == "≈"
    lo, hi = difference_interval(b, a)
    assert lo == pytest.approx(0.293, abs=2e-3) and hi == pytest.approx(1.707, abs=2e-3)


def test_intervals_overlap():
    assert intervals_overlap((0, 1), (0.5, 2))
    assert intervals_overlap((0, 1), (1, 2))  # touching counts as overlap
    assert not intervals_overlap((0, 1), (1.01, 2))
    assert not intervals_overlap((3, 4), (1, 2))


def test_compare_mark():
    ref = Summary(3, 36.0, 0.2, 35.5, 36.5)
    assert compare_mark(Summary(3, 36.4, 0.2, 36.0, 36.8), ref) == "≈"
    assert compare_mark(Summary(3, 37.5, 0.2, 37.0, 38.0), ref) == "▲"
    assert compare_mark(Summary(3, 34.0, 0.2, 33.5, 34.5), ref) == "▼"
    assert compare_mark(Summary(1, 40.0, math.nan, math.nan, math.nan), ref) == "–"


def test_format_summary():
    assert format_summary(Summary(3, 37.234, 0.31, 36.5, 37.96)) == "37.2 ± 0.3 [36.5, 38.0]"

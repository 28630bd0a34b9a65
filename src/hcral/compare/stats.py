"""Statistics over seeds: mean ± std, Student-t intervals, Welch and paired differences."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Two-sided 95% Student-t quantiles t_{0.975, df}, used when scipy is not installed.
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
    16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042,
    40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with sample std and a two-sided t interval (NaN when n < 2)."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float

    @property
    def has_interval(self) -> bool:
        return self.n >= 2 and math.isfinite(self.lo) and math.isfinite(self.hi)


def t_quantile(df: float, confidence: float = 0.95) -> float:
    """Two-sided Student-t critical value ``t_{(1+confidence)/2, df}``, ``df ≥ 1``.

    Uses scipy when installed; otherwise a table for ``confidence=0.95`` (a df between
    table rows, fractional ones included, takes the next smaller df's value, which is
    slightly conservative).
    """
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    try:
        from scipy.stats import t
    except ImportError:
        if not math.isclose(confidence, 0.95):
            raise ValueError(
                f"confidence={confidence} needs scipy; only 0.95 is tabulated"
            ) from None
        if df > 120:
            return 1.960
        return _T975[max(k for k in _T975 if k <= df)]
    return float(t.ppf((1.0 + confidence) / 2.0, df))


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sample std (ddof=1) and the t interval ``mean ± t · std / √n``.

    Args:
        values: one metric over n seeds; NaN values propagate into the result.
    Returns:
        :class:`Summary`; with n = 1, ``std``, ``lo`` and ``hi`` are NaN.
    """
    n = len(values)
    if n == 0:
        raise ValueError("values: need at least one value to summarize")
    mean = math.fsum(values) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(n - 1, confidence) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def difference_interval(
    cell: Summary, reference: Summary, confidence: float = 0.95
) -> tuple[float, float]:
    """Welch interval for ``cell.mean - reference.mean`` (unequal variances), or NaNs.

    A sharper test than :func:`intervals_overlap`: two means can differ significantly
    while their own intervals still overlap. The degrees of freedom are
    Welch–Satterthwaite's; NaN when either side has fewer than 2 seeds.
    """
    if cell.n < 2 or reference.n < 2:
        return math.nan, math.nan
    va, vb = cell.std**2 / cell.n, reference.std**2 / reference.n
    delta = cell.mean - reference.mean
    if va + vb == 0:
        return delta, delta
    df = (va + vb) ** 2 / (va**2 / (cell.n - 1) + vb**2 / (reference.n - 1))
    half = t_quantile(max(df, 1.0), confidence) * math.sqrt(va + vb)
    return delta - half, delta + half


def paired_difference_interval(
    cell: Mapping[int, float], reference: Mapping[int, float], confidence: float = 0.95
) -> tuple[float, float, float, int]:
    """Paired t interval of ``cell - reference`` over the seeds both have.

    Seed k of every cell starts from the same initial weights and sees the images in
    the same order, so a seed that is lucky for one cell tends to be lucky for all;
    the per-seed differences then vary less than either cell, and this interval is
    sharper than :func:`difference_interval`'s. Returns ``(mean, lo, hi, n)`` with
    ``n`` the number of common seeds; ``lo``/``hi`` are NaN when ``n < 2``.

    Args:
        cell, reference: seed → metric value.
    """
    common = sorted(set(cell) & set(reference))
    d = [cell[k] - reference[k] for k in common]
    if not d:
        return math.nan, math.nan, math.nan, 0
    s = summarize(d, confidence)
    return s.mean, s.lo, s.hi, s.n


def seeds_to_separate(
    delta: float, std_a: float, std_b: float, confidence: float = 0.95, max_seeds: int = 1000
) -> int | None:
    """Seeds per cell from which two cells ``delta`` apart, with sample stds ``std_a`` and
    ``std_b``, get non-overlapping t intervals: the least ``n ≥ 2`` with
    ``t_{n-1} · (std_a + std_b) / √n < |delta|``.

    A planning figure (it takes the observed means and spreads as the truth): how many
    seeds an experiment needs before issue-style "intervals apart" can show a difference
    of this size. None when ``delta`` is 0 or not finite, or more than ``max_seeds``
    would be needed; 2 when both stds are 0.
    """
    spread = std_a + std_b
    if not (math.isfinite(delta) and math.isfinite(spread)) or delta == 0:
        return None
    for n in range(2, max_seeds + 1):
        if t_quantile(n - 1, confidence) * spread / math.sqrt(n) < abs(delta):
            return n
    return None


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether closed intervals ``a = (lo, hi)`` and ``b`` share at least one point."""
    return a[0] <= b[1] and b[0] <= a[1]


def compare_mark(cell: Summary, reference: Summary) -> str:
    """``≈`` overlapping intervals, ``▲``/``▼`` wholly above/below, ``–`` no interval (n<2)."""
    if not (cell.has_interval and reference.has_interval):
        return "–"
    if intervals_overlap((cell.lo, cell.hi), (reference.lo, reference.hi)):
        return "≈"
    return "▲" if cell.lo > reference.hi else "▼"

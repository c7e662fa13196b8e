"""Confidence intervals and paired tests for per-example scores.

Means of scores get a percentile bootstrap; rates (k of n) get the Wilson score interval, which is exact
enough at the small counts and the rates near 0 and 1 where refusal rates live, where the bootstrap
collapses (0 of 42 resamples to [0, 0]) and the normal approximation leaves [0, 1]. Everything is seeded,
so a report re-computed from the same scores gives the same intervals.
"""

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95
Z_95 = 1.959963984540054  # two-sided 95%: the normal quantile at 0.975
MAX_ROWS_SEARCHED = 1_000_000


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class PairedComparison:
    """Candidate minus baseline on the same examples."""

    delta: Interval
    p_value: float  # paired bootstrap, two-sided, for "no difference"
    wins: int
    ties: int
    losses: int
    sign_test_p: float


def bootstrap_interval(
    values: list[float], seed: int, resamples: int = DEFAULT_RESAMPLES, confidence: float = CONFIDENCE
) -> Interval:
    """Percentile bootstrap of the mean."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    means = _resampled_means(data, seed, resamples)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(data.mean()), float(low), float(high), int(data.size))


def wilson_interval(successes: int, n: int, z: float = Z_95) -> Interval:
    """The Wilson score interval of a rate: `successes` of `n` (95% two-sided by default)."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n} trials")
    interval = _wilson_of_rate(successes / n, n, z)
    # Exact at the ends: 0 of n has a lower bound of 0 and n of n an upper bound of 1, not a rounding of them.
    low = 0.0 if successes == 0 else interval.low
    high = 1.0 if successes == n else interval.high
    return Interval(interval.mean, low, high, n)


def rows_to_show(rate: float, threshold: float, above: bool, z: float = Z_95) -> int | None:
    """The fewest rows at which a rate measured as `rate` would have its Wilson interval wholly above
    (`above`) or below `threshold`; None when no number of rows would (the rate is not on that side)."""
    if (above and rate <= threshold) or (not above and rate >= threshold):
        return None

    def shown(n: int) -> bool:
        interval = _wilson_of_rate(rate, n, z)
        return interval.low >= threshold if above else interval.high <= threshold

    # The interval narrows as n grows (the rate held fixed): double, then halve the gap.
    high = 1
    while not shown(high):
        high *= 2
        if high > MAX_ROWS_SEARCHED:
            return None
    low = high // 2
    while high - low > 1:
        middle = (low + high) // 2
        if shown(middle):
            high = middle
        else:
            low = middle
    return high


def _wilson_of_rate(rate: float, n: int, z: float) -> Interval:
    z2 = z * z
    centre = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(rate, max(0.0, centre - half), min(1.0, centre + half), n)


def paired_comparison(
    candidate: list[float],
    baseline: list[float],
    seed: int,
    resamples: int = DEFAULT_RESAMPLES,
    tie_tolerance: float = 1e-9,
) -> PairedComparison:
    """Paired bootstrap of the mean difference plus wins/ties/losses and an exact sign test."""
    if len(candidate) != len(baseline):
        raise ValueError(f"paired scores differ in length: {len(candidate)} vs {len(baseline)}")
    differences = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    wins = int((differences > tie_tolerance).sum())
    losses = int((differences < -tie_tolerance).sum())
    ties = int(differences.size - wins - losses)
    delta = bootstrap_interval(differences.tolist(), seed, resamples)
    return PairedComparison(
        delta=delta,
        p_value=_bootstrap_p_value(differences, seed, resamples),
        wins=wins,
        ties=ties,
        losses=losses,
        sign_test_p=sign_test_p_value(wins, losses),
    )


def sign_test_p_value(wins: int, losses: int) -> float:
    """Exact two-sided binomial test of wins against losses (ties dropped), p = 0.5."""
    trials = wins + losses
    if trials == 0:
        return 1.0
    extreme = min(wins, losses)
    one_tail = sum(math.comb(trials, k) for k in range(extreme + 1)) / 2**trials
    return min(1.0, 2.0 * one_tail)


def _resampled_means(data: np.ndarray, seed: int, resamples: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    indexes = rng.integers(0, data.size, size=(resamples, data.size))
    return data[indexes].mean(axis=1)


def _bootstrap_p_value(differences: np.ndarray, seed: int, resamples: int) -> float:
    """Share of resampled means on the far side of zero from the observed mean, doubled.

    With every difference zero there is no evidence of a difference at all: p = 1.
    """
    if differences.size == 0 or not differences.any():
        return 1.0
    means = _resampled_means(differences, seed, resamples)
    observed = differences.mean()
    far_side = (means <= 0).mean() if observed > 0 else (means >= 0).mean()
    return float(min(1.0, 2.0 * far_side))

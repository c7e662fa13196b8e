"""Confidence intervals and paired tests for per-example scores.

Everything is seeded, so a report re-computed from the same scores gives the same intervals.
"""

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95


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

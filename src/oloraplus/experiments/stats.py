"""Is a difference real? A paired t interval over seeds and a paired bootstrap over eval examples.

Seeds: the candidate and the baseline trained with the same seed share data split and init seed,
so the per-seed differences d_i = candidate_i − baseline_i are paired and the CI is
mean(d) ± t_{1−α/2, n−1} · sd(d) / √n. Student-t quantiles are computed without SciPy from the
exact closed-form CDF for integer degrees of freedom (Abramowitz & Stegun 26.7.3 and 26.7.4),
inverted by bisection; beyond 10 000 degrees of freedom the normal quantile is used (|error| < 1e-4).

Examples: generation metrics also exist per eval example, so resampling the paired per-example
differences with replacement and taking percentiles of the resampled means gives a bootstrap CI
(Efron & Tibshirani 1993, ch. 13) that needs only one seed.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
BOOTSTRAP_SEED = 0
BETTER, WORSE, SAME = "better", "worse", "no significant difference"
TOO_FEW = "too few pairs for a CI"
_EXACT_DF_LIMIT = 10_000


@dataclass(frozen=True)
class Interval:
    """A mean difference (candidate − baseline) with its confidence interval over n pairs."""

    mean: float
    low: float
    high: float
    n: int


def t_cdf_two_sided(t: float, df: int) -> float:
    """A(t|ν) = P(|T| ≤ t) for Student's t with integer ν ≥ 1 (A&S 26.7.3 odd ν, 26.7.4 even ν)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    theta = math.atan(abs(t) / math.sqrt(df))
    cos2, sin = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:
        term = total = 1.0  # 1 + (1/2)cos²θ + (1·3)/(2·4)cos⁴θ + … up to cos^{ν−2}θ
        for k in range(2, df, 2):
            term *= cos2 * (k - 1) / k
            total += term
        return min(1.0, sin * total)
    term = total = math.cos(theta)  # cosθ + (2/3)cos³θ + (2·4)/(3·5)cos⁵θ + … up to cos^{ν−2}θ
    for k in range(3, df - 1, 2):
        term *= cos2 * (k - 1) / k
        total += term
    extra = sin * total if df > 1 else 0.0
    return min(1.0, 2.0 / math.pi * (theta + extra))


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ν = df (e.g. p = 0.975 for a two-sided 95% CI)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if df > _EXACT_DF_LIMIT:
        return statistics.NormalDist().inv_cdf(p)
    target = 2.0 * p - 1.0
    low, high = 0.0, 1.0
    while t_cdf_two_sided(high, df) < target:
        low, high = high, 2.0 * high
    for _ in range(200):
        mid = 0.5 * (low + high)
        if t_cdf_two_sided(mid, df) < target:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * high:
            break
    return 0.5 * (low + high)


def _check_pairs(candidate: Sequence[float], baseline: Sequence[float]) -> list[float]:
    if len(candidate) != len(baseline):
        raise ValueError(f"{len(candidate)} candidate values but {len(baseline)} baseline values: they must pair")
    return [float(c) - float(b) for c, b in zip(candidate, baseline)]


def paired_t_interval(candidate: Sequence[float], baseline: Sequence[float], level: float = LEVEL) -> Interval:
    """mean(d) ± t_{(1+level)/2, n−1} · sd(d)/√n over paired values; NaN bounds for fewer than 2 pairs."""
    d = _check_pairs(candidate, baseline)
    n = len(d)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = statistics.fmean(d)
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    half = t_quantile((1.0 + level) / 2.0, n - 1) * statistics.stdev(d) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def bootstrap_interval(
    differences: Sequence[float], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = LEVEL
) -> Interval:
    """Percentile bootstrap CI of the mean of paired per-example differences (fixed seed: reproducible)."""
    d = np.asarray(differences, dtype=np.float64)
    n = d.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    if n < 2:
        return Interval(float(d[0]), math.nan, math.nan, 1)
    rng = np.random.default_rng(seed)
    means = np.sort(d[rng.integers(0, n, size=(resamples, n))].mean(axis=1))
    cut = int(math.floor(resamples * (1.0 - level) / 2.0))  # resampled means dropped on each side
    return Interval(float(d.mean()), float(means[cut]), float(means[resamples - 1 - cut]), n)


def verdict(interval: Interval, higher_is_better: bool) -> str:
    """'better' / 'worse' when the CI excludes 0 (in the metric's good direction), else no difference."""
    if interval.n < 2 or math.isnan(interval.low) or math.isnan(interval.high):
        return TOO_FEW
    if interval.low <= 0.0 <= interval.high:
        return SAME
    improved = interval.low > 0.0 if higher_is_better else interval.high < 0.0
    return BETTER if improved else WORSE

"""Is a difference real? A paired t interval over seeds and a paired bootstrap over eval examples.

Seeds: the candidate and the baseline trained with the same seed share data split and init seed,
so the per-seed differences d_i = candidate_i − baseline_i are paired and the CI is
mean(d) ± t_{1−α/2, n−1} · sd(d) / √n. Student-t quantiles are computed without SciPy from the
exact closed-form CDF for integer degrees of freedom (Abramowitz & Stegun 26.7.3 and 26.7.4),
inverted by bisection; beyond 10 000 degrees of freedom the normal quantile is used (|error| < 1e-4).

Examples: generation metrics also exist per eval example. Pooling the examples of every seed as if
they were independent ignores the variance between seeds (a seed changes the init and the batch order,
and the whole run with it), so `hierarchical_bootstrap` resamples seeds first, then examples within
each drawn seed (Davison & Hinkley 1997, §3.8; Saravanan et al. 2020), and takes percentiles of the
resampled means.

Many comparisons: a report tests every arm against the baseline, one family per metric; `holm`
adjusts their p-values (Holm 1979) so the chance of any false "better"/"worse" in a family stays at
most 1 − LEVEL. Holm adjusts tests, not intervals, so each comparison's adjusted interval is Bonferroni's
(`adjusted_level`: level 1 − α/m for a family of m), which covers all m differences at once with probability
at least LEVEL: the choice R's emmeans makes when asked for Holm-adjusted intervals. Holm's step-down test is
more powerful than Bonferroni's, so a Holm "better" can have an adjusted interval that still reaches 0; the
verdict follows Holm. No verdict comes from fewer than MIN_SEEDS seeds or MIN_EXAMPLES examples per seed.
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
MIN_SEEDS, MIN_EXAMPLES = 3, 20  # fewer seeds (or examples per seed): "too few to tell", never a verdict
BETTER, WORSE, SAME = "better", "worse", "no significant difference"
TOO_FEW = "too few to tell"
_EXACT_DF_LIMIT = 10_000


@dataclass(frozen=True)
class Interval:
    """A mean difference (candidate − baseline) with its confidence interval over n pairs."""

    mean: float
    low: float
    high: float
    n: int
    p: float = math.nan  # two-sided p-value of "no difference" (NaN: not tested)


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
    """mean(d) ± t_{(1+level)/2, n−1} · sd(d)/√n over paired values, and the paired t-test's two-sided p;
    NaN bounds for fewer than 2 pairs."""
    d = _check_pairs(candidate, baseline)
    n = len(d)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = statistics.fmean(d)
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    se = statistics.stdev(d) / math.sqrt(n)
    half = t_quantile((1.0 + level) / 2.0, n - 1) * se
    if se > 0:
        p = 1.0 - t_cdf_two_sided(abs(mean) / se, n - 1)
    else:  # every pair differs by the same amount
        p = 1.0 if mean == 0 else 0.0
    return Interval(mean, mean - half, mean + half, n, max(p, 0.0))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the k-th smallest of m is multiplied by
    m − k + 1 (k from 1), made non-decreasing along the sorted order and capped at 1. NaN stays NaN and is
    not counted in m (an untested comparison is not part of the family)."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(tested)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for k, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (m - k) * p))
        adjusted[i] = running
    return adjusted


def adjusted_level(family: int, level: float = LEVEL) -> float:
    """The per-comparison level whose intervals cover all `family` differences at once with probability at
    least `level` (Bonferroni: 1 − (1 − level)/m)."""
    if family < 1:
        raise ValueError(f"a family holds at least 1 comparison, got {family}")
    return 1.0 - (1.0 - level) / family


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


def hierarchical_bootstrap(
    per_seed: Sequence[Sequence[float]], resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED, level: float = LEVEL,
) -> Interval:
    """Percentile CI of the mean paired difference, resampling seeds, then examples within each drawn seed.

    `per_seed`: one list of per-example differences (candidate − baseline) for each seed. The statistic is
    the mean over seeds of each seed's mean, so every seed weighs the same; `n` is the number of seeds and
    `p` the two-sided bootstrap p-value 2·min(P*(Δ ≤ 0), P*(Δ ≥ 0)), each share counted as (1 + k)/(1 + B).
    """
    groups = [np.asarray(g, dtype=np.float64) for g in per_seed if len(g)]
    n = len(groups)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(np.mean([g.mean() for g in groups]))
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for b, drawn in enumerate(rng.integers(0, n, size=(resamples, n))):
        means[b] = np.mean([groups[j][rng.integers(0, groups[j].size, size=groups[j].size)].mean() for j in drawn])
    means.sort()
    cut = int(math.floor(resamples * (1.0 - level) / 2.0))
    below, above = int(np.sum(means <= 0.0)), int(np.sum(means >= 0.0))
    p = min(1.0, 2.0 * (1 + min(below, above)) / (1 + resamples))
    return Interval(mean, float(means[cut]), float(means[resamples - 1 - cut]), n, p)


def enough(seeds: int, examples_per_seed: int | None = None) -> bool:
    """At least MIN_SEEDS seeds (and MIN_EXAMPLES examples in each, where examples are compared)."""
    return seeds >= MIN_SEEDS and (examples_per_seed is None or examples_per_seed >= MIN_EXAMPLES)


def verdict(interval: Interval, higher_is_better: bool, adjusted_p: float | None = None,
            alpha: float = 1.0 - LEVEL) -> str:
    """'better' / 'worse' (in the metric's good direction) when the test rejects "no difference", else SAME.

    With `adjusted_p` (Holm) the adjusted p-value decides; without it, the interval excluding 0 does.
    """
    if interval.n < 2 or math.isnan(interval.low) or math.isnan(interval.high):
        return TOO_FEW
    if adjusted_p is not None:
        significant = not math.isnan(adjusted_p) and adjusted_p < alpha
    else:
        significant = not interval.low <= 0.0 <= interval.high
    if not significant:
        return SAME
    improved = interval.mean > 0.0 if higher_is_better else interval.mean < 0.0
    return BETTER if improved else WORSE

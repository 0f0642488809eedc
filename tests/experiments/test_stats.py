"""Statistics against published t tables, closed forms and hand-computed intervals."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from oloraplus.experiments import stats

# Two-sided 95% and 99% critical values from standard Student-t tables.
T_TABLE = [
    (1, 12.706, 63.657), (2, 4.303, 9.925), (3, 3.182, 5.841), (4, 2.776, 4.604), (5, 2.571, 4.032),
    (6, 2.447, 3.707), (10, 2.228, 3.169), (15, 2.131, 2.947), (20, 2.086, 2.845), (29, 2.045, 2.756),
    (30, 2.042, 2.750), (60, 2.000, 2.660), (120, 1.980, 2.617),
]


@pytest.mark.parametrize("df, t95, t99", T_TABLE)
def test_t_quantiles_match_the_printed_table(df, t95, t99):
    assert stats.t_quantile(0.975, df) == pytest.approx(t95, abs=6e-4)
    assert stats.t_quantile(0.995, df) == pytest.approx(t99, abs=6e-4)
    assert stats.t_quantile(0.025, df) == pytest.approx(-t95, abs=6e-4)


@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.999])
def test_t_quantiles_match_closed_forms_for_one_and_two_degrees_of_freedom(p):
    assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
    assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)


def test_t_quantile_approaches_the_normal_quantile():
    z = statistics.NormalDist().inv_cdf(0.975)
    assert stats.t_quantile(0.975, 5000) == pytest.approx(z, abs=5e-4)
    assert stats.t_quantile(0.975, 10**6) == pytest.approx(z, abs=1e-6)


def test_paired_t_interval_matches_a_hand_computation():
    # d = [1, 2, 3]: mean 2, sd 1, half-width t_{0.975,2} / √3 = 4.302653 / 1.732051 = 2.484138
    ci = stats.paired_t_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert (ci.mean, ci.n) == (2.0, 3)
    assert ci.low == pytest.approx(2 - 2.484138, abs=1e-6) and ci.high == pytest.approx(2 + 2.484138, abs=1e-6)
    assert stats.verdict(ci, higher_is_better=True) == stats.SAME


def test_lower_loss_with_a_tight_interval_is_better():
    # d = [−0.10, −0.12, −0.08, −0.10]: sd 0.0163299, se 0.0081650, t_{0.975,3} = 3.182446
    ci = stats.paired_t_interval([1.90, 1.88, 1.92, 1.90], [2.0, 2.0, 2.0, 2.0])
    assert ci.mean == pytest.approx(-0.10)
    assert ci.low == pytest.approx(-0.10 - 0.025985, abs=2e-6) and ci.high == pytest.approx(-0.10 + 0.025985, abs=2e-6)
    assert stats.verdict(ci, higher_is_better=False) == stats.BETTER
    assert stats.verdict(ci, higher_is_better=True) == stats.WORSE


def test_one_pair_gives_no_interval_and_says_so():
    ci = stats.paired_t_interval([1.0], [0.0])
    assert ci.n == 1 and math.isnan(ci.low) and stats.verdict(ci, True) == stats.TOO_FEW
    assert stats.paired_t_interval([], []).n == 0
    with pytest.raises(ValueError):
        stats.paired_t_interval([1.0, 2.0], [1.0])


def test_bootstrap_of_a_constant_difference_has_zero_width():
    ci = stats.bootstrap_interval([2.5] * 40)
    assert ci.low == ci.high == ci.mean == pytest.approx(2.5)
    assert stats.verdict(ci, higher_is_better=True) == stats.BETTER


def test_bootstrap_of_two_values_covers_the_exact_resampling_distribution():
    # Resampled means of [0, 1] are 0, 0.5, 1 with probability 1/4, 1/2, 1/4: the 2.5% and 97.5% points are 0 and 1.
    ci = stats.bootstrap_interval([0.0, 1.0])
    assert (ci.low, ci.mean, ci.high) == (0.0, 0.5, 1.0)


def test_bootstrap_agrees_with_the_normal_approximation_on_a_large_sample():
    d = np.random.default_rng(7).normal(0.3, 1.0, size=800)
    ci = stats.bootstrap_interval(d)
    half = 1.959964 * d.std(ddof=1) / math.sqrt(d.size)
    assert ci.mean == pytest.approx(d.mean())
    assert ci.low == pytest.approx(d.mean() - half, abs=0.15 * half)
    assert ci.high == pytest.approx(d.mean() + half, abs=0.15 * half)


def test_bootstrap_is_reproducible_with_its_fixed_seed():
    d = list(np.random.default_rng(1).normal(0, 1, 50))
    assert stats.bootstrap_interval(d) == stats.bootstrap_interval(d)
    assert stats.bootstrap_interval(d, seed=1) != stats.bootstrap_interval(d, seed=2)

"""Statistics against published t tables, closed forms and hand-computed intervals."""

from __future__ import annotations

import math
import random
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


def test_paired_t_p_value_matches_the_closed_form_for_two_degrees_of_freedom():
    # d = [1, 2, 3]: t = 2 / (1/√3) = 2√3; for ν = 2, P(|T| ≤ t) = t / √(2 + t²), so p = 1 − 2√3/√14
    ci = stats.paired_t_interval([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert ci.p == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), rel=1e-9)
    assert stats.paired_t_interval([1.5, 1.5, 1.5], [1.0, 1.0, 1.0]).p == 0.0
    assert stats.paired_t_interval([1.0, 2.0], [1.0, 2.0]).p == 1.0


def test_holm_against_a_hand_worked_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max 0.06; back in input order
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # capped at 1; an untested comparison (NaN) is not in the family: m = 2
    adjusted = stats.holm([math.nan, 0.02, 0.6])
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.04, 0.6])
    assert stats.holm([0.5, 0.4, 0.3]) == pytest.approx([0.9, 0.9, 0.9])  # 0.3·3 = 0.9; 0.4·2, 0.5·1 rise to 0.9
    assert stats.holm([0.6, 0.6]) == [1.0, 1.0]  # capped
    assert stats.holm([]) == []


def test_holm_decides_the_verdict():
    ci = stats.paired_t_interval([1.90, 1.88, 1.92, 1.90], [2.0, 2.0, 2.0, 2.0])  # raw p ≈ 0.0007
    assert stats.verdict(ci, higher_is_better=False, adjusted_p=0.03) == stats.BETTER
    assert stats.verdict(ci, higher_is_better=False, adjusted_p=0.09) == stats.SAME


def _seeds_that_disagree(examples: int = 30) -> list[np.ndarray]:
    """Two seeds clearly worse, one clearly better; examples agree tightly within each seed."""
    rng = np.random.default_rng(3)
    return [mean + rng.normal(0.0, 0.3, size=examples) for mean in (-1.0, -1.2, 0.9)]


def test_pooling_says_worse_where_a_seed_aware_bootstrap_says_no_difference():
    per_seed = _seeds_that_disagree()
    pooled = stats.bootstrap_interval(np.concatenate(per_seed))
    assert stats.verdict(pooled, higher_is_better=True) == stats.WORSE  # 90 "independent" examples: a tight CI
    nested = stats.hierarchical_bootstrap(per_seed)
    assert nested.n == 3 and nested.mean == pytest.approx(np.mean([g.mean() for g in per_seed]))
    assert nested.low < 0.0 < nested.high and nested.p > 0.05
    assert stats.verdict(nested, higher_is_better=True) == stats.SAME
    # the seed-paired t test on the seeds' means agrees with the nested bootstrap
    seed_means = [g.mean() for g in per_seed]
    assert stats.verdict(stats.paired_t_interval(seed_means, [0.0] * 3), True) == stats.SAME


def test_hierarchical_bootstrap_finds_a_difference_every_seed_agrees_on():
    rng = np.random.default_rng(5)
    per_seed = [0.8 + rng.normal(0.0, 0.3, size=30) for _ in range(4)]
    nested = stats.hierarchical_bootstrap(per_seed)
    assert nested.low > 0.0 and nested.p < 0.01 and stats.verdict(nested, True) == stats.BETTER
    constant = stats.hierarchical_bootstrap([[2.0] * 5, [2.0] * 7, [2.0] * 3])
    assert constant.low == constant.high == constant.mean == 2.0
    assert stats.hierarchical_bootstrap([[1.0, 2.0]]).n == 1 and stats.hierarchical_bootstrap([]).n == 0


def test_too_few_seeds_or_examples_never_give_a_verdict():
    assert stats.enough(3, 20) and not stats.enough(2, 500) and not stats.enough(5, 19) and stats.enough(3)


def test_adjusted_level_is_bonferronis_and_its_interval_excludes_0_exactly_when_m_times_p_is_below_alpha():
    assert stats.adjusted_level(1) == pytest.approx(0.95) and stats.adjusted_level(4) == pytest.approx(0.9875)
    with pytest.raises(ValueError):
        stats.adjusted_level(0)
    rng = random.Random(7)
    checked = 0
    for _ in range(300):
        n, m = rng.randint(3, 8), rng.randint(1, 6)
        shift = rng.uniform(-1.0, 1.0)
        baseline = [rng.gauss(0.0, 1.0) for _ in range(n)]
        candidate = [b + shift + rng.gauss(0.0, 0.5) for b in baseline]
        p = stats.paired_t_interval(candidate, baseline).p
        adjusted = stats.paired_t_interval(candidate, baseline, level=stats.adjusted_level(m))
        if abs(m * p - 0.05) < 1e-6:
            continue  # on the boundary either answer is right
        assert (not adjusted.low <= 0.0 <= adjusted.high) == (m * p < 0.05), (n, m, p, adjusted)
        checked += 1
    assert checked > 250

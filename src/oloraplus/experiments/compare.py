"""Every arm against the baseline: which tests, which family, which verdict (the report's "Versus" section).

Two tests per metric, each its own family of comparisons (one per arm that is not the baseline):
- **seeds**: the arm's and the baseline's final metric paired by seed, a paired t-test over the seeds;
- **examples** (generation metrics): per-example differences paired by prompt within each seed, a bootstrap
  that resamples seeds, then examples within them (`stats.hierarchical_bootstrap`), so seeds count as seeds.
Within a family the p-values are Holm-adjusted and a verdict needs the adjusted p below 1 − LEVEL; each tested
comparison also gets the family's simultaneous interval (`stats.adjusted_level`: Bonferroni over the family).
A comparison is withheld from its family, with the reason shown, when a common seed diverged in either arm
("k/n diverged": a NaN loss is the worst outcome and has no difference to average) or when there are fewer
than MIN_SEEDS seeds or MIN_EXAMPLES examples per seed ("too few to tell").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from oloraplus.experiments import stats
from oloraplus.experiments.runs import Arm

SEEDS, EXAMPLES = "seeds", "examples"
WITHHELD = "verdict withheld"


@dataclass
class Comparison:
    """One arm against the baseline on one metric with one test; `reason` set when it is not tested."""

    label: str
    metric: str
    test: str  # SEEDS or EXAMPLES
    interval: stats.Interval
    higher_is_better: bool
    examples: int = 0  # fewest examples in any seed (EXAMPLES)
    reason: str = ""
    adjusted_p: float = math.nan
    adjusted: stats.Interval | None = None  # the family's simultaneous interval (tested comparisons only)
    samples: Any = None  # what `interval` was computed from: (candidate, baseline) or the per-seed differences

    @property
    def tested(self) -> bool:
        return not self.reason and not math.isnan(self.interval.p)

    @property
    def verdict(self) -> str:
        if self.reason:
            return self.reason
        return stats.verdict(self.interval, self.higher_is_better, self.adjusted_p)


def common_seeds(arm: Arm, base: Arm) -> list[int]:
    return sorted(set(arm.by_seed()) & set(base.by_seed()))


def diverged_seeds(arm: Arm, base: Arm) -> list[int]:
    """Common seeds on which the arm or the baseline diverged (NaN/inf loss: no metrics, the worst outcome)."""
    a, b = arm.by_seed(), base.by_seed()
    return [s for s in common_seeds(arm, base) if a[s].diverged or b[s].diverged]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def seed_pairs(arm: Arm, base: Arm, metric: str) -> tuple[list[float], list[float]]:
    """(candidate, baseline) final values over the common seeds where both have the metric."""
    a, b = arm.by_seed(), base.by_seed()
    pairs = [(_number(a[s].metrics.get(metric)), _number(b[s].metrics.get(metric))) for s in common_seeds(arm, base)]
    pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def example_differences(arm: Arm, base: Arm, metric: str) -> list[list[float]]:
    """Per seed, the per-example candidate − baseline scores, paired by eval example (prompt) within the seed."""
    per_seed: list[list[float]] = []
    a, b = arm.by_seed(), base.by_seed()
    for seed in common_seeds(arm, base):
        cand, ref = a[seed].generations, b[seed].generations
        if len(cand) == len(ref) and all(x.get("prompt") == y.get("prompt") for x, y in zip(cand, ref)):
            pairs = list(zip(cand, ref))
        else:
            by_prompt = {y.get("prompt"): y for y in ref}
            pairs = [(x, by_prompt[x.get("prompt")]) for x in cand if x.get("prompt") in by_prompt]
        scores = [(_number(x.get(metric)), _number(y.get(metric))) for x, y in pairs]
        differences = [sx - sy for sx, sy in scores if sx is not None and sy is not None]
        if differences:
            per_seed.append(differences)
    return per_seed


def _reason(arm: Arm, base: Arm, seeds: int, examples: int | None) -> str:
    diverged = diverged_seeds(arm, base)
    if diverged:
        return f"{len(diverged)}/{len(common_seeds(arm, base))} diverged: {WITHHELD}"
    if not stats.enough(seeds, examples):
        return stats.TOO_FEW
    return ""


def compare(arms: Sequence[Arm], base: Arm, metrics: Sequence[tuple[str, str, bool]],
            example_titles: dict[str, str]) -> list[Comparison]:
    """Every (arm, metric, test) against `base`, Holm-adjusted within each (metric, test) family.

    `metrics`: (key, title, higher is better); `example_titles`: key -> title of the metrics that also have
    per-example scores (in generations.jsonl).
    """
    out: list[Comparison] = []
    for arm in arms:
        if arm is base:
            continue
        for key, title, higher in metrics:
            cand, ref = seed_pairs(arm, base, key)
            if cand or (diverged_seeds(arm, base) and key == metrics[0][0]):  # a fully diverged arm: one row
                interval = stats.paired_t_interval(cand, ref)
                out.append(Comparison(arm.label, title, SEEDS, interval, higher,
                                      reason=_reason(arm, base, interval.n, None), samples=(cand, ref)))
            if key in example_titles:
                per_seed = example_differences(arm, base, key)
                if per_seed:
                    interval = stats.hierarchical_bootstrap(per_seed)
                    fewest = min(len(d) for d in per_seed)
                    out.append(Comparison(arm.label, example_titles[key], EXAMPLES, interval, higher, examples=fewest,
                                          reason=_reason(arm, base, interval.n, fewest), samples=per_seed))
    for family in {(c.metric, c.test) for c in out}:
        members = [c for c in out if (c.metric, c.test) == family]
        for c, adjusted in zip(members, stats.holm([c.interval.p if c.tested else math.nan for c in members])):
            c.adjusted_p = adjusted
        tested = sum(c.tested for c in members)
        for c in members:
            if c.tested:
                c.adjusted = _interval_at(c, stats.adjusted_level(tested))
    return out


def _interval_at(c: Comparison, level: float) -> stats.Interval:
    """`c`'s interval recomputed at another level, by the same test (the bootstrap with the same resamples)."""
    if c.test == SEEDS:
        return stats.paired_t_interval(*c.samples, level=level)
    return stats.hierarchical_bootstrap(c.samples, level=level)


def family_sizes(comparisons: Sequence[Comparison], test: str) -> dict[str, int]:
    """metric -> how many comparisons its family holds (tested ones: Holm's m)."""
    sizes: dict[str, int] = {}
    for c in comparisons:
        if c.test == test:
            sizes[c.metric] = sizes.get(c.metric, 0) + int(c.tested)
    return sizes

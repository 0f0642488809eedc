"""`oloraplus report DIR`: the paper's table, differences to the baseline with CIs, curves, refinement.

Reads the finished runs of a sweep directory (see `runs.py`) and writes DIR/report.md plus
PNG figures in DIR/plots/. Differences are always candidate − baseline, paired by seed (and by
eval example for generation metrics); `stats.py` says how the intervals are computed.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from oloraplus.errors import ConfigError
from oloraplus.experiments import rank_report, stats
from oloraplus.experiments.runs import (
    Arm, Run, baseline_selector, find_baseline, find_runs, group_arms, read_plan,
)
from oloraplus.experiments.sweepdir import format_value, safe_component
from oloraplus.io import atomic_write_text
from oloraplus.markdown import markdown_table
from oloraplus.paths import portable_command, portable_path

# key, column title, higher is better, decimals
METRICS = (
    ("eval_loss", "eval loss", False, 4),
    ("rouge1", "ROUGE-1", True, 2),
    ("rouge2", "ROUGE-2", True, 2),
    ("rougeL", "ROUGE-L", True, 2),
    ("bleu", "corpus BLEU", True, 2),
)
GENERATION_METRICS = ("rouge1", "rouge2", "rougeL", "bleu")
# The bootstrap resamples examples, so it compares per-example scores. ROUGE F1 is a per-example mean
# either way, but BLEU is not: corpus BLEU 0.00 can sit beside a nonzero mean sentence-BLEU difference.
EXAMPLE_TITLES = {"bleu": "sentence BLEU"}
DASH = "–"
REPORT_FILE, PLOTS_DIR = "report.md", "plots"
# A run "explored" when its final distance from the initial basis is >= EXPLORE_FACTOR times that of
# the λ = 1 run of the same method, "refined" when <= 1/EXPLORE_FACTOR times; otherwise "like λ=1".
EXPLORE_FACTOR = 1.5
# The measure that decides: chordal distance span(B_t) vs span(B_0); LoRA (B_0 = 0) has none, so
# the relative change of B stands in.
DIAG_PRIORITY = ("diag_subspace_distance", "diag_rel_change_B")


def _fmt(value: float, digits: int, signed: bool = False) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value:{'+' if signed else ''}.{digits}f}"


def mean_std(values: Sequence[float], digits: int) -> str:
    """'mean ± std' over seeds (sample std), the mean alone for one seed, '–' for none."""
    if not values:
        return DASH
    if len(values) == 1:
        return _fmt(values[0], digits)
    return f"{_fmt(statistics.fmean(values), digits)} ± {_fmt(statistics.stdev(values), digits)}"


def plural(count: int, noun: str) -> str:
    """'1 step', '2 steps': a count a reader sees must agree with its noun."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _seeds_cell(arm: Arm) -> str:
    """'2', or '2 (1 diverged)': the mean ± std of the metrics is over the seeds that did not diverge."""
    diverged = sum(run.diverged for run in arm.runs)
    return f"{len(arm.runs)} ({diverged} diverged)" if diverged else str(len(arm.runs))


def results_table(arms: Sequence[Arm]) -> str:
    header = ["method", "seeds", *(title for _, title, _, _ in METRICS)]
    rows = [[arm.label, _seeds_cell(arm), *(mean_std(arm.values(key), digits) for key, _, _, digits in METRICS)]
            for arm in arms]
    return markdown_table(header, rows)


def format_table(runs: Sequence[Run]) -> str:
    """The main results table(s), one per model, as Markdown (printed by `sweep` and `report`)."""
    return "\n\n".join(f"model: {portable_path(model)}\n\n{results_table(arms)}"
                       for model, arms in group_arms(runs).items())


def _common_seeds(arm: Arm, base: Arm) -> list[int]:
    return sorted(set(arm.by_seed()) & set(base.by_seed()))


def seed_differences(arm: Arm, base: Arm, metric: str) -> stats.Interval:
    """Paired over the seeds both arms ran: t interval of candidate − baseline."""
    a, b = arm.by_seed(), base.by_seed()
    pairs = [(a[s].metrics.get(metric), b[s].metrics.get(metric)) for s in _common_seeds(arm, base)]
    pairs = [(x, y) for x, y in pairs if isinstance(x, (int, float)) and isinstance(y, (int, float))]
    return stats.paired_t_interval([x for x, _ in pairs], [y for _, y in pairs])


def _score(record: dict[str, Any], metric: str) -> float | None:
    value = record.get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def example_differences(arm: Arm, base: Arm, metric: str) -> list[float]:
    """Per-example candidate − baseline scores, paired by eval example within each seed, pooled over seeds."""
    differences: list[float] = []
    a, b = arm.by_seed(), base.by_seed()
    for seed in _common_seeds(arm, base):
        cand, ref = a[seed].generations, b[seed].generations
        if len(cand) == len(ref) and all(x.get("prompt") == y.get("prompt") for x, y in zip(cand, ref)):
            pairs = list(zip(cand, ref))
        else:
            by_prompt = {y.get("prompt"): y for y in ref}
            pairs = [(x, by_prompt[x.get("prompt")]) for x in cand if x.get("prompt") in by_prompt]
        for x, y in pairs:
            sx, sy = _score(x, metric), _score(y, metric)
            if sx is not None and sy is not None:
                differences.append(sx - sy)
    return differences


def comparison_rows(arms: Sequence[Arm], base: Arm) -> tuple[list[list[str]], list[list[str]]]:
    """Rows of the seed-paired table and of the example-bootstrap table, every arm vs the baseline."""
    seed_rows, boot_rows = [], []
    for arm in arms:
        if arm is base:
            continue
        for key, title, higher, digits in METRICS:
            interval = seed_differences(arm, base, key)
            if interval.n:
                ci = f"[{_fmt(interval.low, digits, True)}, {_fmt(interval.high, digits, True)}]"
                seed_rows.append([arm.label, title, _fmt(interval.mean, digits, True), ci, str(interval.n),
                                  stats.verdict(interval, higher)])
            if key in GENERATION_METRICS:
                diffs = example_differences(arm, base, key)
                if diffs:
                    boot = stats.bootstrap_interval(diffs)
                    ci = f"[{_fmt(boot.low, digits, True)}, {_fmt(boot.high, digits, True)}]"
                    boot_rows.append([arm.label, EXAMPLE_TITLES.get(key, title), _fmt(boot.mean, digits, True), ci,
                                      str(boot.n), stats.verdict(boot, higher)])
    return seed_rows, boot_rows


def steps_to_reach(run: Run, target: float) -> int | None:
    """First evaluated step whose eval loss is <= target (None: never reached)."""
    return next((step for step, loss in run.eval_curve() if loss <= target), None)


def steps_rows(arms: Sequence[Arm], base: Arm) -> list[tuple[str, float | None, str, float]]:
    """(label, mean steps over the seeds that reached, 'k/n', mean target) for every arm."""
    rows = []
    targets = {seed: run.metrics.get("eval_loss") for seed, run in base.by_seed().items()}
    for arm in arms:
        seeds = [s for s in _common_seeds(arm, base) if isinstance(targets[s], (int, float))]
        if not seeds:
            continue
        reached = [steps_to_reach(arm.by_seed()[s], float(targets[s])) for s in seeds]
        hits = [r for r in reached if r is not None]
        rows.append((arm.label, statistics.fmean(hits) if hits else None, f"{len(hits)}/{len(seeds)}",
                     statistics.fmean(float(targets[s]) for s in seeds)))
    return rows


def _mean_diag(arm: Arm, key: str) -> float:
    values = [r.final_diagnostics().get(key, math.nan) for r in arm.runs]
    values = [v for v in values if math.isfinite(v)]
    return statistics.fmean(values) if values else math.nan


def classify(value: float, reference: float) -> str:
    """'explored' / 'refined' / 'like λ=1' from value / reference against EXPLORE_FACTOR."""
    if not (math.isfinite(value) and math.isfinite(reference)) or reference <= 0:
        return DASH
    ratio = value / reference
    if ratio >= EXPLORE_FACTOR:
        return "explored"
    if ratio <= 1.0 / EXPLORE_FACTOR:
        return "refined"
    return "like λ=1"


def refinement_section(arms: Sequence[Arm], plot: str | None) -> list[str]:
    keys = sorted({k for arm in arms for r in arm.runs for k in r.final_diagnostics()},
                  key=lambda k: (DIAG_PRIORITY.index(k) if k in DIAG_PRIORITY else len(DIAG_PRIORITY), k))
    if not keys:
        return []
    rows, verdicts = [], {"refined": [], "explored": [], "like λ=1": []}
    for arm in arms:
        if not any(run.final_diagnostics() for run in arm.runs):
            continue  # e.g. LoRA: B_0 = 0, nothing to measure against
        ref = next((a for a in arms if a.line_label == arm.line_label and a.ratio == 1.0), None)
        decided, measure, relative = DASH, DASH, math.nan
        for key in DIAG_PRIORITY:
            value, reference = _mean_diag(arm, key), _mean_diag(ref, key) if ref else math.nan
            if math.isfinite(value) and math.isfinite(reference) and reference > 0:
                decided, measure, relative = classify(value, reference), key, value / reference
                break
        if arm is ref:
            decided = "reference (λ=1)"
        elif decided in verdicts:
            verdicts[decided].append(arm.label)
        rows.append([arm.label, *(_fmt(_mean_diag(arm, k), 4) for k in keys), measure,
                     _fmt(relative, 2), decided])
    lines = [
        "### Refinement vs exploration", "",
        f"Final adapter diagnostics (mean over seeds). A run **explored** when its distance from the initial "
        f"basis is at least {EXPLORE_FACTOR:g}× that of the λ=1 run of the same method, **refined** when at most "
        f"1/{EXPLORE_FACTOR:g} of it, otherwise it behaves like λ=1. The distance is `diag_subspace_distance` "
        "(chordal distance between span(B_t) and span(B_0): 0 = same subspace, 1 = orthogonal), or "
        "`diag_rel_change_B` where the former is undefined (LoRA starts from B_0 = 0).", "",
        markdown_table(["method", *keys, "measure", "× λ=1", "behaviour"], rows), "",
    ]
    for name, members in verdicts.items():
        if members:
            lines.append(f"- {name}: {', '.join(members)}")
    if plot:
        lines += ["", f"![final diagnostics against λ]({plot})"]
    return lines + [""]


def _describe_selector(selector: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in selector.items())


def model_section(model: str, arms: list[Arm], selector: dict[str, Any], plots_dir: Path, suffix: str,
                  delta_ranks: dict[str, dict[str, float]] | None = None) -> list[str]:
    """Everything the report says about one model's runs (`delta_ranks`: see `rank_report`)."""
    from oloraplus.experiments import plots  # matplotlib only when a report is written

    rel = Path(PLOTS_DIR)
    lines = [f"## Model: {portable_path(model)}", "", "### Results (mean ± std over seeds)", "",
             results_table(arms), ""]
    present = [key for key, _, _, _ in METRICS if any(arm.values(key) for arm in arms)]
    plots.plot_loss_curves(arms, plots_dir / f"loss-curves{suffix}.png", portable_path(model))
    plots.plot_against_ratio(arms, present, plots_dir / f"metrics-vs-ratio{suffix}.png", "")
    lines += [f"![loss curves]({rel / f'loss-curves{suffix}.png'})", "",
              f"![metrics against λ]({rel / f'metrics-vs-ratio{suffix}.png'})", ""]

    base = find_baseline(arms, selector)
    if base is None:
        lines += [f"No run matches the baseline ({_describe_selector(selector)}): set `baseline:` in the sweep "
                  "file or pass `--baseline` to `oloraplus report`.", ""]
    else:
        seed_rows, boot_rows = comparison_rows(arms, base)
        lines += [f"### Versus the baseline ({base.label})", "",
                  "Paired over seeds (same seed = same data split and init seed): mean of candidate − baseline "
                  f"with a 95% Student-t interval. Eval loss: lower is better; ROUGE/BLEU (0–100): higher is better. "
                  f"A verdict needs the interval to exclude 0.", ""]
        if seed_rows:
            lines += [markdown_table(["method", "metric", "Δ mean", "95% CI", "seeds", "verdict"], seed_rows), ""]
        if boot_rows:
            lines += ["Paired over eval examples (examples of every common seed pooled; percentile bootstrap, "
                      f"{stats.RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED}). Each example is scored on its own: "
                      "ROUGE F1 as above, but *sentence* BLEU, the mean of per-example BLEU scores, which is not the "
                      "corpus BLEU of the tables above (corpus BLEU pools n-gram counts over all examples, so it "
                      "can be 0.00 while sentence BLEU differs):", "",
                      markdown_table(["method", "metric", "Δ mean", "95% CI", "examples", "verdict"], boot_rows), ""]
        steps = steps_rows(arms, base)
        if steps:
            plots.plot_steps_to_target([(label, mean) for label, mean, _, _ in steps],
                                       plots_dir / f"steps-to-baseline{suffix}.png", f"target: {base.label}")
            table = [[label, _fmt(target, 4), DASH if mean is None else f"{mean:.0f}",
                      "not reached" if mean is None else reached] for label, mean, reached, target in steps]
            lines += ["### Steps to reach the baseline's final eval loss", "",
                      "First evaluated step at which a run's eval loss is at or below the final eval loss of the "
                      "baseline run with the same seed (resolution: `eval_steps`).", "",
                      markdown_table(["method", "target", "steps (mean)", "seeds reached"], table), "",
                      f"![steps to reach the baseline]({rel / f'steps-to-baseline{suffix}.png'})", ""]
    diag_keys = sorted({k for arm in arms for r in arm.runs for k in r.final_diagnostics()})
    diag_plot = None
    if diag_keys:
        plots.plot_against_ratio(arms, diag_keys, plots_dir / f"diagnostics-vs-ratio{suffix}.png", "",
                                 final_diagnostics=True)
        diag_plot = str(rel / f"diagnostics-vs-ratio{suffix}.png")
    lines += refinement_section(arms, diag_plot)
    if delta_ranks:
        lines += rank_report.section(arms, delta_ranks, plots_dir / f"delta-rank{suffix}.png",
                                     str(rel / f"delta-rank{suffix}.png"))
    return lines


def write_report(directory: str | Path, baseline: dict[str, Any] | None = None, delta_rank: bool = False) -> Path:
    """Write DIR/report.md and DIR/plots/*.png from the finished runs in DIR; returns the report path.

    `delta_rank`: also the effective rank of every run's ΔW per layer (slow: reloads the base per run).
    """
    directory = Path(directory)
    runs = find_runs(directory)
    if not runs:
        raise ConfigError(f"report {directory}: no finished runs (metrics.json and config.yaml) found")
    selector = baseline or baseline_selector(directory)
    plan = read_plan(directory)
    grouped = group_arms(runs)
    seeds = sorted({run.seed for run in runs})
    ranks = rank_report.collect(directory, runs) if delta_rank else None
    lines = ["# Sweep report", ""]
    if plan.get("command"):
        lines += [f"Made by `{portable_command(plan['command'])}`.", ""]
    diverged = [run.name for run in runs if run.diverged]
    count = f"{len(runs)} finished runs" + (f" ({len(diverged)} diverged: NaN/inf loss)" if diverged else "")
    lines += [f"{count}; seeds {', '.join(map(str, seeds))}; baseline "
              f"{_describe_selector(selector)}. Per-run numbers: `results.csv` and `runs/<name>/metrics.json`.", ""]
    if diverged:
        lines += [f"Diverged (no eval metrics; see `runs/<name>/failure.json`): {', '.join(diverged)}.", ""]
    for model, arms in grouped.items():
        suffix = "" if len(grouped) == 1 else "_" + safe_component(model)
        lines += model_section(model, arms, selector, directory / PLOTS_DIR, suffix, ranks)
    path = directory / REPORT_FILE
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path

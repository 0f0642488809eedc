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
from oloraplus.experiments import compare, rank_report, stats
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
# How far B turned (span B_t vs span B_0) and how far it moved: their ratio is comparable across λ.
TURN_KEY, DISPLACEMENT_KEY = "diag_subspace_distance", "diag_rel_change_B"


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


def split_note(runs: Sequence[Run]) -> str:
    """Which split and which seeds the tables' numbers come from, and whether a validation split existed."""
    seeds = ", ".join(map(str, sorted({run.seed for run in runs})))
    sizes = sorted({int(n) for run in runs if isinstance(n := run.metrics.get("eval_examples"), int)})
    test = f"the test split ({'/'.join(map(str, sizes))} examples)" if sizes else "the test split"
    note = f"Numbers from {test}, seeds {seeds}."
    val_sizes = sorted({int(run.config.get("val_size") or 0) for run in runs})
    if val_sizes == [0]:
        return note + (" These runs have no validation split (`--val-size 0`; runs from before it existed read "
                       "the same): any setting chosen among them was chosen on these test numbers.")
    return note + (" Settings are chosen on the separate validation split (`--val-size` "
                   f"{'/'.join(str(v) for v in val_sizes if v)}; `val_eval_loss` in results.csv), never on these.")


def format_table(runs: Sequence[Run]) -> str:
    """The main results table(s), one per model, as Markdown (printed by `sweep` and `report`)."""
    return "\n\n".join(f"model: {portable_path(model)}\n\n{results_table(arms)}"
                       for model, arms in group_arms(runs).items())


def _p(value: float) -> str:
    return DASH if not math.isfinite(value) else ("<0.001" if value < 0.001 else f"{value:.3f}")


def _ci(interval: stats.Interval, digits: int) -> str:
    return f"[{_fmt(interval.low, digits, True)}, {_fmt(interval.high, digits, True)}]"


def comparison_rows(arms: Sequence[Arm], base: Arm) -> tuple[list[list[str]], list[list[str]], str]:
    """Rows of the seed-paired table and of the seed-then-example bootstrap table, and the sentence naming the
    families of comparisons (see `compare`)."""
    digits = {title: d for _, title, _, d in METRICS} | {EXAMPLE_TITLES.get(k, t): d for k, t, _, d in METRICS}
    found = compare.compare(arms, base, [(k, t, h) for k, t, h, _ in METRICS],
                            {k: EXAMPLE_TITLES.get(k, t) for k, t, _, _ in METRICS if k in GENERATION_METRICS})
    seed_rows, boot_rows = [], []
    for c in found:
        d = digits[c.metric]
        cells = [c.label, c.metric, _fmt(c.interval.mean, d, True), _ci(c.interval, d),
                 _ci(c.adjusted, d) if c.adjusted is not None else DASH]
        p_values = [_p(c.interval.p), _p(c.adjusted_p)] if c.tested else [DASH, DASH]  # withheld: no p to misread
        if c.test == compare.SEEDS:
            seed_rows.append([*cells, str(c.interval.n), *p_values, c.verdict])
        else:
            boot_rows.append([*cells, f"{c.interval.n} × ≥{c.examples}", *p_values, c.verdict])
    families = [f"{metric} ({plural(m, 'comparison')}{', ' + test if test == compare.EXAMPLES else ''})"
                for test in (compare.SEEDS, compare.EXAMPLES)
                for metric, m in compare.family_sizes(found, test).items() if m]
    withheld = sum(1 for c in found if not c.tested)
    family = ("Families of comparisons (each arm against the baseline; Holm-adjusted within each): "
              + ("; ".join(families) if families else "none tested") + "."
              + (f" {plural(withheld, 'comparison')} withheld from the families (reason in the verdict)."
                 if withheld else ""))
    return seed_rows, boot_rows, family


def steps_to_reach(run: Run, target: float) -> int | None:
    """First evaluated step whose eval loss is <= target (None: never reached)."""
    return next((step for step, loss in run.eval_curve() if loss <= target), None)


def steps_rows(arms: Sequence[Arm], base: Arm) -> list[tuple[str, float | None, str, float]]:
    """(label, mean steps over the seeds that reached, 'k/n', mean target) for every arm."""
    rows = []
    targets = {seed: run.metrics.get("eval_loss") for seed, run in base.by_seed().items()}
    for arm in arms:
        seeds = [s for s in compare.common_seeds(arm, base) if isinstance(targets[s], (int, float))]
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


def turn_per_displacement(run: Run) -> float:
    """Subspace distance of span(B_t) from span(B_0) per unit relative displacement ‖B_t − B_0‖/‖B_0‖.

    Under AdamW B's displacement grows with its rate λη, so the distance alone restates λ; per unit of
    displacement it says which share of B's movement left its initial subspace (to first order it does not
    depend on how far B moved), which λ does not fix. Both are the layer means the diagnostics log.
    """
    diag = run.final_diagnostics()
    distance, moved = diag.get(TURN_KEY, math.nan), diag.get(DISPLACEMENT_KEY, math.nan)
    return distance / moved if math.isfinite(distance) and math.isfinite(moved) and moved > 0 else math.nan


def refinement_section(arms: Sequence[Arm], plot: str | None) -> list[str]:
    keys = sorted({k for arm in arms for r in arm.runs for k in r.final_diagnostics()})
    if not keys:
        return []
    rows = []
    for arm in arms:
        if not any(run.final_diagnostics() for run in arm.runs):
            continue  # e.g. LoRA: B_0 = 0, nothing to measure against
        turns = [t for t in map(turn_per_displacement, arm.runs) if math.isfinite(t)]
        rows.append([arm.label, *(_fmt(_mean_diag(arm, k), 4) for k in keys),
                     _fmt(statistics.fmean(turns), 3) if turns else DASH])
    lines = [
        "### How far B moved, and how much of it turned", "",
        "Final adapter diagnostics (layer means, then the mean over seeds). `diag_subspace_distance` is the chordal "
        "distance between span(B_t) and span(B_0) (0 = same subspace, 1 = orthogonal), `diag_rel_change_B` the "
        "relative displacement ‖B_t − B_0‖/‖B_0‖. Under AdamW B's displacement grows with its learning rate λη, so "
        "a larger distance at a larger λ restates λ; **turn per displacement** (distance ÷ displacement, per run) "
        "is the share of B's movement that left its initial subspace, comparable across λ. No refined/explored "
        "verdict is drawn from these numbers.", "",
        markdown_table(["method", *keys, "turn per displacement"], rows), "",
    ]
    if plot:
        lines += [f"![final diagnostics against λ]({plot})", ""]
    return lines


def _describe_selector(selector: dict[str, Any]) -> str:
    return " ".join(f"{k}={format_value(v)}" for k, v in selector.items())


def model_section(model: str, arms: list[Arm], selector: dict[str, Any], plots_dir: Path, suffix: str,
                  delta_ranks: dict[str, dict[str, float]] | None = None) -> list[str]:
    """Everything the report says about one model's runs (`delta_ranks`: see `rank_report`)."""
    from oloraplus.experiments import plots  # matplotlib only when a report is written

    rel = Path(PLOTS_DIR)
    lines = [f"## Model: {portable_path(model)}", "", "### Results (mean ± std over seeds)", "",
             split_note([run for arm in arms for run in arm.runs]), "", results_table(arms), ""]
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
        seed_rows, boot_rows, family = comparison_rows(arms, base)
        lines += [f"### Versus the baseline ({base.label})", "",
                  "Paired over seeds (same seed = same data split and init seed): mean of candidate − baseline "
                  f"with a 95% Student-t interval and the paired t-test's p. Eval loss: lower is better; ROUGE/BLEU "
                  f"(0–100): higher is better. {family} A verdict needs the Holm-adjusted p below "
                  f"{1 - stats.LEVEL:.2f}. '95% CI' is per comparison; 'adjusted CI' covers every comparison of "
                  "its family at once with probability ≥ 95% (Bonferroni's level 1 − 0.05/m, as Holm adjusts tests, "
                  "not intervals), so a Holm verdict can stand where it still reaches 0. No verdict from fewer "
                  f"than {stats.MIN_SEEDS} seeds ('{stats.TOO_FEW}'); a comparison where either side diverged on a "
                  "common seed shows 'k/n diverged' and no verdict.", ""]
        if seed_rows:
            lines += [markdown_table(["method", "metric", "Δ mean", "95% CI", "adjusted CI", "seeds", "p", "Holm p",
                                      "verdict"],
                                     seed_rows), ""]
        if boot_rows:
            lines += ["Paired over eval examples within each seed: a bootstrap that resamples seeds, then examples "
                      f"within each drawn seed ({stats.RESAMPLES} resamples, seed {stats.BOOTSTRAP_SEED}; every seed "
                      f"weighs the same), so the variance between seeds counts. No verdict from fewer than "
                      f"{stats.MIN_SEEDS} seeds or {stats.MIN_EXAMPLES} examples per seed. Each example is scored on "
                      "its own: ROUGE F1 as above, but *sentence* BLEU, the mean of per-example BLEU scores, which is "
                      "not the corpus BLEU of the tables above (corpus BLEU pools n-gram counts over all examples, so "
                      "it can be 0.00 while sentence BLEU differs):", "",
                      markdown_table(["method", "metric", "Δ mean", "95% CI", "adjusted CI", "seeds × examples", "p",
                                      "Holm p", "verdict"], boot_rows), ""]
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


def write_report(directory: str | Path, baseline: dict[str, Any] | None = None, delta_rank: bool = False,
                 note: str | None = None) -> Path:
    """Write DIR/report.md and DIR/plots/*.png from the finished runs in DIR; returns the report path.

    `delta_rank`: also the effective rank of every run's ΔW per layer (slow: reloads the base per run).
    `note`: a sentence under the title (a select/confirm sweep says where its settings were chosen).
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
    lines = ["# Sweep report", ""] + ([note, ""] if note else [])
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

"""`oloraplus tune-ratio`: find a good λ by successive halving (Jamieson & Talwalkar 2016).

Round k trains every surviving λ for `min_steps · 2^k` optimizer steps (each run from scratch,
so its learning-rate schedule fits its budget) and keeps the better half by validation loss; the λ
with the lowest validation loss in the last round wins. The validation split (`--val-size`, by default
as large as the test split) is never the test split, so the best λ's test loss is not chosen by itself.
Each round is a sweep in DIR/rung-k/, so an interrupted search resumes where it stopped and never
retrains a finished run.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from oloraplus import rundir
from oloraplus.config import TrainConfig, check_ratio, to_dict
from oloraplus.errors import ConfigError
from oloraplus.experiments.executor_config import ExecutorConfig
from oloraplus.experiments.report import plural
from oloraplus.experiments.sweep import TrainFn, execute, plan_from_spec, run_path
from oloraplus.experiments.sweepdir import format_value
from oloraplus.experiments.sweeplock import LOCK_FILE, sweep_lock
from oloraplus.io import atomic_write_json, atomic_write_text
from oloraplus.markdown import markdown_table
from oloraplus.paths import portable_command

DEFAULT_GRID = tuple(2.0**k for k in range(-4, 5))  # 1/16 … 16, factor 2
DEFAULT_MIN_STEPS = 50
TUNE_FILE, TUNE_JSON, TUNE_PLOT = "tune.md", "tune.json", "tune.png"


@dataclass(frozen=True)
class Rung:
    index: int
    max_steps: int
    losses: dict[float, float]  # λ -> final validation loss (what chooses)
    test_losses: dict[float, float]  # λ -> final eval loss on the test split (reported, never chooses)


@dataclass(frozen=True)
class TuneResult:
    best_ratio: float
    best_loss: float  # validation
    rungs: list[Rung]
    output: Path
    val_size: int = 0

    @property
    def best_test_loss(self) -> float:
        return self.rungs[-1].test_losses.get(self.best_ratio, math.nan)


def rounds_needed(count: int) -> int:
    """Halvings (keeping ⌈n/2⌉) until one λ is left: 9 -> 5 -> 3 -> 2 -> 1 is 4 rounds."""
    rounds = 0
    while count > 1:
        count, rounds = math.ceil(count / 2), rounds + 1
    return max(rounds, 1)


def _rank_key(item: tuple[float, float]) -> tuple[float, float, float]:
    """Lower eval loss first; a tie goes to the λ closer to 1 (the plain-AdamW default), then the smaller λ."""
    ratio, loss = item
    return (loss if math.isfinite(loss) else math.inf, abs(math.log(ratio)), ratio)


def survivors(losses: dict[float, float]) -> list[float]:
    """The better half (⌈n/2⌉) of the λ values, returned in ascending λ."""
    ranked = sorted(losses.items(), key=_rank_key)
    return sorted(ratio for ratio, _ in ranked[: math.ceil(len(ranked) / 2)])


def check_grid(grid: Sequence[float]) -> list[float]:
    values = sorted(check_ratio(v) for v in grid)
    if len(values) < 2 or len(set(values)) != len(values):
        raise ConfigError(f"--grid: need at least two different λ values, got {', '.join(map(format_value, grid))}")
    return values


def _rung(base: dict, ratios: list[float], index: int, max_steps: int, output: Path,
          train_fn: TrainFn | None, executor: ExecutorConfig | None = None) -> Rung:
    spec = {"base": {**base, "max_steps": max_steps}, "grid": {"ratio": ratios}}
    plan = plan_from_spec(spec, f"tune-ratio rung {index}")
    directory = output / f"rung-{index}"
    print(f"round {index}: {plural(len(ratios), 'λ value')} × {plural(max_steps, 'step')} -> {directory}",
          file=sys.stderr, flush=True)
    execute(plan, directory, train_fn=train_fn, report=False, executor=executor)
    losses, test_losses = {}, {}
    for run in plan.runs:
        metrics = rundir.read_metrics(run_path(directory, run))
        losses[run.config.ratio], test_losses[run.config.ratio] = (
            float(v) if isinstance(v, (int, float)) else math.nan
            for v in (metrics.get(rundir.VALIDATION_PREFIX + "eval_loss"), metrics.get("eval_loss")))
    return Rung(index=index, max_steps=max_steps, losses=losses, test_losses=test_losses)


def tune_ratio(
    cfg: TrainConfig, output: str | Path, grid: Sequence[float] = DEFAULT_GRID, min_steps: int = DEFAULT_MIN_STEPS,
    rounds: int | None = None, *, train_fn: TrainFn | None = None, command: str | None = None,
    executor: ExecutorConfig | None = None,
) -> TuneResult:
    """Successive halving over `grid`; writes DIR/tune.md, tune.json and tune.png; returns the best λ."""
    alive = check_grid(grid)
    if min_steps < 1:
        raise ConfigError(f"--min-steps: must be >= 1, got {min_steps}")
    rounds = rounds_needed(len(alive)) if rounds is None else rounds
    if rounds < 1:
        raise ConfigError(f"--rounds: must be >= 1, got {rounds}")
    output = rundir.check_output_dir(output, what="λ search", own=(TUNE_JSON, "rung-0", LOCK_FILE))
    base = {k: v for k, v in to_dict(cfg).items() if k not in (*rundir.PER_RUN, "ratio", "max_steps")}
    # An auto eval size grows with the steps: fix it at the longest round's, so every round has the same split.
    base["eval_size"] = replace(cfg, max_steps=min_steps * 2 ** (rounds - 1)).eval_examples()
    base["val_size"] = cfg.val_size or base["eval_size"]  # λ is chosen on validation, never on the test split
    rungs: list[Rung] = []
    with sweep_lock(output, what="λ search"):
        for index in range(rounds):
            rungs.append(_rung(base, alive, index, min_steps * 2**index, output, train_fn, executor))
            if index == rounds - 1:
                break
            alive = survivors(rungs[-1].losses)
            if len(alive) == 1:
                break
        best_ratio, best_loss = min(rungs[-1].losses.items(), key=_rank_key)
        result = TuneResult(best_ratio=best_ratio, best_loss=best_loss, rungs=rungs, output=output,
                            val_size=base["val_size"])
        write_tune_report(result, command)
    return result


def write_tune_report(result: TuneResult, command: str | None = None) -> Path:
    """tune.md (eval loss of every λ in every round), tune.json (same, machine-readable), tune.png."""
    ratios = sorted(result.rungs[0].losses)
    header = ["λ", *(f"round {r.index} ({plural(r.max_steps, 'step')})" for r in result.rungs)]
    rows = []
    for ratio in ratios:
        cells = []
        for rung in result.rungs:
            loss = rung.losses.get(ratio)
            text = "–" if loss is None else f"{loss:.4f}"
            cells.append(f"**{text}**" if rung is result.rungs[-1] and ratio == result.best_ratio else text)
        rows.append([format_value(ratio), *cells])
    last = result.rungs[-1]
    lines = ["# λ search (successive halving)", ""]
    if command:
        lines += [f"Made by `{portable_command(command)}`.", ""]
    lines += [
        f"**Best λ = {format_value(result.best_ratio)}**: validation loss {result.best_loss:.4f} after "
        f"{plural(last.max_steps, 'step')} (round {last.index}, against {plural(len(last.losses), 'λ value')}); "
        f"its eval loss on the test split, which chose nothing: {result.best_test_loss:.4f}.", "",
        "Each round trains the surviving λ values from scratch with twice the previous step budget and keeps the "
        f"better half by the eval loss on the validation split ({plural(result.val_size, 'example')}, disjoint "
        "from the test split; the table's numbers; '–': eliminated earlier). Runs: `rung-<k>/runs/`.", "",
        markdown_table(header, rows), "", f"![eval loss against λ per round]({TUNE_PLOT})", "",
    ]
    path = result.output / TUNE_FILE
    atomic_write_text(path, "\n".join(lines))
    atomic_write_json(result.output / TUNE_JSON, {
        "best_ratio": result.best_ratio, "best_val_eval_loss": result.best_loss,
        "best_test_eval_loss": result.best_test_loss, "val_size": result.val_size,
        "command": command and portable_command(command),
        "rounds": [{"index": r.index, "max_steps": r.max_steps,
                    "val_eval_loss": {format_value(k): v for k, v in sorted(r.losses.items())},
                    "eval_loss": {format_value(k): v for k, v in sorted(r.test_losses.items())}} for r in result.rungs],
    })
    _plot(result)
    return path


def _plot(result: TuneResult) -> None:
    from oloraplus.experiments import plots  # matplotlib only when a search has finished

    fig, ax = plots.plt.subplots(figsize=(6.5, 4.2), dpi=110)
    for rung in result.rungs:
        points = sorted((k, v) for k, v in rung.losses.items() if math.isfinite(v))
        if points:
            ax.plot(*zip(*points), marker="o", label=f"round {rung.index} ({plural(rung.max_steps, 'step')})")
    ax.axvline(result.best_ratio, color="gray", linestyle="--", linewidth=1,
               label=f"best λ = {format_value(result.best_ratio)}")
    plots.set_ratio_axis(ax, sorted(result.rungs[0].losses))
    ax.set_ylabel("final validation loss (nats/token)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    plots.save_figure(fig, result.output / TUNE_PLOT)

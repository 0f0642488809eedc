"""The `sweep`, `report` and `tune-ratio` subcommands: their flags and what they run (`cli/main.py` registers them)."""

from __future__ import annotations

import argparse
import shlex
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from oloraplus import rundir
from oloraplus.config import TrainConfig, add_arguments, build_config, read_yaml, resolve
from oloraplus.errors import ConfigError
from oloraplus.experiments import select, tune
from oloraplus.experiments.executor_config import add_executor_arguments, executor_options
from oloraplus.experiments.report import format_table, write_report
from oloraplus.experiments.runs import find_runs
from oloraplus.experiments.sweep import SweepPlan, plan_sweep, run_path, run_sweep
from oloraplus.experiments.sweepdir import format_value
from oloraplus.paths import portable_command

DEFAULT_TUNE_OUTPUT = "runs/tune-ratio"
SWEEP_HELP = """\
SWEEP.yaml:
  base:     {option: value}            any `train` option, shared by every run
  grid:     {option: [values]}         cartesian product, or a list of such mappings (their union)
  seeds:    [1, 2, 3]                  crossed with every grid point (optional)
  baseline: {method: olora, ratio: 1}  what the report compares against (this is the default)
  select:   {by: eval_loss, over: [lr, ratio], seeds: [1]}
                                       choose each arm's cell on validation (needs base.val_size and
                                       base.split_seed), then confirm it with `seeds` on test (docs/sweeps.md)

Runs go to DIR/runs/<name>; DIR/results.csv is rewritten after every run, DIR/report.md and
DIR/plots/ at the end. Run the same command again after an interruption: finished runs are skipped.
"""


def parse_grid(text: str) -> list[float]:
    """'1/16,0.25,1,4' -> [0.0625, 0.25, 1.0, 4.0] (fractions allowed)."""
    values = []
    for item in text.split(","):
        try:
            values.append(float(Fraction(item.strip())))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"--grid: {item.strip()!r} is not a number (expected e.g. --grid 1/16,1/4,1,4,16)"
            ) from None
    return values


def parse_baseline(text: str) -> dict[str, Any]:
    """'method=olora,ratio=1' -> {'method': 'olora', 'ratio': 1.0}, checked against the train options."""
    mapping = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--baseline: expected KEY=VALUE pairs separated by commas, got {item!r}")
        mapping[key.strip().replace("-", "_")] = yaml.safe_load(value.strip())
    cfg = build_config(TrainConfig, mapping, "--baseline")
    return {key: getattr(cfg, key) for key in mapping}


def sweep_command(args: argparse.Namespace) -> int:
    executor = executor_options(args)
    command = portable_command(shlex.join(["oloraplus", "sweep", args.sweep_file, "--output", args.output]))
    spec = read_yaml(args.sweep_file) if Path(args.sweep_file).is_file() else None
    if select.is_select_spec(spec):  # choose on validation, then confirm on test
        plan = select.plan_select(spec, args.sweep_file)
        if args.dry_run:
            print("\n".join(select.describe_plan(plan, Path(args.output))))
            return 0
        results = select.run_select_sweep(plan, args.output, command=command, executor=executor)
        report_dir = Path(args.output) / select.CONFIRM_DIR
    else:
        if args.dry_run:
            print("\n".join(describe_sweep(plan_sweep(args.sweep_file), Path(args.output))))
            return 0
        results = run_sweep(args.sweep_file, args.output, command=command, executor=executor)
        report_dir = Path(args.output)
    print(format_table(find_runs(report_dir)))
    print(f"\nresults: {results}\nreport:  {report_dir / 'report.md'}")
    return 0


def describe_sweep(plan: SweepPlan, output: Path | None = None) -> list[str]:
    """What `sweep --dry-run` prints for a plain sweep: every planned run, marked '(finished)' when `output`
    already holds it."""
    finished = [output is not None and rundir.has_metrics(run_path(output, run)) for run in plan.runs]
    lines = [f"{len(plan.runs)} runs:", *(f"  {run.name}{'  (finished)' if f else ''}"
                                          for run, f in zip(plan.runs, finished))]
    if any(finished):
        lines.append(f"  {sum(finished)} of {len(plan.runs)} finished in {output}")
    return lines


def report_command(args: argparse.Namespace) -> int:
    if not Path(args.directory).is_dir():
        raise ConfigError(f"report: {args.directory} is not a directory")
    baseline = parse_baseline(args.baseline) if args.baseline else None
    path = write_report(args.directory, baseline=baseline, delta_rank=args.delta_rank)
    print(format_table(find_runs(args.directory)))
    print(f"\nreport: {path}")
    return 0


def tune_command(args: argparse.Namespace) -> int:
    executor = executor_options(args)
    cfg = resolve(TrainConfig, args)
    output = cfg.output if cfg.output != TrainConfig.output else DEFAULT_TUNE_OUTPUT
    ignored = [f"--{name.replace('_', '-')}" for name in ("ratio", "max_steps") if name in vars(args)]
    if ignored:
        print(f"oloraplus: note: {' and '.join(ignored)} ignored: the search chooses λ and the step budgets",
              file=sys.stderr)
    grid = parse_grid(args.grid) if args.grid else list(tune.DEFAULT_GRID)
    command = "oloraplus " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["tune-ratio"] else None
    result = tune.tune_ratio(cfg, output, grid=grid, min_steps=args.min_steps, rounds=args.rounds, command=command,
                             executor=executor)
    print(Path(result.output, tune.TUNE_FILE).read_text(encoding="utf-8"))
    print(f"best λ = {format_value(result.best_ratio)}  (validation loss {result.best_loss:.4f}, test loss "
          f"{result.best_test_loss:.4f}); "
          f"details: {Path(result.output) / tune.TUNE_FILE}")
    return 0


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_file", metavar="SWEEP.yaml", help="the sweep definition")
    parser.add_argument("--output", required=True, metavar="DIR", help="sweep directory (created; reused to resume)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs the sweep plans (a select: sweep: stage 1's runs and what stage 2 will "
                        "run) and train nothing")
    add_executor_arguments(parser)


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="a sweep directory (or any directory of runs)")
    parser.add_argument("--baseline", metavar="KEY=VALUE,...",
                        help="the runs to compare against (default: the sweep's baseline, else method=olora,ratio=1)")
    parser.add_argument("--delta-rank", action="store_true",
                        help="add the effective rank of each layer's learned ΔW per arm (merges every run's adapter "
                             "into its base in float64: ~15 s a SmolLM2-135M run on a CPU; cached in "
                             "DIR/delta_rank.json)")


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    """Every `train` flag (--output reworded: it names the search directory), plus the search's own."""
    add_arguments(parser, TrainConfig, help_overrides={
        "output": f"search directory: rung-<k>/, tune.md, tune.json, tune.png (default: {DEFAULT_TUNE_OUTPUT})"})
    parser.add_argument("--grid", metavar="L1,L2,...",
                        help="λ values, fractions allowed (default: 1/16,1/8,...,16, factor 2)")
    parser.add_argument("--min-steps", type=int, default=tune.DEFAULT_MIN_STEPS,
                        help="optimizer steps in the first round; doubled each round "
                        f"(default {tune.DEFAULT_MIN_STEPS})")
    parser.add_argument("--rounds", type=int, default=None,
                        help="number of rounds (default: until one λ is left, 4 for 9 values)")
    add_executor_arguments(parser)

"""`oloraplus sweep SWEEP.yaml --output DIR`: a grid of training runs that survives being stopped.

    base:     {option: value}              any `train` option, shared by every run
    grid:     {option: [values, ...]}      cartesian product; or a list of such mappings (their union)
    seeds:    [1, 2, 3]                    crossed with every grid point
    baseline: {method: olora, ratio: 1}    the row the report compares every other row against

Each run goes to DIR/runs/<name>, the name made from the parameters that vary between runs.
Running the same command again skips finished runs whose recorded config equals the plan,
restarts unfinished ones, and refuses a finished run with a different config: two sweeps never mix.
A run that diverges (NaN/inf loss, e.g. too large a λ) is a result, not a crash: it is kept with
`metrics.json` saying where it stopped, and the sweep goes on with the next run.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from oloraplus import rundir
from oloraplus.config import TrainConfig, build_config, read_yaml
from oloraplus.errors import ConfigError, NonFiniteLossError
from oloraplus.experiments.executor_config import ExecutorConfig
from oloraplus.experiments.executors import EXECUTOR_DIR, run_jobs
from oloraplus.experiments.sweepdir import (
    DEFAULT_BASELINE, PLAN_FILE, RESULTS_FILE, RUNS_DIR, format_value, safe_component,
)
from oloraplus.experiments.sweeplock import LOCK_FILE, sweep_lock
from oloraplus.experiments.worker import Job, Outcome, train_once
from oloraplus.io import atomic_write_json, atomic_write_text

SWEEP_KEYS = ("base", "grid", "seeds", "baseline")

TrainFn = Callable[[TrainConfig], Any]


@dataclass(frozen=True)
class PlannedRun:
    name: str
    params: dict[str, Any]  # the parameters that vary between runs, as they appear in the name
    config: TrainConfig  # fully resolved; `output` is set per sweep directory by `run_config`


@dataclass(frozen=True)
class SweepPlan:
    source: str
    base: dict[str, Any]
    varying: tuple[str, ...]
    runs: tuple[PlannedRun, ...]
    baseline: dict[str, Any]


def run_name(params: dict[str, Any]) -> str:
    """`method-olora_ratio-0.25_seed-1`; 'run' for a sweep of one."""
    parts = [f"{safe_component(key)}-{safe_component(format_value(value))}" for key, value in params.items()]
    return "_".join(parts) or "run"


def describe(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={format_value(value)}" for key, value in params.items()) or "run"


def _normalise_key(key: Any) -> str:
    return str(key).replace("-", "_")


def _check_mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of option: value, got {type(value).__name__}")
    normalised = {_normalise_key(k): v for k, v in value.items()}
    for key in rundir.PER_RUN:  # decided by the sweep for each run, never by the file
        if key in normalised:
            raise ConfigError(f"{where}: key '{key}' is set by the sweep for each run; remove it")
    build_config(TrainConfig, normalised, where)  # unknown keys and wrong types, named
    return normalised


def grid_points(grid: Any, source: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every grid point (union of the sub-grids' cartesian products) and the grid keys in order."""
    subgrids = grid if isinstance(grid, list) else [grid]
    points: list[dict[str, Any]] = []
    keys: list[str] = []
    for index, sub in enumerate(subgrids):
        where = f"{source}: grid" + (f"[{index}]" if isinstance(grid, list) else "")
        if not isinstance(sub, dict):
            raise ConfigError(f"{where}: expected a mapping of option: [values], got {type(sub).__name__}")
        sub = {_normalise_key(k): v for k, v in sub.items()}
        for key, values in sub.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: key '{key}': expected a non-empty list of values")
            for value in values:
                _check_mapping({key: value}, where)
            if key not in keys:
                keys.append(key)
        points += [dict(zip(sub, combo)) for combo in itertools.product(*sub.values())]
    return points, keys


def _seeds(value: Any, source: str) -> list[int] | None:
    if value is None:
        return None
    integers = isinstance(value, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    if not integers or not value:
        raise ConfigError(f"{source}: seeds: expected a non-empty list of integers")
    if len(set(value)) != len(value):
        raise ConfigError(f"{source}: seeds: repeated seed in {value}")
    return list(value)


def plan_from_spec(spec: dict[str, Any], source: str) -> SweepPlan:
    """Validate a sweep mapping and expand it into named, fully resolved runs (creates nothing)."""
    if "select" in spec:  # stage 1 and 2 are planned by experiments/select.py, never as one grid
        raise ConfigError(f"{source}: select: a select/confirm sweep runs with `oloraplus sweep`, in two stages")
    unknown = [k for k in spec if k not in (*SWEEP_KEYS, "select")]
    if unknown:
        raise ConfigError(f"{source}: unknown top-level key '{unknown[0]}' (expected {', '.join(SWEEP_KEYS)})")
    base = _check_mapping(spec.get("base") or {}, f"{source}: base")
    points, grid_keys = grid_points(spec.get("grid") or {}, source)
    seeds = _seeds(spec.get("seeds"), source)
    if seeds is not None:
        if "seed" in grid_keys or "seed" in base:
            raise ConfigError(f"{source}: 'seed' is set in base/grid and by 'seeds'; keep only 'seeds'")
        points = [{**point, "seed": seed} for point in points for seed in seeds]
        grid_keys.append("seed")
    baseline_map = _check_mapping(spec.get("baseline") or DEFAULT_BASELINE, f"{source}: baseline")
    baseline_cfg = build_config(TrainConfig, baseline_map, f"{source}: baseline")
    baseline = {key: getattr(baseline_cfg, key) for key in baseline_map}

    configs: list[TrainConfig] = []
    for point in points:
        cfg = build_config(TrainConfig, {**base, **point}, f"{source}: grid")
        if all(rundir.comparable(cfg) != rundir.comparable(seen) for seen in configs):  # sub-grids may overlap
            configs.append(cfg)
    auto = [c.eval_examples() for c in configs if not c.eval_size]
    if auto:  # an auto eval size grows with --max-steps: one size for the sweep, so every run scores the same split
        configs = [c if c.eval_size else dataclasses.replace(c, eval_size=max(auto)) for c in configs]
    varying = tuple(k for k in grid_keys if len({json.dumps(getattr(c, k)) for c in configs}) > 1)
    runs: list[PlannedRun] = []
    for cfg in configs:
        params = {key: getattr(cfg, key) for key in varying}
        name = run_name(params)
        try:
            cfg.validate()
        except ConfigError as exc:
            raise ConfigError(f"{source}: run {name}: {exc}") from None
        runs.append(PlannedRun(name=name, params=params, config=cfg))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"{source}: two different runs would both be named '{dup}'")
    return SweepPlan(source=source, base=base, varying=varying, runs=tuple(runs), baseline=baseline)


def plan_sweep(path: str | Path) -> SweepPlan:
    """Read and validate SWEEP.yaml; every error names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: sweep file not found")
    return plan_from_spec(read_yaml(path), str(path))


def run_path(output: str | Path, run: PlannedRun) -> Path:
    """DIR/runs/<name>, checked to stay inside DIR/runs whatever the name."""
    runs_dir = Path(output) / RUNS_DIR
    target = runs_dir / run.name
    if target.resolve().parent != runs_dir.resolve():
        raise ConfigError(f"sweep: run name {run.name!r} would leave {runs_dir}")
    return target


def run_config(output: str | Path, run: PlannedRun) -> TrainConfig:
    return dataclasses.replace(run.config, output=str(run_path(output, run)), overwrite=True, resume=False)


def adopt_renamed_runs(plan: SweepPlan, output: str | Path) -> list[tuple[str, str]]:
    """Give finished runs whose name the plan no longer uses the planned name of the same config.

    A run's name lists the options that vary, so extending the grid with a new option (e.g. a second
    lr) renames every run; a finished run with exactly the planned config is moved, not retrained.
    """
    runs_dir = Path(output) / RUNS_DIR
    planned = {run.name for run in plan.runs}
    candidates = sorted(runs_dir.glob("*")) if runs_dir.is_dir() else []
    orphans = {d: rundir.recorded_config(d) for d in candidates if d.is_dir() and d.name not in planned
               and not d.name.endswith(".partial") and rundir.has_metrics(d)}  # each config read once
    moved = []
    for run in plan.runs:
        target = run_path(output, run)
        if target.exists() or target.with_name(target.name + ".partial").exists():
            continue
        match = next((d for d, config in orphans.items() if not rundir.config_differences(run.config, config)), None)
        if match is not None:
            match.rename(target)
            del orphans[match]
            moved.append((match.name, run.name))
            print(f"  {match.name} -> {run.name} (same config, finished earlier)", file=sys.stderr, flush=True)
    return moved


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return value


def write_results(plan: SweepPlan, output: str | Path) -> Path:
    """DIR/results.csv: one row per finished run, every varying and base parameter and every metric."""
    finished = [r for r in plan.runs if rundir.has_metrics(run_path(output, r))]
    params = [*plan.varying, *(k for k in plan.base if k not in plan.varying)]
    rows, metric_keys = [], []
    for run in finished:
        metrics = rundir.read_metrics(run_path(output, run))
        metric_keys += [k for k in metrics if k not in metric_keys and k not in params]
        rows.append({"run": run.name, **{k: getattr(run.config, k) for k in params}, **metrics})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["run", *params, *metric_keys], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in writer.fieldnames})
    path = Path(output) / RESULTS_FILE
    atomic_write_text(path, buffer.getvalue())
    return path


def _write_plan(plan: SweepPlan, output: Path, command: str | None, executor: str = "local",
                where: dict[str, dict[str, str]] | None = None) -> None:
    """sweep.json: the plan, the executor and where each finished run trained (host, GPU)."""
    where = where or {}
    atomic_write_json(output / PLAN_FILE, {
        "source": plan.source, "command": command, "base": plan.base, "varying": list(plan.varying),
        "baseline": plan.baseline, "executor": executor,
        "runs": [{"name": r.name, "params": r.params, **({"ran_on": where[r.name]} if r.name in where else {})}
                 for r in plan.runs],
    })


def _recorded_where(output: Path) -> dict[str, dict[str, str]]:
    """Where the runs of an earlier invocation trained, from its sweep.json (kept for runs it finished)."""
    try:
        runs = json.loads((output / PLAN_FILE).read_text(encoding="utf-8")).get("runs", [])
    except (OSError, ValueError, AttributeError):
        return {}
    return {r["name"]: r["ran_on"] for r in runs if isinstance(r, dict) and isinstance(r.get("ran_on"), dict)}


def _default_train(cfg: TrainConfig) -> Any:
    from oloraplus.train.recipe import train  # heavy imports only when something trains

    return train(cfg)


def train_run(output: str, run: PlannedRun, train_fn: TrainFn | None) -> dict[str, Any] | None:
    """One run, where a worker picked it up: trains it, or records it as diverged (a result, not a failure)."""
    try:
        train_once(run_config(output, run), train_fn or _default_train)
    except NonFiniteLossError as exc:
        record_divergence(output, run, exc)
        return {"diverged_step": exc.step, "diverged_reason": exc.what}
    return None


def execute(
    plan: SweepPlan, output: str | Path, *, train_fn: TrainFn | None = None, report: bool = True,
    command: str | None = None, executor: ExecutorConfig | None = None,
) -> Path:
    """Train every unfinished run of `plan` under `output`, refreshing results.csv after each one."""
    executor = executor or ExecutorConfig()
    output = rundir.check_output_dir(output, what="sweep", own=(PLAN_FILE, RESULTS_FILE, LOCK_FILE))
    with sweep_lock(output):
        adopt_renamed_runs(plan, output)
        # refuse a directory holding other runs before training
        done = [rundir.is_finished(run_path(output, run), run.config, what="sweep") for run in plan.runs]
        skipped = {run.name for run, finished in zip(plan.runs, done) if finished}
        where = {name: ran_on for name, ran_on in _recorded_where(output).items() if name in skipped}
        _write_plan(plan, output, command, executor.executor, where)
        jobs = []
        for index, (run, finished) in enumerate(zip(plan.runs, done), start=1):
            label = f"[{index}/{len(plan.runs)}] {describe(run.params)}"
            if finished:
                print(f"{label}  (finished earlier, skipped)", file=sys.stderr, flush=True)
            else:
                jobs.append(Job(run.name, label, functools.partial(train_run, str(output), run, train_fn)))

        def recorded(job: Job, outcome: Outcome) -> str:
            where[job.name] = outcome.where
            write_results(plan, output)
            _write_plan(plan, output, command, executor.executor, where)
            diverged = outcome.value
            return (f": diverged at step {diverged['diverged_step']} ({diverged['diverged_reason']}); kept as a "
                    "result, going on") if diverged else ""

        run_jobs(jobs, executor, output / EXECUTOR_DIR, on_end=recorded)
    results = write_results(plan, output)  # every run has finished: a driver after this one would write the same
    if report:
        from oloraplus.experiments.report import write_report

        write_report(output)
    return results


def record_divergence(output: str | Path, run: PlannedRun, exc: NonFiniteLossError) -> Path:
    """Finish a diverged run as DIR/runs/<name> (config, log, failure.json, metrics.json with no eval metric).

    A rerun then skips it, results.csv lists it and the report counts it as diverged.
    """
    cfg = run_config(output, run)
    paths = rundir.paths(cfg.output)
    paths.work.mkdir(parents=True, exist_ok=True)
    if not rundir.is_run(paths.work):  # the run stopped before writing its config
        rundir.write_config(paths.work, cfg)
    record = {**exc.record(), "last_checkpoint": None}  # the sweep removes its checkpoints below
    atomic_write_json(paths.work / rundir.FAILURE_FILE, record)
    rundir.write_metrics(paths.work, {"diverged": True, "diverged_step": exc.step, "diverged_reason": exc.what})
    rundir.finish(paths)
    return paths.final


def run_sweep(path: str | Path, output: str | Path, *, train_fn: TrainFn | None = None,
              command: str | None = None, executor: ExecutorConfig | None = None) -> Path:
    """Plan SWEEP.yaml, train what is missing under `output`, write results.csv and the report."""
    return execute(plan_sweep(path), output, train_fn=train_fn, command=command, executor=executor)

"""Finished runs of a sweep, read back from their run directories and grouped into arms.

An arm is one row of the paper's table: a method and λ (plus any other option that varies),
trained with one or more seeds. Runs are compared within a model, never across models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from oloraplus import rundir
from oloraplus.config import METHODS, applies_to
from oloraplus.experiments.sweepdir import DEFAULT_BASELINE, PLAN_FILE, RUNS_DIR, format_value

# Seeds are pooled, models split; the rest change how a run executes, not what it learns (the
# response-only loss is the same loss, packing the same batches; a generation batch only pads differently), so they never
# split an arm, also when runs recorded before the option existed lack it.
NOT_ARM_KEYS = (*rundir.PER_RUN, "seed", "model", "response_only_loss", "packing",
                "diagnostics_steps", "generate_batch_size", "logging_steps", "trust_remote_code")


@dataclass
class Run:
    name: str
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]

    @property
    def diverged(self) -> bool:
        """Stopped by a NaN/inf loss or weight (the sweep keeps it; it has no eval metrics)."""
        return bool(self.metrics.get("diverged"))

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @cached_property
    def log(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.path / rundir.LOG_FILE)

    @cached_property
    def generations(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.path / rundir.GENERATIONS_FILE)

    def eval_curve(self) -> list[tuple[int, float]]:
        return sorted((int(r["step"]), float(r["eval_loss"])) for r in self.log
                      if "eval_loss" in r and r.get("step") is not None)

    def train_curve(self) -> list[tuple[int, float]]:
        return [(int(r["step"]), float(r["loss"])) for r in self.log if r.get("loss") is not None]

    def final_diagnostics(self) -> dict[str, float]:
        """The last log record that carries `diag_` keys (the adapter at the end of training)."""
        for record in reversed(self.log):
            diag = {k: v for k, v in record.items() if k.startswith("diag_") and isinstance(v, (int, float))}
            if diag:
                return {k: float(v) for k, v in diag.items()}
        return {}


@dataclass
class Arm:
    model: str
    params: dict[str, Any]  # method, ratio and every other option that varies, except seed and model
    runs: list[Run] = field(default_factory=list)

    @property
    def label(self) -> str:
        """'olora λ=0.25' (+ 'rank=8' ... when other options vary): a row of the table."""
        return " ".join([f"{self.method} λ={format_value(self.params['ratio'])}", *self._extras()])

    @property
    def line_label(self) -> str:
        """The label without λ: one line in a plot against λ."""
        return " ".join([self.method, *self._extras()])

    def _extras(self) -> list[str]:
        return [f"{k}={format_value(v)}" for k, v in self.params.items()
                if k not in ("method", "ratio") and applies_to(k, self.method)]

    @property
    def method(self) -> str:
        return str(self.params["method"])

    @property
    def ratio(self) -> float:
        return float(self.params["ratio"])

    def by_seed(self) -> dict[int, Run]:
        return {run.seed: run for run in self.runs}

    def values(self, metric: str) -> list[float]:
        return [float(r.metrics[metric]) for r in self.runs if isinstance(r.metrics.get(metric), (int, float))]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash; the complete ones still count
        if isinstance(record, dict):
            records.append(record)
    return records


def load_run(path: Path) -> Run | None:
    """A finished run (metrics.json and config.yaml present), or None."""
    config = rundir.recorded_config(path)
    if config is None or not rundir.has_metrics(path):
        return None
    try:
        metrics = rundir.read_metrics(path)
    except (OSError, json.JSONDecodeError):
        return None
    return Run(name=path.name, path=path, config=config, metrics=metrics)


def read_plan(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def find_runs(directory: str | Path) -> list[Run]:
    """The sweep's finished runs in plan order (sweep.json), else every finished run under DIR/runs or DIR."""
    directory = Path(directory)
    plan = read_plan(directory)
    if plan.get("runs"):
        candidates = [directory / RUNS_DIR / entry["name"] for entry in plan["runs"]]
    else:
        candidates = sorted((directory / RUNS_DIR).glob("*")) + sorted(directory.glob("*"))
    runs = [load_run(path) for path in candidates if path.is_dir() and not path.name.endswith(".partial")]
    return [run for run in runs if run is not None]


def baseline_selector(directory: str | Path) -> dict[str, Any]:
    return read_plan(Path(directory)).get("baseline") or dict(DEFAULT_BASELINE)


def varying_keys(runs: Sequence[Run]) -> list[str]:
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.config if k not in keys]
    return [k for k in keys if len({json.dumps(r.config.get(k), sort_keys=True) for r in runs}) > 1]


def _arm_order(arm: Arm) -> tuple:
    method_rank = METHODS.index(arm.method) if arm.method in METHODS else len(METHODS)
    rest = json.dumps({k: v for k, v in arm.params.items() if k not in ("method", "ratio")}, sort_keys=True)
    return (method_rank, arm.method, rest, arm.ratio)


def group_arms(runs: Sequence[Run]) -> dict[str, list[Arm]]:
    """model -> its arms (ordered by method, other options, λ), each holding its runs sorted by seed."""
    extra = [k for k in varying_keys(runs) if k not in (*NOT_ARM_KEYS, "method", "ratio")]
    models: dict[str, dict[str, Arm]] = {}
    for run in runs:
        params = {"method": run.config.get("method"), "ratio": run.config.get("ratio"),
                  **{k: run.config.get(k) for k in extra}}
        model = str(run.config.get("model"))
        key = json.dumps(params, sort_keys=True)
        models.setdefault(model, {}).setdefault(key, Arm(model=model, params=params)).runs.append(run)
    grouped = {}
    for model, arms in models.items():
        for arm in arms.values():
            arm.runs.sort(key=lambda r: r.seed)
        grouped[model] = sorted(arms.values(), key=_arm_order)
    return grouped


def matches(arm: Arm, selector: dict[str, Any]) -> bool:
    config = arm.runs[0].config
    return all(config.get(k) == v for k, v in selector.items())


def find_baseline(arms: Sequence[Arm], selector: dict[str, Any]) -> Arm | None:
    """The first arm whose config matches every key of the selector (e.g. method=olora, ratio=1)."""
    return next((arm for arm in arms if matches(arm, selector)), None)

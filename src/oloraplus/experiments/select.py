"""A sweep that chooses on validation and reports on test: `select:` in SWEEP.yaml.

    base:     {..., val_size: 64, split_seed: 0}   a validation split, and one split for every seed
    grid:     {method: [olora, lora], lr: [1e-4, 3e-4], ratio: [0.25, 1, 4]}
    select:   {by: eval_loss, over: [lr, ratio], seeds: [1]}
    seeds:    [11, 12, 13, 14, 15]                 confirmation seeds: fresh, none of the selection seeds
    baseline: {method: olora}

Stage 1 (DIR/select/, a sweep): every grid cell with the selection seeds. For each *arm* (a combination of
the grid keys not in `over`, here each method) the cell with the lowest mean validation loss
(`val_eval_loss`) over the selection seeds is chosen; a diverged or missing run counts as the worst.
Stage 2 (DIR/confirm/, a sweep with its report): each arm's chosen cell with the confirmation seeds, scored
on the test split. So the numbers reported never chose anything, and every arm had the same chance to be
lucky. `also: [{ratio: 1}]` also confirms each arm's best cell among those with λ = 1 (its own rate tuned
at plain AdamW). `b_rate_control: true` also confirms, for each chosen cell with λ ≠ 1, the same arm at λ = 1 with
η = the chosen cell's η_B = λη: "does λ help, or only B's learning rate?". DIR/selection.md records what was
chosen, the validation loss of every cell (a heat map when `over` has two keys), and cells chosen on the
edge of the grid. `extend: N` pushes the grid past such an edge by itself: the chosen cell moved one step further
along that key (the grid's own step: ×3 after 1e-3, 3e-3; ×4 after 4, 16), trained, and chosen again, at most N
steps past each end of the original grid, before stage 2 starts. Without it (N = 0) extend the grid by hand and
rerun: finished runs are reused.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from oloraplus import rundir
from oloraplus.errors import ConfigError
from oloraplus.experiments.executor_config import ExecutorConfig
from oloraplus.experiments.sweep import (
    PlannedRun, SweepPlan, TrainFn, describe, execute, grid_points, plan_from_spec, run_path,
)
from oloraplus.experiments.sweepdir import format_value
from oloraplus.io import atomic_write_json, atomic_write_text
from oloraplus.markdown import markdown_table

SELECT_KEYS = ("by", "over", "seeds", "b_rate_control", "also", "extend")
SELECTABLE = ("eval_loss",)  # the metrics measured on the validation split
SELECT_DIR, CONFIRM_DIR = "select", "confirm"
SELECTION_FILE, SELECTION_JSON = "selection.md", "selection.json"


@dataclass(frozen=True)
class Selection:
    by: str
    over: tuple[str, ...]
    seeds: tuple[int, ...]
    b_rate_control: bool
    also: tuple[dict[str, Any], ...] = ()  # each: also confirm the arm's best cell with these values
    extend: int = 0  # steps a chosen cell on the grid's edge may push the grid past each end of each key


@dataclass(frozen=True)
class SelectPlan:
    source: str
    spec: dict[str, Any]  # the sweep mapping without `select`
    selection: Selection
    confirm_seeds: tuple[int, ...]
    select: SweepPlan  # stage 1: every cell × the selection seeds
    arm_keys: tuple[str, ...]  # grid keys that name an arm (not in `over`, not seed)
    grid_keys: tuple[str, ...] = ()  # every grid key, varying or not (a confirmed point sets them all)


@dataclass(frozen=True)
class Choice:
    arm: dict[str, Any]  # the arm's own values (e.g. method)
    cell: dict[str, Any]  # the chosen values of the `over` keys
    loss: float  # mean validation loss over the selection seeds (inf: diverged or missing)
    edges: tuple[str, ...]  # `over` keys whose chosen value is the smallest or largest of the grid
    among: dict[str, Any] | None = None  # None: the best of every cell; else the best of the cells with these values


def _seed_list(value: Any, where: str) -> tuple[int, ...]:
    ok = isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    if not ok or len(set(value)) != len(value):
        raise ConfigError(f"{where}: expected a non-empty list of different integers, got {value!r}")
    return tuple(value)


def parse_selection(spec: dict[str, Any], source: str) -> Selection:
    raw = spec["select"]
    where = f"{source}: select"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with by, over, seeds, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in SELECT_KEYS]
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (expected {', '.join(SELECT_KEYS)})")
    by = raw.get("by", "eval_loss")
    if by not in SELECTABLE:
        raise ConfigError(f"{where}: by: '{by}' is not measured on the validation split (choose from "
                          f"{', '.join(SELECTABLE)})")
    over = raw.get("over")
    if not isinstance(over, list) or not over or not all(isinstance(k, str) for k in over):
        raise ConfigError(f"{where}: over: expected a non-empty list of grid keys, e.g. [lr, ratio]")
    control = raw.get("b_rate_control", False)
    if not isinstance(control, bool):
        raise ConfigError(f"{where}: b_rate_control: expected true/false, got {control!r}")
    also = raw.get("also") or []
    if not isinstance(also, list) or not all(isinstance(a, dict) and a for a in also):
        raise ConfigError(f"{where}: also: expected a list of mappings of over-key: value, e.g. [{{ratio: 1}}]")
    over = tuple(k.replace("-", "_") for k in over)
    also = tuple({k.replace("-", "_"): v for k, v in a.items()} for a in also)
    for a in also:
        stray = [k for k in a if k not in over]
        if stray:
            raise ConfigError(f"{where}: also: '{stray[0]}' is not one of over ({', '.join(over)})")
    extend = raw.get("extend", 0)
    if not isinstance(extend, int) or isinstance(extend, bool) or extend < 0:
        raise ConfigError(f"{where}: extend: expected how many steps past the grid's edge (an integer >= 0), "
                          f"got {extend!r}")
    return Selection(by, over, _seed_list(raw.get("seeds"), f"{where}: seeds"), control, also, extend)


def plan_select(spec: dict[str, Any], source: str) -> SelectPlan:
    """Validate a sweep mapping with `select:` and plan its first stage; every error names the file and key."""
    selection = parse_selection(spec, source)
    rest = {k: v for k, v in spec.items() if k != "select"}
    if rest.get("seeds") is None:
        raise ConfigError(f"{source}: seeds: give the confirmation seeds (fresh: none of select.seeds)")
    confirm = _seed_list(rest["seeds"], f"{source}: seeds")
    reused = sorted(set(confirm) & set(selection.seeds))
    if reused:
        raise ConfigError(f"{source}: seeds: {', '.join(map(str, reused))} also in select.seeds; the confirmation "
                          "seeds must be fresh, or the run that chose a setting also reports it")
    stage = plan_from_spec({**rest, "seeds": list(selection.seeds)}, source)
    cfg = stage.runs[0].config
    if cfg.val_size < 1:
        raise ConfigError(f"{source}: select: needs base.val_size >= 1 (settings are chosen on the validation "
                          "split, never on the test split that reports them)")
    if cfg.split_seed < 0:
        raise ConfigError(f"{source}: select: needs base.split_seed (>= 0), so the selection and confirmation "
                          "seeds share one train/validation/test split")
    grid_keys = [k for k in stage.varying if k != "seed"]
    missing = [k for k in selection.over if k not in grid_keys]
    if missing:
        raise ConfigError(f"{source}: select: over: '{missing[0]}' is not a grid key with more than one value "
                          f"(grid keys that vary: {', '.join(grid_keys) or 'none'})")
    if selection.b_rate_control and not {"lr", "ratio"} <= set(selection.over):
        raise ConfigError(f"{source}: select: b_rate_control needs lr and ratio in over")
    arm_keys = tuple(k for k in grid_keys if k not in selection.over)
    every_key = tuple(k for k in grid_points(rest.get("grid") or {}, source)[1] if k != "seed")
    return SelectPlan(source, rest, selection, confirm, stage, arm_keys, every_key)


def _arm_of(params: dict[str, Any], arm_keys: Sequence[str]) -> tuple:
    return tuple((k, params[k]) for k in arm_keys)


def _validation_loss(output: Path, run: PlannedRun, by: str) -> float:
    path = run_path(output, run)
    value = rundir.read_metrics(path).get(rundir.VALIDATION_PREFIX + by) if rundir.has_metrics(path) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.inf


def cell_losses(plan: SelectPlan, output: Path) -> dict[tuple, dict[tuple, float]]:
    """arm -> cell -> mean validation loss over the selection seeds (inf if any seed diverged or is missing)."""
    losses: dict[tuple, dict[tuple, list[float]]] = {}
    for run in plan.select.runs:
        arm = _arm_of(run.params, plan.arm_keys)
        cell = tuple((k, run.params[k]) for k in plan.selection.over)
        value = _validation_loss(output, run, plan.selection.by)
        losses.setdefault(arm, {}).setdefault(cell, []).append(value)
    return {arm: {cell: statistics.fmean(v) if all(map(math.isfinite, v)) else math.inf for cell, v in cells.items()}
            for arm, cells in losses.items()}


def _matches(cell: tuple, among: dict[str, Any]) -> bool:
    values = dict(cell)
    return all(float(values[k]) == float(v) if isinstance(v, (int, float)) else values[k] == v
               for k, v in among.items())


def choose(plan: SelectPlan, output: Path) -> list[Choice]:
    """Each arm's cell with the lowest mean validation loss (ties: the first in grid order), then for each
    `also` mapping the arm's best cell among those with its values (e.g. the best lr at λ = 1)."""
    choices = []
    for arm, cells in cell_losses(plan, output).items():
        for among in (None, *plan.selection.also):
            pool = {c: v for c, v in cells.items() if among is None or _matches(c, among)}
            if not pool:
                continue
            cell, loss = min(pool.items(), key=lambda item: item[1])  # min keeps the first of equal losses
            edges = []
            for index, key in enumerate(plan.selection.over):
                values = sorted({c[index][1] for c in pool if isinstance(c[index][1], (int, float))})
                if len(values) > 1 and cell[index][1] in (values[0], values[-1]):
                    edges.append(key)
            choices.append(Choice(dict(arm), dict(cell), loss, tuple(edges), among))
    return choices


def grid_point(plan: SelectPlan, arm: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    """Every grid key's value for the stage-1 cell (arm, cell): a key with one value in the grid does not vary,
    so it is in neither, yet a point planned without it would fall back to the default (e.g. method: olora)."""
    wanted = {**arm, **cell}
    run = next(r for r in plan.select.runs if all(r.params.get(k) == v for k, v in wanted.items()))
    return {**{k: getattr(run.config, k) for k in plan.grid_keys}, **wanted}


def _step(values: Sequence[float], chosen: float) -> float | None:
    """The next value past `chosen`, an end of the sorted `values`, at the grid's own last step: geometric when
    every value is positive (1e-3 → 3e-3 → 9e-3), else arithmetic; rounded to 3 significant digits."""
    inner = values[1] if chosen == values[0] else values[-2]
    if all(v > 0 for v in values):
        following = chosen * (chosen / inner)
    else:
        following = chosen + (chosen - inner)
    following = float(f"{following:.3g}")
    return following if following not in values else None


def extensions(plan: SelectPlan, original: SweepPlan, choices: Sequence[Choice]) -> list[dict[str, Any]]:
    """Grid points that push each choice on the grid's edge one step past it, while fewer than `extend` steps
    lie past that end of the original grid (issue 22: "extended wherever an arm's best cell lies on the grid's
    edge"); empty when no choice is on an edge or every edge has used its steps."""
    planned = [{k: v for k, v in r.params.items() if k != "seed"} for r in plan.select.runs]
    points: list[dict[str, Any]] = []
    for choice in choices:
        if not math.isfinite(choice.loss):
            continue  # every cell diverged: no direction to extend in
        for key in choice.edges:
            first = [r.params[key] for r in original.runs]
            low, high = min(first), max(first)
            values = sorted({c[key] for c in _pool(plan, choice)})
            chosen = choice.cell[key]
            past = [v for v in values if (v < low if chosen == values[0] else v > high)]
            if len(past) >= plan.selection.extend:
                continue
            following = _step(values, chosen)
            if following is None:
                continue
            point = {**grid_point(plan, choice.arm, choice.cell), key: following}
            varying = {k: point[k] for k in (*plan.arm_keys, *plan.selection.over)}
            if varying not in planned and point not in points:
                points.append(point)
    return points


def _pool(plan: SelectPlan, choice: Choice) -> list[dict[str, Any]]:
    """The `over` values of the cells the choice was made among (its arm's; those matching `among`)."""
    arm = tuple(choice.arm.items())
    cells = [{k: r.params[k] for k in plan.selection.over} for r in plan.select.runs
             if _arm_of(r.params, plan.arm_keys) == arm]
    return [c for c in cells if choice.among is None or _matches(tuple(c.items()), choice.among)]


def extended(plan: SelectPlan, points: Sequence[dict[str, Any]]) -> SelectPlan:
    """`plan` with stage 1 grown by `points` (the grid becomes the union of the old grid and one sub-grid per
    point; the runs already planned keep their names, so finished ones are reused)."""
    grid = plan.spec.get("grid") or {}
    grid = [*(grid if isinstance(grid, list) else [grid]), *({k: [v] for k, v in p.items()} for p in points)]
    spec = {**plan.spec, "grid": grid}
    stage = plan_from_spec({**spec, "seeds": list(plan.selection.seeds)}, plan.source)
    return dataclasses.replace(plan, spec=spec, select=stage)


def confirm_spec(plan: SelectPlan, choices: Sequence[Choice]) -> dict[str, Any]:
    """The stage-2 sweep: each chosen cell (plus its B-rate control) × the confirmation seeds."""
    points: list[dict[str, Any]] = []
    for choice in choices:
        point = grid_point(plan, choice.arm, choice.cell)
        points.append(point)
        if plan.selection.b_rate_control and choice.among is None and float(point["ratio"]) != 1.0:
            points.append({**point, "ratio": 1.0, "lr": float(point["lr"]) * float(point["ratio"])})  # η = η_B
    unique = [p for i, p in enumerate(points) if p not in points[:i]]
    return {**plan.spec, "grid": [{k: [v] for k, v in p.items()} for p in unique],
            "seeds": list(plan.confirm_seeds), "baseline": confirm_baseline(plan, choices)}


def confirm_baseline(plan: SelectPlan, choices: Sequence[Choice]) -> dict[str, Any]:
    """The baseline made unambiguous: {method: olora, ratio: 1} could match both OLoRA's tuned λ = 1 cell and a
    B-rate control, so it takes the `over` values of the first choice it matches (with `also: [{ratio: 1}]`,
    the arm's own rate tuned at λ = 1)."""
    baseline = dict(plan.select.baseline)
    for choice in choices:
        point = {**choice.arm, **choice.cell}
        if _matches(tuple(point.items()), {k: v for k, v in baseline.items() if k in point}):
            return {**baseline, **choice.cell}
    return baseline


def describe_plan(plan: SelectPlan, output: Path | None = None) -> list[str]:
    """What `sweep --dry-run` prints: every stage-1 run, and what stage 2 will run once they are done. With an
    existing sweep directory `output`, also how far stage 1 is: each finished run's validation loss, and each
    arm's best cell so far (a long experiment is checked without touching it)."""
    s = plan.selection
    done = output is not None and (output / SELECT_DIR).is_dir()
    arms = sorted({_arm_of(r.params, plan.arm_keys) for r in plan.select.runs}, key=str)
    cells = len({tuple(r.params[k] for k in s.over) for r in plan.select.runs})
    lines = [f"stage 1, {SELECT_DIR}/: {len(plan.select.runs)} runs = {len(arms)} arm(s) × {cells} cells of "
             f"{' × '.join(s.over)} × {len(s.seeds)} selection seed(s) {list(s.seeds)}; chosen by the mean "
             f"validation {s.by} (val_size {plan.select.runs[0].config.val_size}, split_seed "
             f"{plan.select.runs[0].config.split_seed})"]
    progress = [_progress(output / SELECT_DIR, r, s.by) if done else "" for r in plan.select.runs]
    lines += [f"  {r.name}{mark}" for r, mark in zip(plan.select.runs, progress)]
    if s.extend:
        lines.append(f"  (+ up to {s.extend} step(s) past each end of {' and '.join(s.over)} for a cell chosen on "
                     "the grid's edge)")
    if done:
        lines.append(f"  {sum(map(bool, progress))} of {len(plan.select.runs)} finished in {output / SELECT_DIR}")
        lines += [f"  best so far, {describe(c.arm) or 'all runs'}: {describe(c.cell)} (validation {c.loss:.4f})"
                  for c in choose(plan, output / SELECT_DIR) if c.among is None and math.isfinite(c.loss)]
    per_arm = 1 + len(s.also) + int(s.b_rate_control)
    extra = "".join(f" (+ its best cell with {describe(a)})" for a in s.also)
    extra += " (+ its λ = 1 control at η = η_B when λ ≠ 1)" if s.b_rate_control else ""
    lines.append(f"stage 2, {CONFIRM_DIR}/: each arm's chosen cell{extra} × {len(plan.confirm_seeds)} fresh seeds "
                 f"{list(plan.confirm_seeds)} on the test split: {len(arms) * len(plan.confirm_seeds)}–"
                 f"{len(arms) * per_arm * len(plan.confirm_seeds)} runs (fewer when choices coincide)")
    lines += [f"  arm {describe(dict(arm))}" for arm in arms]
    return lines


def _progress(output: Path, run: PlannedRun, by: str) -> str:
    """'  (validation 1.5687)', '  (diverged)' or '' (not finished) for one stage-1 run."""
    if not rundir.has_metrics(run_path(output, run)):
        return ""
    loss = _validation_loss(output, run, by)
    return f"  (validation {loss:.4f})" if math.isfinite(loss) else "  (diverged)"


def write_selection(plan: SelectPlan, output: Path, choices: Sequence[Choice]) -> Path:
    """DIR/selection.md and selection.json: every cell's validation loss, the choices, and grid-edge warnings."""
    losses = cell_losses(plan, output / SELECT_DIR)
    s = plan.selection
    lines = ["# Selection on the validation split", "",
             f"Each arm's cell of {' × '.join(s.over)} with the lowest mean validation {s.by} over the selection "
             f"seeds {', '.join(map(str, s.seeds))} (`val_{s.by}`: the validation split, never the test split). "
             f"The chosen cells are confirmed in `{CONFIRM_DIR}/` with the fresh seeds "
             f"{', '.join(map(str, plan.confirm_seeds))}, on the test split. '∞': diverged or missing.", ""]
    for choice in choices:
        arm = tuple(choice.arm.items())
        name = describe(choice.arm) if choice.arm else "all runs"
        among = f" among the cells with {describe(choice.among)}" if choice.among else ""
        lines += [f"## {name}{among}", "",
                  f"Chosen: {describe(choice.cell)} (validation {s.by} {choice.loss:.4f}).", ""]
        if choice.edges:
            lines += [f"**On the edge of the grid** in {', '.join(choice.edges)}: extend the grid past it and rerun "
                      "the same command (finished runs are reused).", ""]
        if choice.among:
            continue  # the arm's table and heat map are under its overall choice
        rows = [[describe(dict(cell)), "∞" if not math.isfinite(v) else f"{v:.4f}"]
                for cell, v in losses[arm].items()]
        lines += [markdown_table(["cell", f"validation {s.by}"], rows), ""]
        if len(s.over) == 2:
            from oloraplus.experiments import plots  # matplotlib only when a selection is written

            image = f"selection-{'_'.join(f'{k}-{v}' for k, v in choice.arm.items()) or 'all'}.png"
            plots.plot_heatmap(losses[arm], s.over, output / image, f"{name}: validation {s.by}")
            lines += [f"![validation {s.by}]({image})", ""]
    path = output / SELECTION_FILE
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    atomic_write_json(output / SELECTION_JSON, {
        "by": s.by, "over": list(s.over), "selection_seeds": list(s.seeds), "confirm_seeds": list(plan.confirm_seeds),
        "choices": [{"arm": c.arm, "among": c.among, "cell": c.cell,
                     "validation_loss": c.loss if math.isfinite(c.loss) else None, "edges": list(c.edges)}
                    for c in choices],
    })
    return path


def run_select_sweep(plan: SelectPlan, output: str | Path, *, train_fn: TrainFn | None = None,
                     command: str | None = None, executor: ExecutorConfig | None = None) -> Path:
    """Stage 1, the choice, stage 2 and its report; rerunning resumes (finished runs are skipped)."""
    output = rundir.check_output_dir(output, what="select/confirm sweep", own=(SELECTION_JSON, SELECT_DIR))
    print(f"stage 1: selection on validation -> {output / SELECT_DIR}", file=sys.stderr, flush=True)
    original = plan.select
    while True:
        execute(plan.select, output / SELECT_DIR, train_fn=train_fn, report=False, command=command,
                executor=executor)
        choices = choose(plan, output / SELECT_DIR)
        grow = extensions(plan, original, choices)
        if not grow:
            break
        print(f"stage 1: {len(grow)} chosen cell(s) on the grid's edge; extending past it: "
              + "; ".join(describe(p) for p in grow), file=sys.stderr, flush=True)
        plan = extended(plan, grow)
    write_selection(plan, output, choices)
    for choice in choices:
        print(f"  chose {describe(choice.arm)}: {describe(choice.cell)} (validation {choice.loss:.4f})"
              + (f"; on the grid's edge in {', '.join(choice.edges)}" if choice.edges else ""),
              file=sys.stderr, flush=True)
    confirm = plan_from_spec(confirm_spec(plan, choices), f"{plan.source} (confirm)")
    print(f"stage 2: confirmation on test -> {output / CONFIRM_DIR}", file=sys.stderr, flush=True)
    results = execute(confirm, output / CONFIRM_DIR, train_fn=train_fn, report=False, command=command,
                      executor=executor)
    from oloraplus.experiments.report import write_report

    write_report(output / CONFIRM_DIR, note=(
        f"Settings chosen on the validation split with seeds {', '.join(map(str, plan.selection.seeds))} "
        f"(`../{SELECTION_FILE}`); confirmed here with the fresh seeds {', '.join(map(str, plan.confirm_seeds))}."))
    return results


def is_select_spec(spec: dict[str, Any]) -> bool:
    return isinstance(spec, dict) and "select" in spec

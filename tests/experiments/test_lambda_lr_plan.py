"""results/lambda_lr_smollm2/sweep.yaml plans the experiment issue 22 asks for (no training: a stand-in trainer)."""

from __future__ import annotations

import importlib.util
import json
import itertools
import math
from pathlib import Path

import yaml
from experiment_helpers import FakeTrain

from oloraplus import rundir
from oloraplus.config import TrainConfig, read_yaml
from oloraplus.experiments import select

SWEEP = Path(__file__).resolve().parents[2] / "results" / "lambda_lr_smollm2" / "sweep.yaml"
LRS, RATIOS = (1e-4, 3e-4, 1e-3, 3e-3), (0.0625, 0.25, 1.0, 4.0, 16.0)


def test_stage_one_is_the_full_grid_on_validation_with_one_seed():
    plan = select.plan_select(read_yaml(SWEEP), str(SWEEP))
    cells = {(r.config.method, r.config.lr, r.config.ratio) for r in plan.select.runs}
    assert cells == set(itertools.product(("olora", "lora"), LRS, RATIOS)) and len(plan.select.runs) == 40
    for run in plan.select.runs:
        c = run.config
        assert (c.seed, c.split_seed, c.max_steps, c.batch_size, c.max_length) == (1, 0, 60, 4, 256)
        assert c.val_size == 128 and c.eval_size == 128 and c.train_size + c.val_size + c.eval_size <= 999
    assert plan.confirm_seeds == (11, 12, 13, 14, 15) and plan.selection.by == "eval_loss"
    assert plan.arm_keys == ("method",)


def _validation(cfg: TrainConfig) -> float:
    """OLoRA best at η_A = 3e-4, λ = 1/4 (η_B = 7.5e-5); LoRA best at 3e-3 (the grid's edge), λ = 4."""
    lr, ratio = {"olora": (3e-4, 0.25), "lora": (3e-3, 4.0)}[cfg.method]
    return 1.6 + 0.1 * abs(math.log10(cfg.lr / lr)) + 0.01 * abs(math.log2(cfg.ratio / ratio))


def test_stage_two_confirms_each_choice_its_lambda_one_best_and_its_b_rate_control(tmp_path):
    fake = FakeTrain(val_loss=_validation, loss=lambda cfg: 1.6)
    select.run_select_sweep(select.plan_select(read_yaml(SWEEP), str(SWEEP)), tmp_path, train_fn=fake)
    confirm = [c for c in fake.configs if c.seed != 1]
    arms = sorted({(c.method, round(c.lr, 12), c.ratio) for c in confirm})
    assert arms == sorted([
        ("olora", 3e-4, 0.25), ("olora", 3e-4, 1.0), ("olora", 7.5e-5, 1.0),  # OLoRA+, OLoRA tuned, λ=1 at η_B
        ("lora", 3e-3, 4.0), ("lora", 3e-3, 1.0), ("lora", 1.2e-2, 1.0)])
    assert len(confirm) == 6 * 5 and {c.seed for c in confirm} == {11, 12, 13, 14, 15}
    # LoRA's choice (3e-3, λ = 4) and its best λ = 1 cell lay on the lr edge: the grid went one step past each
    # (9e-3, worse), so neither is on the edge any more
    extra = [(c.method, c.lr, c.ratio) for c in fake.configs if c.seed == 1][40:]
    assert extra == [("lora", 9e-3, 4.0), ("lora", 9e-3, 1.0)]
    assert "On the edge" not in (tmp_path / "selection.md").read_text()
    report = (tmp_path / "confirm" / "report.md").read_text()
    assert "baseline lr=0.0003 method=olora ratio=1" in report  # OLoRA tuned at λ = 1, not the η_B control
    assert "### Versus the baseline (olora λ=1 lr=0.0003)" in report
    assert sorted(p.name for p in tmp_path.glob("selection-*.png")) == ["selection-method-lora.png",
                                                                        "selection-method-olora.png"]


def _progress():
    spec = importlib.util.spec_from_file_location("progress", SWEEP.parent / "progress.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kept_selection_runs_are_finished_runs_of_todays_plan_and_a_restored_sweep_skips_them(tmp_path):
    """The stage-1 runs a session finished are committed as records (select_runs/); a later session restores them
    and trains only the rest. Fails when sweep.yaml (or a train default) changes under the kept runs."""
    progress = _progress()
    kept = sorted(p.name for p in progress.RECORDS.iterdir() if p.is_dir())
    assert kept, "no kept runs"
    plan = select.plan_select(read_yaml(SWEEP), str(SWEEP))
    planned = {run.name: run for run in plan.select.runs}
    for name in kept:
        record = progress.RECORDS / name
        assert name in planned and rundir.is_finished(record, planned[name].config, what="sweep"), name
        assert math.isfinite(rundir.read_metrics(record)["val_eval_loss"])
        assert "/root/" not in (record / "config.yaml").read_text()  # portable: no machine's paths
    assert progress.restore(tmp_path) == kept and progress.restore(tmp_path) == []  # never over a run there
    fake = FakeTrain(val_loss=_validation, loss=lambda cfg: 1.6)
    select.run_select_sweep(plan, tmp_path, train_fn=fake)
    trained = {Path(c.output).name for c in fake.configs if c.seed == 1}
    assert not trained & set(kept) and set(planned) - set(kept) <= trained  # (+ the cells an edge extension adds)


def test_the_interim_table_shows_every_kept_cells_validation_loss(tmp_path):
    progress = _progress()
    text = progress.table(images=tmp_path)
    for record in (p for p in progress.RECORDS.iterdir() if p.is_dir()):
        metrics = json.loads((record / "metrics.json").read_text())
        config = yaml.safe_load((record / "config.yaml").read_text())["config"]
        section = text.split(f"{config['method']}: validation loss")[1].split("validation loss")[0]
        row = next(line for line in section.splitlines() if line.startswith(f"| {config['lr']:g} |"))
        assert f"| {metrics['val_eval_loss']:.4f} |" in row
        assert (tmp_path / f"interim-{config['method']}.png").read_bytes().startswith(b"\x89PNG")

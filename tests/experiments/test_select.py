"""select: in a sweep: choose each arm's cell on validation with its own seeds, confirm it on test with fresh ones."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from experiment_helpers import FakeTrain

from oloraplus.cli.main import main
from oloraplus.config import TrainConfig
from oloraplus.errors import ConfigError
from oloraplus.experiments import select
from oloraplus.experiments.sweep import plan_from_spec, run_sweep

SPEC = {
    "base": {"max_steps": 10, "val_size": 8, "split_seed": 0, "eval_size": 16},
    "grid": {"method": ["olora", "lora"], "lr": [1e-4, 3e-4, 1e-3], "ratio": [0.25, 1, 4, 16]},
    "select": {"by": "eval_loss", "over": ["lr", "ratio"], "seeds": [1], "b_rate_control": True,
               "also": [{"ratio": 1}]},
    "seeds": [11, 12, 13],
    "baseline": {"method": "olora", "ratio": 1},
}


def validation(cfg: TrainConfig) -> float:
    """Validation optimum: OLoRA at lr 3e-4, λ = 4; LoRA at lr 1e-3 (the grid's edge), λ = 1."""
    best = {"olora": (3e-4, 4.0), "lora": (1e-3, 1.0)}[cfg.method]
    return 2.0 + abs(math.log10(cfg.lr / best[0])) + 0.1 * abs(math.log2(cfg.ratio / best[1]))


def on_test(cfg: TrainConfig) -> float:
    """The test split disagrees on purpose: there λ = 1/4 looks best for every arm."""
    return 2.0 + 0.1 * abs(math.log2(cfg.ratio / 0.25)) + 0.01 * cfg.seed


def test_the_plan_lists_stage_one_and_what_stage_two_will_run():
    plan = select.plan_select(SPEC, "s.yaml")
    assert len(plan.select.runs) == 2 * 3 * 4  # arms × cells × one selection seed
    assert plan.arm_keys == ("method",) and {r.config.seed for r in plan.select.runs} == {1}
    assert all(r.config.val_size == 8 and r.config.split_seed == 0 for r in plan.select.runs)
    text = "\n".join(select.describe_plan(plan))
    assert "stage 1, select/: 24 runs = 2 arm(s) × 12 cells of lr × ratio × 1 selection seed(s) [1]" in text
    assert "  method-olora_lr-0.0001_ratio-0.25" in text and "  method-lora_lr-0.001_ratio-4" in text
    assert "(+ its best cell with ratio=1) (+ its λ = 1 control at η = η_B when λ ≠ 1)" in text
    assert "× 3 fresh seeds [11, 12, 13] on the test split: 6–18 runs (fewer when choices coincide)" in text
    assert "  arm method=olora" in text and "  arm method=lora" in text


def test_select_chooses_on_validation_and_confirms_on_test_with_fresh_seeds(tmp_path):
    fake = FakeTrain(loss=on_test, val_loss=validation)
    select.run_select_sweep(select.plan_select(SPEC, "s.yaml"), tmp_path / "out", train_fn=fake)
    chosen = json.loads((tmp_path / "out" / "selection.json").read_text())["choices"]
    assert [(c["arm"], c["among"], c["cell"]) for c in chosen] == [
        ({"method": "olora"}, None, {"lr": 3e-4, "ratio": 4.0}),
        ({"method": "olora"}, {"ratio": 1}, {"lr": 3e-4, "ratio": 1.0}),  # OLoRA's own rate tuned at λ = 1
        ({"method": "lora"}, None, {"lr": 1e-3, "ratio": 1.0}),
        ({"method": "lora"}, {"ratio": 1}, {"lr": 1e-3, "ratio": 1.0})]
    assert chosen[0]["edges"] == [] and chosen[2]["edges"] == ["lr"]  # LoRA's best lr is the grid's largest
    confirm = [c for c in fake.configs if c.seed in (11, 12, 13)]
    assert len(fake.configs) == 24 + len(confirm)
    # OLoRA's choice, its best λ = 1 cell, its B-rate control (λ = 1 at η = 4 × 3e-4) and LoRA's choice (λ = 1: its
    # own best λ = 1 cell and no control), 3 seeds each
    assert sorted({(c.method, round(c.lr, 12), c.ratio) for c in confirm}) == sorted(
        {("olora", 3e-4, 4.0), ("olora", 3e-4, 1.0), ("olora", 1.2e-3, 1.0), ("lora", 1e-3, 1.0)})
    assert len(confirm) == 12 and all(c.split_seed == 0 and c.val_size == 8 for c in confirm)
    selection = (tmp_path / "out" / "selection.md").read_text()
    assert "On the edge of the grid** in lr" in selection and "Chosen: lr=0.0003 ratio=4" in selection
    assert (tmp_path / "out" / "selection-method-olora.png").read_bytes().startswith(b"\x89PNG")
    report = (tmp_path / "out" / "confirm" / "report.md").read_text()
    assert "Settings chosen on the validation split with seeds 1" in report and "fresh seeds 11, 12, 13" in report
    assert "Numbers from the test split" in report and "Settings are chosen on the separate validation split" in report
    # a rerun trains nothing
    again = FakeTrain(loss=on_test, val_loss=validation)
    select.run_select_sweep(select.plan_select(SPEC, "s.yaml"), tmp_path / "out", train_fn=again)
    assert again.calls == []


def test_a_diverged_cell_is_the_worst_not_skipped(tmp_path):
    spec = {**SPEC, "grid": {"method": ["olora"], "lr": [1e-4, 3e-4], "ratio": [1, 4]}, "seeds": [11, 12, 13]}
    fake = FakeTrain(loss=on_test, val_loss=validation, diverges=lambda cfg: cfg.ratio == 4.0 and cfg.lr == 3e-4)
    plan = select.plan_select(spec, "s.yaml")
    select.run_select_sweep(plan, tmp_path / "out", train_fn=fake)
    losses = select.cell_losses(plan, tmp_path / "out" / "select")[()]  # one method: one arm, named by nothing
    assert losses[(("lr", 3e-4), ("ratio", 4.0))] == math.inf  # the validation optimum diverged
    chosen = json.loads((tmp_path / "out" / "selection.json").read_text())["choices"][0]["cell"]
    assert chosen == {"lr": 3e-4, "ratio": 1.0}
    assert "| lr=0.0003 ratio=4 | ∞ |" in (tmp_path / "out" / "selection.md").read_text()


@pytest.mark.parametrize(("change", "match"), [
    ({"base": {"max_steps": 10, "split_seed": 0}}, "select: needs base.val_size >= 1"),
    ({"base": {"max_steps": 10, "val_size": 8}}, "select: needs base.split_seed (>= 0)"),
    ({"seeds": [1, 11]}, "seeds: 1 also in select.seeds; the confirmation seeds must be fresh"),
    ({"seeds": None}, "seeds: give the confirmation seeds"),
    ({"select": {"over": ["rank"], "seeds": [1]}}, "select: over: 'rank' is not a grid key with more than one value"),
    ({"select": {"by": "rougeL", "over": ["lr"], "seeds": [1]}}, "by: 'rougeL' is not measured on the validation split"),
    ({"select": {"over": ["lr"], "seeds": [1], "pick": "min"}}, "select: unknown key 'pick'"),
    ({"select": {"over": ["lr"], "seeds": []}}, "select: seeds: expected a non-empty list of different integers"),
    ({"select": {"over": ["lr"], "seeds": [1], "b_rate_control": True}}, "b_rate_control needs lr and ratio in over"),
    ({"select": "lr"}, "select: expected a mapping with by, over, seeds"),
    ({"select": {"over": ["lr"], "seeds": [1], "also": [{"rank": 8}]}}, "select: also: 'rank' is not one of over"),
    ({"select": {"over": ["lr"], "seeds": [1], "also": {"lr": 1}}}, "select: also: expected a list of mappings"),
    ({"select": {"over": ["lr"], "seeds": [1], "extend": -1}}, "select: extend: expected how many steps past"),
    ({"select": {"over": ["lr"], "seeds": [1], "extend": True}}, "select: extend: expected how many steps past"),
])
def test_bad_select_specs_are_one_line_errors_naming_the_key(tmp_path, capsys, change, match):
    spec = {**SPEC, **change}
    with pytest.raises(ConfigError) as error:
        select.plan_select(spec, "s.yaml")
    assert str(error.value).startswith("s.yaml: ") and match in str(error.value)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_plan_from_spec_refuses_select_and_dry_run_lists_runs(tmp_path, capsys):
    with pytest.raises(ConfigError, match="select: a select/confirm sweep runs with `oloraplus sweep`"):
        plan_from_spec(SPEC, "s.yaml")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    assert main(["sweep", str(path), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "stage 1, select/: 24 runs" in capsys.readouterr().out and not (tmp_path / "out").exists()
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump({"grid": {"ratio": [1, 4]}, "seeds": [1, 2]}))
    assert main(["sweep", str(plain), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == ["4 runs:", "  ratio-1_seed-1", "  ratio-1_seed-2",
                                                    "  ratio-4_seed-1", "  ratio-4_seed-2"]
    assert not (tmp_path / "out").exists()
    with pytest.raises(KeyboardInterrupt):  # a sweep killed in its third run, then looked at
        run_sweep(plain, tmp_path / "out", train_fn=FakeTrain(fail_on_call=3))
    assert main(["sweep", str(plain), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "4 runs:", "  ratio-1_seed-1  (finished)", "  ratio-1_seed-2  (finished)", "  ratio-4_seed-1",
        "  ratio-4_seed-2", f"  2 of 4 finished in {tmp_path / 'out'}"]


def lora_beyond_the_grid(optimum: float):
    """Validation optimum: OLoRA inside the grid (lr 3e-4, λ = 4); LoRA at λ = 1 and lr `optimum`, past 1e-3."""
    def val(cfg: TrainConfig) -> float:
        best = {"olora": (3e-4, 4.0), "lora": (optimum, 1.0)}[cfg.method]
        return 2.0 + abs(math.log10(cfg.lr / best[0])) + 0.1 * abs(math.log2(cfg.ratio / best[1]))
    return val


def test_the_next_value_continues_the_grids_own_step():
    assert select._step([1e-4, 3e-4, 1e-3], 1e-3) == 3.33e-3  # ×(1e-3/3e-4), 3 significant digits
    assert select._step([1e-4, 3e-4, 1e-3], 1e-4) == 3.33e-5
    assert select._step([0.0625, 0.25, 1, 4, 16], 16) == 64 and select._step([0.0625, 0.25, 1, 4, 16], 0.0625) == 0.0156
    assert select._step([-1.0, 0.0, 1.0], 1.0) == 2.0  # not all positive: the arithmetic step


def test_extend_pushes_a_choice_on_the_edge_past_the_grid_until_it_is_inside(tmp_path):
    spec = {**SPEC, "select": {**SPEC["select"], "extend": 2}}
    fake = FakeTrain(loss=on_test, val_loss=lora_beyond_the_grid(5e-3))
    select.run_select_sweep(select.plan_select(spec, "s.yaml"), tmp_path / "out", train_fn=fake)
    stage1 = [(c.method, c.lr, c.ratio) for c in fake.configs if c.seed == 1]
    # LoRA chose lr 1e-3 (the edge): 3.33e-3 trained at its chosen λ = 1, chosen (edge again), then 1.11e-2; now
    # 3.33e-3 is inside (|log10(3.33e-3/5e-3)| = 0.18 < |log10(1.11e-2/5e-3)| = 0.35) and the search stops
    assert stage1[24:] == [("lora", 3.33e-3, 1.0), ("lora", 1.11e-2, 1.0)]
    chosen = json.loads((tmp_path / "out" / "selection.json").read_text())["choices"]
    assert chosen[2] == {"arm": {"method": "lora"}, "among": None, "cell": {"lr": 3.33e-3, "ratio": 1.0},
                         "validation_loss": pytest.approx(2.0 + abs(math.log10(3.33e-3 / 5e-3))), "edges": []}
    confirm = {(c.method, c.lr, c.ratio) for c in fake.configs if c.seed == 11}
    assert ("lora", 3.33e-3, 1.0) in confirm and ("lora", 1e-3, 1.0) not in confirm
    selection = (tmp_path / "out" / "selection.md").read_text()
    assert "| lr=0.00333 ratio=1 | 2.1765 |" in selection and "On the edge" not in selection.split("## method=lora")[1]
    again = FakeTrain(loss=on_test, val_loss=lora_beyond_the_grid(5e-3))
    select.run_select_sweep(select.plan_select(spec, "s.yaml"), tmp_path / "out", train_fn=again)
    assert again.calls == []  # the extension is planned again from the finished runs: nothing new to train


def test_extend_stops_after_its_steps_and_the_edge_is_reported(tmp_path):
    spec = {**SPEC, "select": {**SPEC["select"], "extend": 1}}
    fake = FakeTrain(loss=on_test, val_loss=lora_beyond_the_grid(0.1))
    select.run_select_sweep(select.plan_select(spec, "s.yaml"), tmp_path / "out", train_fn=fake)
    assert [(c.method, c.lr) for c in fake.configs if c.seed == 1][24:] == [("lora", 3.33e-3)]
    chosen = json.loads((tmp_path / "out" / "selection.json").read_text())["choices"]
    assert chosen[2]["cell"] == {"lr": 3.33e-3, "ratio": 1.0} and chosen[2]["edges"] == ["lr"]
    assert "On the edge of the grid** in lr" in (tmp_path / "out" / "selection.md").read_text()


def test_a_grid_key_with_one_value_reaches_the_confirmation(tmp_path):
    """`method: [lora]` does not vary, so it names no arm; the confirmed point must still set it."""
    spec = {**SPEC, "grid": {"method": ["lora"], "lr": [1e-4, 1e-3], "ratio": [1, 4]}}
    fake = FakeTrain(loss=on_test, val_loss=validation)
    select.run_select_sweep(select.plan_select(spec, "s.yaml"), tmp_path / "out", train_fn=fake)
    assert {c.method for c in fake.configs} == {"lora"} and len(fake.configs) > 4


def test_dry_run_on_a_sweep_in_progress_shows_each_finished_cell_and_the_best_so_far(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(SPEC, sort_keys=False))  # the grid's key order names the runs
    fake = FakeTrain(loss=on_test, val_loss=validation, fail_on_call=5)  # killed in the 5th run
    with pytest.raises(KeyboardInterrupt):
        select.run_select_sweep(select.plan_select(SPEC, "s.yaml"), tmp_path / "out", train_fn=fake)
    assert main(["sweep", str(path), "--output", str(tmp_path / "out"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # OLoRA lr 1e-4 at λ = 1/4, 1, 4, 16: 2 + |log10(1e-4/3e-4)| (0.4771) + 0.1·|log2(λ/4)|
    assert "  method-olora_lr-0.0001_ratio-0.25  (validation 2.8771)" in out
    assert "  method-olora_lr-0.0001_ratio-16  (validation 2.6771)" in out
    assert "  method-olora_lr-0.0003_ratio-0.25\n" in out  # not finished: no mark
    assert "  4 of 24 finished in " in out and "best so far, method=olora: lr=0.0001 ratio=4 (validation 2.4771)" in out
    assert sorted(p.name for p in (tmp_path / "out" / "select" / "runs").iterdir() if not p.name.endswith(".partial")) \
        == ["method-olora_lr-0.0001_ratio-0.25", "method-olora_lr-0.0001_ratio-1", "method-olora_lr-0.0001_ratio-16",
            "method-olora_lr-0.0001_ratio-4"]  # the dry run wrote nothing

"""Sweep planning, safe run names, resuming after an interruption, refusing to mix sweeps."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
import yaml
from experiment_helpers import FakeTrain, objective
from hypothesis import given, settings
from hypothesis import strategies as st

from oloraplus.config import TrainConfig
from oloraplus.errors import ConfigError
from oloraplus.experiments.sweep import plan_from_spec, plan_sweep, run_name, run_path, run_sweep
from oloraplus.experiments.sweepdir import RESULTS_FILE, safe_component


def write_sweep(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_grid_is_crossed_with_seeds_and_named_by_what_varies(tmp_path):
    plan = plan_from_spec({"base": {"rank": 8}, "grid": {"method": ["olora", "lora"], "ratio": [0.25, 4]},
                           "seeds": [1, 2]}, "s.yaml")
    assert plan.varying == ("method", "ratio", "seed")
    assert len(plan.runs) == 8
    assert plan.runs[0].name == "method-olora_ratio-0.25_seed-1"
    assert plan.runs[-1].name == "method-lora_ratio-4_seed-2"
    assert all(run.config.rank == 8 for run in plan.runs)
    assert plan.runs[1].config.seed == 2 and plan.runs[1].config.ratio == 0.25
    assert plan.baseline == {"method": "olora", "ratio": 1.0}


def test_a_list_of_subgrids_is_their_union_without_duplicates():
    plan = plan_from_spec({"grid": [{"method": ["lora"]}, {"method": ["olora"], "ratio": [0.5, 1, 2]},
                                    {"method": ["olora"], "ratio": [1]}]}, "s.yaml")
    assert [r.name for r in plan.runs] == ["method-lora_ratio-1", "method-olora_ratio-0.5", "method-olora_ratio-1",
                                           "method-olora_ratio-2"]


def test_options_that_do_not_vary_stay_out_of_the_name():
    plan = plan_from_spec({"grid": {"model": ["m"], "ratio": [1, 2]}, "seeds": [5]}, "s.yaml")
    assert [r.name for r in plan.runs] == ["ratio-1", "ratio-2"]
    assert plan_from_spec({}, "s.yaml").runs[0].name == "run"


@pytest.mark.parametrize("model", ["../../x", "a/b", "/abs/path/model", "..", ".", "~", "x" * 300, "a\\..\\b", ""])
def test_model_values_cannot_escape_the_sweep_directory(tmp_path, model):
    plan = plan_from_spec({"grid": {"model": [model, "plain"]}}, "s.yaml")
    runs_dir = (tmp_path / "runs").resolve()
    for run in plan.runs:
        assert re.fullmatch(r"[A-Za-z0-9.+=_-]+", run.name) and ".." not in run.name and len(run.name) < 80
        assert run_path(tmp_path, run).resolve().parent == runs_dir
    assert len({r.name for r in plan.runs}) == 2


def test_values_that_sanitise_alike_still_get_different_names():
    plan = plan_from_spec({"grid": {"model": ["a/b", "a_b", "a:b"]}}, "s.yaml")
    assert len({r.name for r in plan.runs}) == 3
    assert plan.runs[1].name == "model-a_b"  # an already safe value is kept as written


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=120))
def test_any_text_becomes_one_safe_path_component(text):
    name = run_name({"model": text})
    assert re.fullmatch(r"[A-Za-z0-9.+=_-]+", name) and ".." not in name and len(name) < 80
    assert safe_component(text) == safe_component(text)


@pytest.mark.parametrize("spec, fragment", [
    ({"base": {"ratoi": 2}}, "s.yaml: base: unknown key 'ratoi' (did you mean 'ratio'?)"),
    ({"grid": {"lr": ["fast"]}}, "s.yaml: grid: key 'lr'"),
    ({"grid": [{"rank": [4]}, {"rnak": [8]}]}, "s.yaml: grid[1]: unknown key 'rnak'"),
    ({"grid": {"ratio": 2}}, "s.yaml: grid: key 'ratio': expected a non-empty list"),
    ({"base": {"output": "x"}}, "s.yaml: base: key 'output' is set by the sweep"),
    ({"grid": {"ratio": [1, 0]}}, "s.yaml: run ratio-0: --ratio"),
    ({"seeds": [1, "two"]}, "s.yaml: seeds"),
    ({"base": {"seed": 3}, "seeds": [1]}, "keep only 'seeds'"),
    ({"grids": {}}, "s.yaml: unknown top-level key 'grids'"),
    ({"baseline": {"metod": "lora"}}, "s.yaml: baseline: unknown key 'metod'"),
])
def test_bad_sweep_files_name_the_file_and_key(spec, fragment):
    with pytest.raises(ConfigError) as exc:
        plan_from_spec(spec, "s.yaml")
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_missing_sweep_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="sweep file not found"):
        plan_sweep(tmp_path / "nope.yaml")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "train_runtime_s"} for row in csv.DictReader(f)]


SPEC = {"base": {"rank": 4, "max_steps": 8}, "grid": {"method": ["olora", "lora"], "ratio": [0.5, 2]}, "seeds": [1]}


def test_interrupted_sweep_resumes_each_run_exactly_once(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml", SPEC)
    reference = FakeTrain()
    run_sweep(sweep, tmp_path / "ref", train_fn=reference)

    killed = FakeTrain(fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(sweep, tmp_path / "out", train_fn=killed)
    assert killed.calls == ["method-olora_ratio-0.5"]
    assert len(_rows(tmp_path / "out" / RESULTS_FILE)) == 1
    assert (tmp_path / "out" / "runs" / "method-olora_ratio-2.partial").is_dir()

    resumed = FakeTrain()
    run_sweep(sweep, tmp_path / "out", train_fn=resumed)
    assert sorted(killed.calls + resumed.calls) == sorted(reference.calls) and len(reference.calls) == 4
    assert _rows(tmp_path / "out" / RESULTS_FILE) == _rows(tmp_path / "ref" / RESULTS_FILE)
    assert not list((tmp_path / "out" / "runs").glob("*.partial"))
    err = capsys.readouterr().err
    assert "[2/4] method=olora ratio=2" in err and "[1/4] method=olora ratio=0.5  (finished earlier, skipped)" in err

    again = FakeTrain()
    run_sweep(sweep, tmp_path / "out", train_fn=again)
    assert again.calls == []
    assert (tmp_path / "out" / "report.md").is_file()


def test_results_csv_has_varying_and_base_parameters_and_metrics(tmp_path):
    run_sweep(write_sweep(tmp_path / "s.yaml", SPEC), tmp_path / "out", train_fn=FakeTrain())
    rows = _rows(tmp_path / "out" / RESULTS_FILE)
    assert list(rows[0])[:6] == ["run", "method", "ratio", "rank", "max_steps", "steps"]
    assert [(r["method"], r["ratio"]) for r in rows] == [("olora", "0.5"), ("olora", "2.0"), ("lora", "0.5"),
                                                         ("lora", "2.0")]
    assert all(r["rank"] == "4" and r["eval_loss"] for r in rows)


def test_a_finished_run_with_another_config_is_refused(tmp_path):
    sweep = write_sweep(tmp_path / "s.yaml", SPEC)
    run_sweep(sweep, tmp_path / "out", train_fn=FakeTrain())
    write_sweep(sweep, {**SPEC, "base": {"rank": 4, "max_steps": 8, "lr": 1e-3}})
    fresh = FakeTrain()
    with pytest.raises(ConfigError) as exc:
        run_sweep(sweep, tmp_path / "out", train_fn=fresh)
    message = str(exc.value)
    assert "method-olora_ratio-0.5" in message and "lr: 0.0003 != 0.001" in message and "\n" not in message
    assert fresh.calls == []


def test_a_diverged_run_is_kept_as_a_result_and_the_sweep_goes_on(tmp_path, capsys):
    spec = {"base": {"max_steps": 8}, "grid": {"method": ["olora"], "ratio": [1, 16]}, "seeds": [1, 2]}
    sweep = write_sweep(tmp_path / "s.yaml", spec)
    train = FakeTrain(diverges=lambda cfg: cfg.ratio == 16 and cfg.seed == 1)
    run_sweep(sweep, tmp_path / "out", train_fn=train)
    assert len(train.calls) == 4 and not list((tmp_path / "out" / "runs").glob("*.partial"))
    assert "diverged at step 2 (the loss is not finite); kept as a result" in capsys.readouterr().err

    bad = tmp_path / "out" / "runs" / "ratio-16_seed-1"
    metrics = json.loads((bad / "metrics.json").read_text())
    assert metrics == {"diverged": True, "diverged_step": 2, "diverged_reason": "the loss is not finite"}
    failure = json.loads((bad / "failure.json").read_text())
    assert failure["step"] == 2 and failure["last_checkpoint"] is None and (bad / "log.jsonl").is_file()
    rows = {r["run"]: r for r in _rows(tmp_path / "out" / RESULTS_FILE)}
    assert rows["ratio-16_seed-1"]["diverged"] == "True" and rows["ratio-16_seed-1"]["eval_loss"] == ""
    assert rows["ratio-16_seed-2"]["eval_loss"] and rows["ratio-16_seed-2"]["diverged"] == ""

    report = (tmp_path / "out" / "report.md").read_text()
    assert "4 finished runs (1 diverged: NaN/inf loss)" in report and "ratio-16_seed-1" in report
    loss_16 = objective(TrainConfig(ratio=16, seed=2, max_steps=8))
    assert f"| olora λ=16 | 2 (1 diverged) | {loss_16:.4f} |" in report  # mean of the seed that trained

    again = FakeTrain()
    run_sweep(sweep, tmp_path / "out", train_fn=again)
    assert again.calls == []  # a diverged run is finished: a rerun does not repeat it


def test_extending_the_grid_with_a_new_option_moves_finished_runs_instead_of_retraining(tmp_path, capsys):
    spec = {"base": {"max_steps": 8}, "grid": {"ratio": [1, 2]}, "seeds": [1]}
    sweep = write_sweep(tmp_path / "s.yaml", spec)
    run_sweep(sweep, tmp_path / "out", train_fn=FakeTrain())
    before = (tmp_path / "out" / "runs" / "ratio-2" / "metrics.json").read_text()

    write_sweep(sweep, {**spec, "grid": [{"ratio": [1, 2]}, {"ratio": [1], "lr": [1e-3]}]})  # lr now varies
    extension = FakeTrain()
    run_sweep(sweep, tmp_path / "out", train_fn=extension)
    assert extension.calls == ["ratio-1_lr-0.001"]
    runs = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    assert runs == ["ratio-1_lr-0.0003", "ratio-1_lr-0.001", "ratio-2_lr-0.0003"]
    assert (tmp_path / "out" / "runs" / "ratio-2_lr-0.0003" / "metrics.json").read_text() == before
    assert "ratio-2 -> ratio-2_lr-0.0003 (same config, finished earlier)" in capsys.readouterr().err
    assert len(_rows(tmp_path / "out" / RESULTS_FILE)) == 3


def test_an_output_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        run_sweep(write_sweep(tmp_path / "s.yaml", SPEC), tmp_path / "out", train_fn=FakeTrain())


def test_an_ohora_run_recorded_before_ohora_init_existed_reads_as_the_paper_init(tmp_path):
    """Such runs used the literal init: a sweep must not take them for today's default ('ranked')."""
    from oloraplus.rundir import config_differences, recorded_config

    for method in ("ohora", "lora"):
        (tmp_path / method).mkdir()
        (tmp_path / method / "config.yaml").write_text(yaml.safe_dump({"config": {"method": method, "rank": 4}}))
    old_ohora = recorded_config(tmp_path / "ohora")
    assert old_ohora["ohora_init"] == "paper"
    assert config_differences(TrainConfig(method="ohora", rank=4), old_ohora) == ["ohora_init: 'paper' != 'ranked'"]
    assert config_differences(TrainConfig(method="ohora", rank=4, ohora_init="paper"), old_ohora) == []
    assert recorded_config(tmp_path / "lora")["ohora_init"] == "ranked"  # unused: the default, so arms do not split


def test_an_auto_eval_size_is_one_size_for_the_whole_sweep():
    """Runs of 2 and 50 steps would otherwise score 32 and 400 examples: losses from different splits."""
    plan = plan_from_spec({"base": {"batch_size": 4}, "grid": {"max_steps": [2, 50]}}, "s.yaml")
    assert [r.config.eval_size for r in plan.runs] == [400, 400]
    fixed = plan_from_spec({"base": {"eval_size": 7}, "grid": {"max_steps": [2, 50]}}, "s.yaml")
    assert [r.config.eval_size for r in fixed.runs] == [7, 7]

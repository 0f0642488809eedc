"""A real sweep on the tiny model: killed mid-run and restarted, it matches an uninterrupted sweep."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import yaml

from oloraplus.cli.main import build_parser
from oloraplus.train import recipe
from tests.helpers import TIMING_KEYS


def _sweep_file(tmp_path: Path, model: Path, data: Path) -> Path:
    spec = {
        "base": {"model": str(model), "data": str(data), "rank": 4, "alpha": 8, "lr": 3e-3, "max_steps": 3,
                 "batch_size": 4, "max_length": 64, "train_size": 16, "eval_size": 8, "logging_steps": 1},
        "grid": {"method": ["olora", "lora"], "ratio": [0.5, 2]},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def _results(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in csv.DictReader(f)]


def test_killed_sweep_restarts_and_matches_an_uninterrupted_one(tiny_llama_dir, alpaca_file, tmp_path, monkeypatch,
                                                                capsys, one_thread):
    sweep = _sweep_file(tmp_path, tiny_llama_dir, alpaca_file)
    assert _cli(["sweep", str(sweep), "--output", str(tmp_path / "ref")]) == 0
    out = capsys.readouterr().out
    assert "| olora λ=0.5 | 1 |" in out and "| lora λ=2 | 1 |" in out

    trained: list[str] = []
    real_train, real_eval = recipe.train, recipe.evaluate_loss

    def counting_train(cfg):
        trained.append(Path(cfg.output).name)
        return real_train(cfg)

    def killing_eval(*args, **kwargs):  # the 2nd run is killed after its optimizer steps, before it finishes
        if len(trained) == 2:
            raise KeyboardInterrupt
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(recipe, "train", counting_train)
    monkeypatch.setattr(recipe, "evaluate_loss", killing_eval)
    with pytest.raises(KeyboardInterrupt):
        _cli(["sweep", str(sweep), "--output", str(tmp_path / "out")])
    partial = tmp_path / "out" / "runs" / "method-olora_ratio-2.partial"
    assert (partial / "config.yaml").is_file() and not (tmp_path / "out" / "runs" / "method-olora_ratio-2").exists()
    assert len(_results(tmp_path / "out" / "results.csv")) == 1

    monkeypatch.setattr(recipe, "evaluate_loss", real_eval)
    assert _cli(["sweep", str(sweep), "--output", str(tmp_path / "out")]) == 0
    assert trained == ["method-olora_ratio-0.5", "method-olora_ratio-2", "method-olora_ratio-2",
                       "method-lora_ratio-0.5", "method-lora_ratio-2"]
    assert not partial.exists()
    assert _results(tmp_path / "out" / "results.csv") == _results(tmp_path / "ref" / "results.csv")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "### How far B moved, and how much of it turned" in report and "diag_subspace_distance" in report


def test_a_run_that_diverges_under_the_real_trainer_is_kept_as_a_result(tiny_llama_dir, alpaca_file, tmp_path,
                                                                         capsys, one_thread):
    """The real path (RatioTrainer stops on a non-finite loss, the sweep records the run and goes on), not a
    stand-in trainer: λ = 1e9 puts the B factors at λη = 1e7 and the activations overflow float32 within a few steps;
    λ = 1 trains. Checkpoints are written every step, so some exist when the run diverges."""
    spec = {
        "base": {"model": str(tiny_llama_dir), "data": str(alpaca_file), "rank": 4, "alpha": 8, "lr": 1e-2,
                 "max_steps": 6, "batch_size": 4, "max_length": 64, "train_size": 16, "eval_size": 8,
                 "logging_steps": 1, "save_steps": 1},
        "grid": {"ratio": [1, 1e9]},
    }
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = tmp_path / "out"
    assert _cli(["sweep", str(sweep), "--output", str(out)]) == 0
    err = capsys.readouterr().err
    runs = out / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["ratio-1", "ratio-1e+09"]  # both finished, no .partial
    bad, good = runs / "ratio-1e+09", runs / "ratio-1"

    # the real trainer stopped the run at the first non-finite step; the sweep kept it as a result
    failure = json.loads((bad / "failure.json").read_text())
    step, what = failure["step"], failure["error"]
    assert re.search(rf"\[2/2\] ratio=1e\+09: end on .* 2 of 2 done: diverged at step {step} \({what}\); "
                     "kept as a result, going on", err)
    assert json.loads((bad / "metrics.json").read_text()) == {"diverged": True, "diverged_step": step,
                                                              "diverged_reason": what}
    assert what in ("the loss is not finite", "the optimizer step made parameters non-finite")
    assert yaml.safe_load((bad / "config.yaml").read_text())["config"]["ratio"] == 1e9
    # steps before it trained and were logged with finite losses; one was checkpointed before the divergence,
    # as the trainer's message says; the sweep then removed the run's checkpoints (and says so in failure.json)
    assert step >= 2 and f"checkpoint-{step - 1}" in failure["message"]
    logged = [json.loads(line) for line in (bad / "log.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in logged if "loss" in row]
    assert losses and all(row["step"] < step for row in logged) and all(math.isfinite(x) for x in losses)
    assert failure["last_checkpoint"] is None and not (bad / "checkpoints").exists() and not (bad / "adapter").exists()

    # the other run trained and was evaluated; results.csv and the report count the diverged one
    assert math.isfinite(json.loads((good / "metrics.json").read_text())["eval_loss"]) and (good / "adapter").is_dir()
    rows = {row["run"]: row for row in _results(out / "results.csv")}
    assert rows["ratio-1e+09"]["diverged"] == "True" and rows["ratio-1e+09"]["eval_loss"] == ""
    assert rows["ratio-1"]["diverged"] == "" and float(rows["ratio-1"]["eval_loss"]) > 0
    assert "2 finished runs (1 diverged: NaN/inf loss)" in (out / "report.md").read_text()

    # a diverged run is finished: the same command again trains nothing
    assert _cli(["sweep", str(sweep), "--output", str(out)]) == 0
    assert capsys.readouterr().err.count("(finished earlier, skipped)") == 2

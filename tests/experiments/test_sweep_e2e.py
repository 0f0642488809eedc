"""A real sweep on the tiny model: killed mid-run and restarted, it matches an uninterrupted sweep."""

from __future__ import annotations

import csv
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
    assert "### Refinement vs exploration" in report and "diag_subspace_distance" in report

"""Successive halving over λ on a cheap objective with a known best λ (= 2)."""

from __future__ import annotations

import json
import math

import pytest
from experiment_helpers import FakeTrain, objective

from oloraplus import rundir
from oloraplus.cli.main import build_parser
from oloraplus.config import TrainConfig
from oloraplus.errors import ConfigError
from oloraplus.experiments import sweep, tune
from oloraplus.experiments.cli import parse_grid

PNG = b"\x89PNG\r\n\x1a\n"


def test_rounds_and_survivors():
    assert [tune.rounds_needed(n) for n in (2, 3, 4, 5, 9, 16, 17)] == [1, 2, 2, 3, 4, 4, 5]
    losses = {0.25: 3.0, 0.5: 1.0, 1.0: 2.0, 2.0: 2.0, 4.0: math.nan}
    assert tune.survivors(losses) == [0.5, 1.0, 2.0]
    assert tune.survivors({0.5: 1.0, 2.0: 1.0}) == [0.5]  # a tie goes to the λ closer to 1, then the smaller


def test_successive_halving_finds_the_known_best_ratio(tmp_path):
    fake = FakeTrain()
    result = tune.tune_ratio(TrainConfig(seed=0), tmp_path, min_steps=4, train_fn=fake)
    assert result.best_ratio == 2.0
    assert result.best_loss == pytest.approx(2.0 + 4.0 / 32)
    assert [(r.max_steps, len(r.losses)) for r in result.rungs] == [(4, 9), (8, 5), (16, 3), (32, 2)]
    assert sorted(result.rungs[1].losses) == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert len(fake.calls) == 9 + 5 + 3 + 2
    assert (tmp_path / "rung-3" / "runs" / "ratio-2" / "metrics.json").is_file()

    text = (tmp_path / "tune.md").read_text()
    assert "**Best λ = 2**" in text and "| 0.0625 | 5.5000 | – | – | – |" in text
    assert "| 2 | 3.0000 | 2.5000 | 2.2500 | **2.1250** |" in text
    record = json.loads((tmp_path / "tune.json").read_text())
    assert record["best_ratio"] == 2.0 and record["rounds"][0]["val_eval_loss"]["16"] == pytest.approx(3.9)
    assert (tmp_path / "tune.png").read_bytes().startswith(PNG)


def test_an_auto_eval_size_is_the_same_in_every_round(tmp_path):
    """Rounds double the steps; an auto eval size would grow with them and change the split between rounds."""
    sizes: list[int] = []
    fake = FakeTrain(loss=lambda cfg: sizes.append(cfg.eval_size) or objective(cfg))
    tune.tune_ratio(TrainConfig(seed=0, batch_size=8), tmp_path, grid=[0.5, 1, 2, 4], min_steps=4, train_fn=fake)
    assert TrainConfig(batch_size=8, max_steps=4).eval_examples() == 64  # what round 0 alone would score
    assert len(sizes) == 4 + 2 and set(sizes) == {128}  # the last round's: 2 × 8 steps × 8 examples


def test_a_diverging_ratio_drops_out_of_the_search_instead_of_stopping_it(tmp_path):
    train = FakeTrain(diverges=lambda cfg: cfg.ratio >= 8)
    result = tune.tune_ratio(TrainConfig(), tmp_path, grid=[0.5, 1, 2, 8, 16], min_steps=4, train_fn=train)
    assert result.best_ratio == 2.0
    assert math.isnan(result.rungs[0].losses[16.0]) and sorted(result.rungs[1].losses) == [0.5, 1.0, 2.0]


def test_an_interrupted_search_resumes_without_retraining(tmp_path):
    killed = FakeTrain(fail_on_call=7)  # the second run of the second round
    with pytest.raises(KeyboardInterrupt):
        tune.tune_ratio(TrainConfig(), tmp_path, grid=[0.25, 1, 2, 4, 16], min_steps=4, train_fn=killed)
    resumed = FakeTrain()
    result = tune.tune_ratio(TrainConfig(), tmp_path, grid=[0.25, 1, 2, 4, 16], min_steps=4, train_fn=resumed)
    assert result.best_ratio == 2.0
    trained = [(r.index, len(r.losses)) for r in result.rungs]
    assert trained == [(0, 5), (1, 3), (2, 2)] and len(killed.calls) + len(resumed.calls) == 10
    again = FakeTrain()
    tune.tune_ratio(TrainConfig(), tmp_path, grid=[0.25, 1, 2, 4, 16], min_steps=4, train_fn=again)
    assert again.calls == []


def test_fewer_rounds_stop_early_and_pick_the_best_of_the_last(tmp_path):
    result = tune.tune_ratio(TrainConfig(), tmp_path, grid=[0.5, 2, 8, 32], min_steps=4, rounds=1, train_fn=FakeTrain())
    assert len(result.rungs) == 1 and result.best_ratio == 2.0


@pytest.mark.parametrize("kwargs, fragment", [
    ({"grid": [1.0]}, "--grid"), ({"grid": [1.0, 1.0]}, "--grid"), ({"grid": [0.0, 1.0]}, "--ratio"),
    ({"min_steps": 0}, "--min-steps"), ({"rounds": 0}, "--rounds"),
])
def test_bad_search_settings_are_config_errors(tmp_path, kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        tune.tune_ratio(TrainConfig(), tmp_path, train_fn=FakeTrain(), **kwargs)


def test_grid_flag_accepts_fractions_and_rejects_words():
    assert parse_grid("1/16, 0.25,1,4") == [0.0625, 0.25, 1.0, 4.0]
    with pytest.raises(ConfigError, match="--grid: 'x' is not a number"):
        parse_grid("1,x")


def test_tune_ratio_command_takes_train_flags(tmp_path, monkeypatch, capsys):
    fake = FakeTrain()
    monkeypatch.setattr(sweep, "_default_train", fake)
    config = tmp_path / "train.yaml"
    config.write_text("rank: 8\nseed: 5\n")
    args = build_parser().parse_args(["tune-ratio", "--config", str(config), "--lr", "1e-3", "--grid", "1/2,2,8",
                              "--min-steps", "4", "--output", str(tmp_path / "tune")])
    assert args.func(args) == 0
    assert "best λ = 2" in capsys.readouterr().out
    cfg = rundir.recorded_config(tmp_path / "tune" / "rung-0" / "runs" / "ratio-0.5")
    assert (cfg["rank"], cfg["seed"], cfg["lr"], cfg["max_steps"]) == (8, 5, 1e-3, 4)


def test_tune_report_counts_agree_with_their_nouns(tmp_path):
    result = tune.tune_ratio(TrainConfig(), tmp_path, grid=[0.5, 2], min_steps=1, rounds=2, train_fn=FakeTrain())
    text = (tmp_path / "tune.md").read_text()
    assert "round 0 (1 step)" in text and "after 1 step (round 0, against 2 λ values)" in text
    assert "1 steps" not in text and len(result.rungs) == 1


def test_the_search_chooses_on_validation_and_only_reports_the_test_loss(tmp_path):
    """Validation and test disagree: validation's best λ (1/2) wins, test's (8) is not chosen; every run has a
    validation split as large as its test split, both from the same seed (one split for the whole search)."""
    fake = FakeTrain(loss=lambda cfg: 2.0 + abs(math.log2(cfg.ratio / 8)),
                     val_loss=lambda cfg: 2.0 + abs(math.log2(cfg.ratio / 0.5)))
    result = tune.tune_ratio(TrainConfig(seed=3, eval_size=20), tmp_path, grid=[0.5, 2, 8], min_steps=2, train_fn=fake)
    assert result.best_ratio == 0.5 and result.best_loss == 2.0 and result.best_test_loss == 6.0
    assert {(c.val_size, c.eval_size, c.data_seed()) for c in fake.configs} == {(20, 20, 3)}
    text = (tmp_path / "tune.md").read_text()
    assert "validation loss 2.0000" in text and "test split, which chose nothing: 6.0000" in text
    record = json.loads((tmp_path / "tune.json").read_text())
    assert record["best_test_eval_loss"] == 6.0 and record["val_size"] == 20

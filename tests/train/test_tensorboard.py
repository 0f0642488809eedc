"""`--report-to tensorboard` leaves its event files in RUN/tensorboard/, after the run's checkpoints/ is deleted,
holding the same training losses as log.jsonl."""

from __future__ import annotations

import json

import pytest

from oloraplus.config import TrainConfig
from oloraplus.train.recipe import train

pytest.importorskip("tensorboard")  # the `tensorboard` extra (scripts/setup.sh installs it)


def test_event_files_survive_the_run_and_hold_the_logged_losses(tiny_llama_dir, alpaca_file, tmp_path, one_thread,
                                                              monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    out = tmp_path / "run"
    train(TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), output=str(out), rank=4, alpha=8,
                      max_steps=3, batch_size=4, max_length=64, train_size=12, eval_size=4, logging_steps=1,
                      save_steps=2, report_to="tensorboard"))
    assert not (out / "checkpoints").exists()  # where transformers would have put them
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events, sorted(p.name for p in out.iterdir())

    accumulator = EventAccumulator(str(out / "tensorboard"))
    accumulator.Reload()
    logged = {(r["step"], r["loss"]) for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
              if "loss" in r and "step" in r}
    scalars = {(e.step, e.value) for e in accumulator.Scalars("train/loss")}
    assert len(scalars) == 3
    assert {step for step, _ in scalars} == {step for step, _ in logged}
    for step, value in scalars:
        assert value == pytest.approx(dict(logged)[step], rel=1e-6)  # float32 in the event file


def test_a_directory_the_user_chose_is_kept(tiny_llama_dir, alpaca_file, tmp_path, one_thread, monkeypatch):
    chosen = tmp_path / "mine"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(chosen))
    out = tmp_path / "run"
    train(TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), output=str(out), rank=4, alpha=8,
                      max_steps=1, batch_size=4, max_length=64, train_size=8, eval_size=4, report_to="tensorboard"))
    assert list(chosen.glob("events.out.tfevents.*")) and not (out / "tensorboard").exists()

"""Numerical faults: a NaN/inf loss or weight stops the run in one line, keeps good checkpoints, records the step."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from oloraplus import rundir
from oloraplus.cli.main import main
from oloraplus.train import checkpoint
from oloraplus.train.trainer import RatioTrainer


def flags(model_dir, data, out, *extra: str) -> list[str]:
    return ["train", "--model", str(model_dir), "--data", str(data), "--rank", "4", "--alpha", "8",
            "--max-steps", "10", "--batch-size", "4", "--max-length", "64", "--train-size", "48", "--eval-size", "12",
            "--logging-steps", "1", "--seed", "3", *extra, "--output", str(out)]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def test_huge_learning_rate_stops_before_a_poisoned_checkpoint(tiny_llama_dir, alpaca_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(flags(tiny_llama_dir, alpaca_file, out, "--lr", "1e6", "--save-steps", "1")) == 2
    err = one_line_error(capsys)
    failure = json.loads((tmp_path / "run.partial" / rundir.FAILURE_FILE).read_text())
    step = failure["step"]
    assert f"training stopped at step {step}" in err and "--lr" in err and "non-finite" in err
    assert not out.exists()
    # every checkpoint kept was written before the divergence and holds finite weights only
    kept = checkpoint.list_checkpoints(tmp_path / "run.partial" / "checkpoints")
    assert kept and [checkpoint.checkpoint_step(p) for p in kept] == list(range(1, step))
    assert failure["last_checkpoint"] == (str(kept[-1]) if kept else None)
    for path in kept:
        assert all(torch.isfinite(t).all() for t in load_file(path / "adapter_model.safetensors").values())


def test_nan_loss_keeps_last_checkpoint_records_step_and_resume_finishes(
        tiny_llama_dir, alpaca_file, tmp_path, capsys, monkeypatch):
    compute_loss = RatioTrainer.compute_loss

    def nan_at_step_5(self, model, inputs, *args, **kwargs):
        loss = compute_loss(self, model, inputs, *args, **kwargs)
        return loss * float("nan") if self.state.global_step == 4 else loss

    monkeypatch.setattr(RatioTrainer, "compute_loss", nan_at_step_5)
    out, work = tmp_path / "run", tmp_path / "run.partial"
    assert main(flags(tiny_llama_dir, alpaca_file, out, "--save-steps", "2")) == 2
    err = one_line_error(capsys)
    last = work / "checkpoints" / "checkpoint-4"
    assert "training stopped at step 5: the loss is not finite (loss nan)" in err and str(last) in err
    failure = json.loads((work / rundir.FAILURE_FILE).read_text())
    assert failure["step"] == 5 and failure["loss"] == "nan" and failure["last_checkpoint"] == str(last)
    assert checkpoint.last_checkpoint(work / "checkpoints") == last
    logged = [json.loads(line)["step"] for line in (work / "log.jsonl").read_text().splitlines()]
    assert max(logged) == 4  # nothing of the failed step was logged

    monkeypatch.setattr(RatioTrainer, "compute_loss", compute_loss)  # the fault was transient
    assert main(flags(tiny_llama_dir, alpaca_file, out, "--save-steps", "2", "--resume")) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 10
    assert not (out / rundir.FAILURE_FILE).exists() and not work.exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_failure_record_is_strict_json(tmp_path, value):
    path = checkpoint.write_failure(tmp_path, {"step": 3, "loss": value})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON {c}")) == {
        "step": 3, "loss": str(value)}

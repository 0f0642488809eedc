"""What `oloraplus train` and `eval` tell a user is true: counts, one train loss, lrs, the curve, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oloraplus.cli.main import main
from oloraplus.train import checkpoint
from oloraplus.train.plots import draw_losses, read_log
from oloraplus.train.trainer import RatioTrainer


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def mixed_file(tmp_path_factory) -> Path:
    """24 records: every 4th reply far past --max-length 48 (truncated), records 1 and 5 all prompt (dropped)."""
    records = []
    for i in range(24):
        instruction, output = f"Repeat the word alpha {i % 3 + 1} times.", " ".join(["alpha"] * (i % 3 + 1))
        if i % 4 == 0:
            output = " ".join(["beta gamma"] * 40)
        if i in (1, 5):
            instruction = "Repeat " + " ".join(["delta"] * 60)
        records.append({"instruction": instruction, "input": "", "output": output})
    path = tmp_path_factory.mktemp("data") / "mixed.json"
    path.write_text(json.dumps(records))
    return path


def flags(model_dir, data, out, *extra: str) -> list[str]:
    return ["train", "--model", str(model_dir), "--data", str(data), "--method", "lora", "--rank", "4", "--alpha", "8",
            "--lr", "3e-3", "--max-steps", "4", "--batch-size", "2", "--max-length", "48", "--train-size", "16",
            "--eval-size", "8", "--seed", "3", *extra, "--output", str(out)]


def test_train_prints_progress_lines_and_one_true_summary(tiny_llama_dir, mixed_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OLORAPLUS_PROGRESS", "1")  # stdout is captured, not a TTY: plain lines, no bar
    out = tmp_path / "run"
    assert main(flags(tiny_llama_dir, mixed_file, out, "--logging-steps", "3")) == 0
    text = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    log = [r for r in read_log(out / "log.jsonl") if "loss" in r]

    assert "{'loss'" not in text and "'train_loss'" not in text  # the Trainer's raw dicts are gone
    assert [r["step"] for r in log] == [1, 3, 4]  # the last step is always logged
    for r in log:  # the console shows exactly what log.jsonl holds
        assert f"step {r['step']}/4  loss {r['loss']:.4f}  lr_A {r['lr_A']:.3g}  lr_B {r['lr_B']:.3g}" in text
    assert log[0]["lr_A"] == pytest.approx(3e-3)  # the lr step 1 used, before the scheduler stepped

    d = metrics
    assert d["train_dropped"] + d["eval_dropped"] > 0 and d["train_truncated"] > 0
    assert (f"train: {d['train_examples']} examples ({d['train_truncated']} truncated, {d['train_dropped']} dropped), "
            f"4 steps, mean train loss {d['train_loss']:.4f}") in text
    assert f"eval:  {d['eval_examples']} examples ({d['eval_truncated']} truncated" in text
    assert f"eval loss {d['eval_loss']:.4f}, perplexity {d['perplexity']:.2f}" in text
    assert f"{d['tokens_per_s']:.0f} tokens/s" in text and f"run:   {out}" in text
    warnings = [line for line in text.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and "--max-length 48" in warnings[0] and "dropped" in warnings[0]  # up front, at end
    assert f"evaluating {d['eval_examples']} examples ..." in text


def test_train_loss_is_the_mean_over_every_step(tiny_llama_dir, alpaca_file, tmp_path):
    """With a log per step each logged loss is one step's, so their plain mean is the run's mean."""
    out = tmp_path / "run"
    assert main(flags(tiny_llama_dir, alpaca_file, out, "--logging-steps", "1", "--max-steps", "5")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [r["loss"] for r in read_log(out / "log.jsonl") if "loss" in r]
    assert len(losses) == 5
    assert metrics["train_loss"] == pytest.approx(sum(losses) / 5, rel=1e-6)
    assert metrics["last_logged_loss"] == losses[-1] and "mean_train_loss" not in metrics


def test_loss_plot_draws_every_point_with_markers_for_a_short_run():
    short = draw_losses([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "eval_loss": 1.7}])
    train, evals = short.axes[0].get_lines()
    assert list(train.get_xdata()) == [1, 2] and train.get_marker() == "o"
    assert list(evals.get_xdata()) == [2] and evals.get_marker() == "o"  # one point: visible only as a marker
    long = draw_losses([{"step": s, "loss": 1.0 / s} for s in range(1, 201)])
    (line,) = long.axes[0].get_lines()
    assert len(line.get_xdata()) == 200 and line.get_marker() in (None, "None", "")


def interrupted_run(tiny_llama_dir, data, out: Path, monkeypatch, *extra: str) -> None:
    """A run stopped (as by Ctrl-C) during step 3, after its checkpoint of step 2."""
    step = RatioTrainer.training_step

    def ctrl_c_at_step_3(self, *args, **kwargs):
        if self.state.global_step == 2:
            raise KeyboardInterrupt
        return step(self, *args, **kwargs)

    monkeypatch.setattr(RatioTrainer, "training_step", ctrl_c_at_step_3)
    assert main(flags(tiny_llama_dir, data, out, "--save-steps", "2", *extra)) == 130
    monkeypatch.setattr(RatioTrainer, "training_step", step)


def test_resume_says_where_it_resumes_and_measures_only_its_own_session(
        tiny_llama_dir, alpaca_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupted_run(tiny_llama_dir, alpaca_file, out, monkeypatch, "--max-steps", "6")
    saved = json.loads((tmp_path / "run.partial" / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())
    capsys.readouterr()

    assert main(flags(tiny_llama_dir, alpaca_file, out, "--save-steps", "2", "--max-steps", "6", "--resume")) == 0
    text = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"resuming from {tmp_path / 'run.partial' / 'checkpoints' / 'checkpoint-2'} (step 2)" in text
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 6
    assert metrics["seconds_per_step"] == pytest.approx(metrics["train_runtime_s"] / 4)
    session_tokens = metrics["train_tokens"] - saved["num_input_tokens_seen"]
    assert 0 < session_tokens < metrics["train_tokens"]
    assert metrics["tokens_per_s"] == pytest.approx(session_tokens / metrics["train_runtime_s"])
    assert "this session: steps 3-6, resumed from step 2" in text


def test_resume_with_no_checkpoint_is_refused_instead_of_starting_over(
        tiny_llama_dir, alpaca_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    step = RatioTrainer.training_step

    def ctrl_c_at_step_1(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(RatioTrainer, "training_step", ctrl_c_at_step_1)
    assert main(flags(tiny_llama_dir, alpaca_file, out)) == 130
    monkeypatch.setattr(RatioTrainer, "training_step", step)
    capsys.readouterr()
    assert main(flags(tiny_llama_dir, alpaca_file, out, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--resume" in err and "no checkpoint" in err and "--overwrite" in err
    assert checkpoint.last_checkpoint(tmp_path / "run.partial" / "checkpoints") is None
    assert not out.exists()


def test_eval_command_prints_its_counts(tiny_llama_dir, mixed_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(flags(tiny_llama_dir, mixed_file, out, "--max-steps", "1")) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--data", str(mixed_file), "--output", str(tmp_path / "scores")]) == 0
    text = capsys.readouterr().out
    stored = json.loads((tmp_path / "scores" / "eval.json").read_text())
    assert "evaluating" in text and f"of 24 records in {mixed_file}" in text
    assert (f"eval:  {stored['eval_examples']} examples ({stored['eval_truncated']} truncated, "
            f"{stored['eval_dropped']} dropped)") in text
    assert f"eval loss {stored['eval_loss']:.4f}" in text
    assert stored["eval_dropped"] > 0 and "warning: examples longer than --max-length 48: eval" in text

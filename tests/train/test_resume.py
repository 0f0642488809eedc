"""Crash safety: a run killed at a random step and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import Trainer

from oloraplus.cli.main import main
from oloraplus.config import TrainConfig, to_dict
from oloraplus.train import checkpoint
from tests.helpers import SESSION_KEYS

SAVE_STEPS, MAX_STEPS = 2, 20
KILL_SEED = 20240607  # the kill step is drawn at random, from a fixed seed so that a failure reproduces


def flags(model_dir, data, out, *extra: str) -> list[str]:
    return ["train", "--model", str(model_dir), "--data", str(data), "--method", "olora", "--ratio", "4",
            "--rank", "4", "--alpha", "8", "--lr", "3e-3", "--max-steps", str(MAX_STEPS), "--batch-size", "4",
            "--max-length", "64", "--train-size", "48", "--eval-size", "12", "--logging-steps", "3",
            "--eval-steps", "10", "--save-steps", str(SAVE_STEPS), "--seed", "3",
            "--diagnostics-steps", "5",  # a fixed schedule: the automatic one follows measured time, so its steps vary
            *extra, "--output", str(out)]


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """The killed run is a subprocess with OMP_NUM_THREADS=1: the same thread count keeps float sums identical."""
    yield


@pytest.fixture(scope="module")
def reference(tiny_llama_dir, alpaca_file, tmp_path_factory, one_thread_module) -> Path:
    """The same command, never interrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(flags(tiny_llama_dir, alpaca_file, out)) == 0
    return out


def assert_same_run(got: Path, want: Path) -> None:
    a = load_file(got / "adapter" / "adapter_model.safetensors")
    b = load_file(want / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), (key, (a[key] - b[key]).abs().max())
    strip = lambda m: {k: v for k, v in m.items() if k not in SESSION_KEYS}  # noqa: E731
    metrics = [strip(json.loads((run / "metrics.json").read_text())) for run in (got, want)]
    assert metrics[0] == metrics[1]
    # the resumed log is the uninterrupted one: lines written after the checkpoint were dropped, not doubled
    assert (got / "log.jsonl").read_text() == (want / "log.jsonl").read_text()


def test_run_killed_at_a_random_checkpoint_resumes_to_the_same_adapter_and_metrics(
        tiny_llama_dir, alpaca_file, tmp_path, reference):
    k = random.Random(KILL_SEED).randint(2, 5)
    out = tmp_path / "run"
    target = tmp_path / "run.partial" / "checkpoints" / f"checkpoint-{k * SAVE_STEPS}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OLORAPLUS_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "oloraplus", *flags(tiny_llama_dir, alpaca_file, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # no deadline (a loaded machine may take minutes): the run ends by itself after MAX_STEPS, which ends the wait
    while not target.exists():
        if proc.poll() is not None:
            pytest.fail(f"checkpoint-{k * SAVE_STEPS} never appeared: {proc.communicate()[1][-2000:]!r}")
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL  # killed mid-training, not finished
    assert not out.exists()
    steps = [checkpoint.checkpoint_step(p) for p in checkpoint.list_checkpoints(target.parent)]
    assert k * SAVE_STEPS in steps and max(steps) < MAX_STEPS

    assert main(flags(tiny_llama_dir, alpaca_file, out, "--resume")) == 0
    assert not out.with_name("run.partial").exists()
    assert_same_run(out, reference)


def test_failed_checkpoint_write_keeps_the_previous_one_and_resume_finishes(
        tiny_llama_dir, alpaca_file, tmp_path, reference, monkeypatch, capsys):
    save = Trainer._save_optimizer_and_scheduler

    def disk_full_at_step_6(self, output_dir):
        if self.state.global_step == 6:
            (Path(output_dir) / "optimizer.pt").write_bytes(b"half")  # a partial file, as a full disk leaves
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", disk_full_at_step_6)
    out = tmp_path / "run"
    assert main(flags(tiny_llama_dir, alpaca_file, out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "step 6" in err and "No space left on device" in err and "checkpoint-4 is intact" in err
    checkpoints = out.with_name("run.partial") / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-2", "checkpoint-4"]  # no staging leftover
    assert not out.exists()

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save)
    assert main(flags(tiny_llama_dir, alpaca_file, out, "--resume")) == 0
    assert_same_run(out, reference)


def test_torch_save_failing_on_a_full_disk_is_one_line_too(tiny_llama_dir, alpaca_file, tmp_path, monkeypatch, capsys):
    """On a full disk torch.save raises RuntimeError, not OSError; the message below is what torch 2.x gives."""
    save = Trainer._save_optimizer_and_scheduler

    def torch_save_fails_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        return save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", torch_save_fails_at_step_4)
    out = tmp_path / "run"
    assert main(flags(tiny_llama_dir, alpaca_file, out, "--max-steps", "6")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "step 4" in err and "disk full" in err and "unexpected pos" in err and "checkpoint-2 is intact" in err
    assert [p.name for p in (tmp_path / "run.partial" / "checkpoints").iterdir()] == ["checkpoint-2"]


def test_resume_skips_half_written_and_staged_checkpoints(tmp_path):
    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpoint.COMPLETE_MARKER).write_text("{}")
    (tmp_path / "checkpoint-6").mkdir()  # written in place by an older version, killed before the state file
    staged = checkpoint.staging_dir(tmp_path, 8)
    staged.mkdir()
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8)) + '{"step": 8, "lo')

    assert checkpoint.prepare_resume(tmp_path, log, tmp_path) == tmp_path / "checkpoint-4"
    assert not staged.exists()
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]


def test_resume_with_other_options_is_refused(tiny_llama_dir, alpaca_file, tmp_path, capsys):
    out = tmp_path / "run"
    work = out.with_name("run.partial")
    work.mkdir()
    started = TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), lr=0.003, output=str(out))
    (work / "config.yaml").write_text(yaml.safe_dump({"config": to_dict(started)}))
    assert main(["train", "--model", str(tiny_llama_dir), "--data", str(alpaca_file), "--lr", "0.01", "--resume",
                 "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--resume" in err and "--lr is 0.01" in err and "0.003" in err
    assert not out.exists() and sorted(p.name for p in work.iterdir()) == ["config.yaml"]

"""`torchrun --nproc_per_node 2 -m oloraplus train` on CPU (gloo) matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from oloraplus.config import TrainConfig
from oloraplus.train.recipe import train


def test_two_processes_match_one_process(tiny_llama_dir, alpaca_file, tmp_path):
    common = ["--model", str(tiny_llama_dir), "--data", str(alpaca_file), "--rank", "4", "--alpha", "8",
              "--lr", "3e-3", "--max-steps", "6", "--max-length", "64", "--train-size", "48", "--eval-size", "12",
              "--no-group-by-length", "--seed", "5", "--ratio", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OLORAPLUS_PROGRESS": "0"}
    # --standalone: a free rendezvous port (a fixed one collides with any other run on the machine)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "oloraplus", "train", *common, "--batch-size", "2", "--output", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())

    cfg = TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), rank=4, alpha=8, lr=3e-3, max_steps=6,
                      max_length=64, train_size=48, eval_size=12, group_by_length=False, seed=5, ratio=4.0,
                      batch_size=4, output=str(tmp_path / "single"))
    single = train(cfg).metrics
    assert ddp["steps"] == single["steps"] == 6
    assert ddp["train_tokens"] == single["train_tokens"]
    assert abs(ddp["eval_loss"] - single["eval_loss"]) < 1e-3, (ddp["eval_loss"], single["eval_loss"])

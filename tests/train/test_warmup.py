"""--warmup-ratio is a fraction of the run's steps (transformers 5 reads warmup_steps ≥ 1 as a count)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import get_scheduler

from oloraplus.config import TrainConfig
from oloraplus import rundir
from oloraplus.train.recipe import _training_arguments, train

LR = 1e-3


def linear_reference(k: int, warmup: int, total: int) -> float:
    """The linear schedule written out: η·k/W while warming up, then η·(N − k)/(N − W)."""
    return LR * k / warmup if k < warmup else LR * max(0.0, (total - k) / max(1, total - warmup))


@pytest.mark.parametrize("ratio,total,warmup", [(1.0, 20, 20), (1.0, 7, 7), (0.1, 20, 2), (0.1, 95, 10), (0.0, 20, 0)])
def test_the_schedule_the_trainer_builds_warms_up_over_the_fraction(ratio, total, warmup, tmp_path):
    args = _training_arguments(TrainConfig(warmup_ratio=ratio, lr=LR), rundir.paths(tmp_path / "run"))
    assert args.get_warmup_steps(total) == warmup  # what Trainer.create_scheduler passes on
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=args.get_warmup_steps(total),
                              num_training_steps=total)
    for k in range(total):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(linear_reference(k, warmup, total), abs=1e-12), k
        optimizer.step()
        scheduler.step()


@pytest.mark.usefixtures("one_thread")
def test_a_ratio_of_one_warms_up_over_every_step_of_an_epoch_run(tiny_llama_dir, alpaca_file, tmp_path):
    """6 steps from --epochs (24 examples / batch 4): step s trains at η·(s-1)/6, the lr of A it logs, up to
    5η/6 at the last step; the old one-step warm-up gave η at step 2, then fell."""
    cfg = TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), output=str(tmp_path / "run"), method="lora",
                      rank=2, lr=LR, warmup_ratio=1.0, epochs=1, batch_size=4, train_size=24, eval_size=4,
                      max_length=64, logging_steps=1)
    train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr_A"] for r in records if r.get("lr_A") is not None}
    assert sorted(lrs) == [1, 2, 3, 4, 5, 6]
    for step, lr in lrs.items():  # the lr the step used: the scheduler had stepped s - 1 times
        assert lr == pytest.approx(linear_reference(step - 1, warmup=6, total=6), abs=1e-12), step
    assert lrs[6] == pytest.approx(LR * 5 / 6)

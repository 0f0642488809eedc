"""Helpers for the experiment tests: a cheap stand-in for `train` and hand-written run directories."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import yaml

from oloraplus.config import TrainConfig, to_dict
from oloraplus.errors import NonFiniteLossError
from oloraplus import rundir


def write_run(path: Path, config: dict[str, Any], metrics: dict[str, Any], log: list[dict] | None = None,
              generations: list[dict] | None = None) -> Path:
    """A finished run directory with exactly the files `train` writes that the report reads."""
    path.mkdir(parents=True, exist_ok=True)
    full = to_dict(TrainConfig(**config))
    (path / "config.yaml").write_text(yaml.safe_dump({"config": full}))
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log or []))
    if generations is not None:
        (path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in generations))
    return path


def objective(cfg: TrainConfig) -> float:
    """A known eval-loss landscape: minimum at λ = 2, shrinking with the step budget, a little seed noise."""
    return 2.0 + 0.1 * (math.log2(cfg.ratio) - 1.0) ** 2 + 4.0 / cfg.max_steps + 0.001 * cfg.seed


class FakeTrain:
    """Writes a run the way `train` does (`.partial` then rename) with `objective` as eval loss; counts calls."""

    def __init__(self, fail_on_call: int | None = None, loss: Callable[[TrainConfig], float] = objective,
                 diverges: Callable[[TrainConfig], bool] = lambda cfg: False,
                 val_loss: Callable[[TrainConfig], float] | None = None):
        self.calls: list[str] = []
        self.configs: list[TrainConfig] = []
        self.fail_on_call = fail_on_call
        self.loss = loss
        self.diverges = diverges
        self.val_loss = val_loss  # with --val-size: val_eval_loss (default: the same as the test loss)

    def __call__(self, cfg: TrainConfig) -> dict:
        cfg.validate()
        run = rundir.plan_run_dir(cfg.output, overwrite=cfg.overwrite, resume=cfg.resume)
        rundir.start(run, resume=False)
        (run.work / "config.yaml").write_text(yaml.safe_dump({"config": to_dict(cfg)}))
        if self.fail_on_call == len(self.calls) + 1:
            raise KeyboardInterrupt  # killed mid-run: a half-written .partial stays behind
        self.calls.append(Path(cfg.output).name)
        self.configs.append(cfg)
        if self.diverges(cfg):  # as RatioTrainer does: a log up to the bad step, then the error
            (run.work / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 9.5}) + "\n")
            raise NonFiniteLossError("training stopped at step 2: the loss is not finite (loss nan)",
                                     what="the loss is not finite", step=2, loss=math.nan, last_checkpoint=None)
        loss = self.loss(cfg)
        steps = cfg.max_steps
        (run.work / "log.jsonl").write_text(json.dumps({"step": steps, "eval_loss": loss}) + "\n")
        metrics = {"method": cfg.method, "ratio": cfg.ratio, "steps": steps, "eval_loss": loss,
                   "train_runtime_s": 0.1 * len(self.calls)}
        if cfg.val_size:
            metrics["val_eval_loss"] = self.val_loss(cfg) if self.val_loss else loss
        (run.work / "metrics.json").write_text(json.dumps(metrics))
        rundir.finish(run)
        return metrics

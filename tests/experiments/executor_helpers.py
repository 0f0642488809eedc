"""Stand-ins for `train` that run inside Ray or Slurm workers: other processes, so they count attempts in files."""

from __future__ import annotations

import csv
import os
import signal
import sys
from pathlib import Path

import yaml
from experiment_helpers import FakeTrain

from oloraplus import rundir
from oloraplus.config import TrainConfig, to_dict

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"


def worker_pythonpath() -> str:
    """PYTHONPATH for worker processes: this package's source and these helpers (the workers unpickle them)."""
    parts = [str(SRC), str(HERE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return os.pathsep.join(dict.fromkeys(parts))


class KillingTrain(FakeTrain):
    """FakeTrain whose worker SIGKILLs itself mid-run (its `.partial` started) on the first `kills[name]` attempts.

    Every attempt leaves a file `<tally>/<run>.<attempt>` holding the worker's pid.
    """

    def __init__(self, tally: Path, kills: dict[str, int], **kwargs):
        super().__init__(**kwargs)
        self.tally, self.kills = Path(tally), kills

    def __call__(self, cfg: TrainConfig) -> dict:
        name = Path(cfg.output).name
        attempt = len(list(self.tally.glob(f"{name}.*")))
        (self.tally / f"{name}.{attempt}").write_text(str(os.getpid()))
        if attempt < self.kills.get(name, 0):
            run = rundir.plan_run_dir(cfg.output, overwrite=cfg.overwrite, resume=False)
            rundir.start(run, resume=False)
            (run.work / "config.yaml").write_text(yaml.safe_dump({"config": to_dict(cfg)}))
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(cfg)


def attempts(tally: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in tally.iterdir():
        name = path.name.rsplit(".", 1)[0]
        counts[name] = counts.get(name, 0) + 1
    return counts


def rows(path: Path, drop: tuple[str, ...]) -> list[dict]:
    """results.csv without the columns that measure this session's speed."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


class SlowTrain(FakeTrain):
    """FakeTrain that first notes its worker's pid in `<tally>/<run>.<attempt>`, then sleeps `seconds`."""

    def __init__(self, tally: Path, seconds: float, **kwargs):
        super().__init__(**kwargs)
        self.tally, self.seconds = Path(tally), seconds

    def __call__(self, cfg: TrainConfig) -> dict:
        import time

        name = Path(cfg.output).name
        (self.tally / f"{name}.{len(list(self.tally.glob(f'{name}.*')))}").write_text(str(os.getpid()))
        time.sleep(self.seconds)
        return super().__call__(cfg)

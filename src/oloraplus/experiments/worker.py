"""What runs where a run landed (this process, a Ray worker, a Slurm job): the job, its outcome, its host and GPU.

Everything here is imported by the workers; it stays free of the driver's code so that they load little.
"""

from __future__ import annotations

import gc
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from oloraplus.errors import OloraError
from oloraplus.io import atomic_write_json


@dataclass(frozen=True)
class Job:
    name: str  # the run's name: file-safe and unique within a sweep
    label: str  # '[2/4] method=olora ratio=2': how progress lines name it
    fn: Callable[[], Any]  # what trains it; picklable (a module-level function with its arguments) for ray/slurm


@dataclass(frozen=True)
class Outcome:
    host: str
    gpu: str
    seconds: float
    value: Any = None  # what the job returned
    error: str | None = None  # a project error (bad data, a diverged compose run): retrying cannot help

    @property
    def where(self) -> dict[str, str]:
        return {"host": self.host, "gpu": self.gpu}


def here() -> dict[str, str]:
    """This process's host and GPU ('cpu' without one): what a progress line and sweep.json say a run ran on."""
    import torch

    gpu = "cpu"
    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpu = f"GPU {visible}" if visible else f"GPU {torch.cuda.current_device()}"
    return {"host": socket.gethostname(), "gpu": gpu}


def run_job(fn: Callable[[], Any], marker: str | None = None, threads: int | None = None,
            catch: bool = True) -> Outcome:
    """Run one job where it landed: note its start for the driver, pin its threads, time it.

    `threads`: a run given N cores uses N torch threads, so runs sharing a machine do not oversubscribe it.
    A project error (bad data, ...) comes back as a value: a retry would fail the same way.
    """
    where = here()
    if threads:
        import torch

        torch.set_num_threads(threads)
    if marker:
        atomic_write_json(marker, {**where, "pid": os.getpid()})
    start = time.perf_counter()
    try:
        value = fn()
    except OloraError as exc:
        if not catch:
            raise
        return Outcome(**where, seconds=time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")
    return Outcome(**where, seconds=time.perf_counter() - start, value=value)


def train_once(cfg: Any, train_fn: Callable[[Any], Any] | None = None) -> None:
    """Train one run and free its model before the next one lands in the same worker (nothing big comes back)."""
    if train_fn is None:
        from oloraplus.train.recipe import train as train_fn  # heavy imports only where something trains
    result = train_fn(cfg)
    if getattr(result, "model", None) is not None:  # PEFT wrappers hold reference cycles
        del result
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

"""`--executor slurm`: the runs as one Slurm job array, submitted with submitit from the sweep directory.

submitit pickles each run's job into DIR/executor/slurm/ (so DIR must be on a filesystem the compute nodes
share) and writes each job's stdout/stderr there too; a retried run is a new job. `--slurm-cluster local`
runs the same jobs as processes on this machine (submitit's LocalExecutor): how the tests run it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from oloraplus.experiments.executor_config import ExecutorConfig
from oloraplus.experiments.worker import Job, Outcome, run_job

JOB_NAME = "oloraplus"  # what `squeue`/`scancel --name` see


class SlurmLostError(RuntimeError):
    """A Slurm job that ended without a result (killed, timed out, node lost), in one line."""


def _one_line(exc: BaseException) -> SlurmLostError:
    """submitit's errors carry the worker's whole traceback: keep its last line (the exception) or the first."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[-1] if lines and "trace" in lines[0] else (lines[0] if lines else type(exc).__name__)
    return SlurmLostError(text[:300])


class SlurmBackend:
    name = "slurm"

    def __init__(self, cfg: ExecutorConfig, folder: Path):
        import submitit

        self.executor = submitit.AutoExecutor(folder=folder / "slurm", cluster=cfg.slurm_cluster)
        # None is "not set" for submitit: no GPU line in the batch script of a CPU run
        self.executor.update_parameters(name=JOB_NAME, timeout_min=cfg.slurm_time, nodes=1, tasks_per_node=1,
                                        cpus_per_task=cfg.cpus_per_run, gpus_per_node=int(cfg.gpus_per_run or 0) or None,
                                        slurm_partition=cfg.slurm_partition)
        self.threads = cfg.cpus_per_run
        self.queue: list[tuple[Job, str]] = []
        self.jobs: dict[Any, Job] = {}

    def submit(self, job: Job, marker: str) -> None:
        self.queue.append((job, marker))  # sent together, as one array, at the next wait

    def _flush(self) -> None:
        if not self.queue:
            return
        with self.executor.batch():
            submitted = [(job, self.executor.submit(run_job, job.fn, marker, self.threads))
                         for job, marker in self.queue]
        self.queue.clear()
        self.jobs.update({handle: job for job, handle in submitted})

    def wait(self, timeout: float) -> list[tuple[Job, Outcome | BaseException]]:
        self._flush()
        deadline = time.monotonic() + timeout
        while True:
            done = [handle for handle in self.jobs if handle.done()]
            if done or time.monotonic() >= deadline:
                break
            time.sleep(min(0.1, timeout))
        finished = []
        for handle in done:
            job = self.jobs.pop(handle)
            try:
                finished.append((job, handle.result()))
            except Exception as exc:  # killed, timed out, or a failure other than a project error
                finished.append((job, _one_line(exc)))
        return finished

    def close(self) -> None:
        for handle in self.jobs:
            if not handle.done():
                handle.cancel(check=False)
        self.jobs.clear()

"""`--executor slurm`: the runs as one Slurm job array, submitted with submitit from the sweep directory.

submitit pickles each run's job into DIR/executor/slurm/ (so DIR must be on a filesystem the compute nodes
share) and writes each job's stdout/stderr there too; a retried run is a new job. `--slurm-cluster local`
runs the same jobs as processes on this machine (submitit's LocalExecutor): how the tests run it.

A job array outlives a driver killed by SIGKILL (a closed terminal, an OOM kill of the login shell), and the next
driver would start the unfinished runs again beside the old jobs still training them. So the driver keeps the
ids of the jobs it has in flight in DIR/executor/slurm/jobs.json, and a new driver (which holds the sweep lock:
the old one is gone) cancels the jobs listed there before it submits anything, and says so.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from oloraplus.experiments.executor_config import ExecutorConfig
from oloraplus.experiments.worker import Job, Outcome, run_job
from oloraplus.io import atomic_write_json

JOB_NAME = "oloraplus"  # what `squeue`/`scancel --name` see
LEDGER = "jobs.json"  # job id -> run name, for the jobs this driver has in flight


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

        self.cluster = cfg.slurm_cluster
        self.ledger = folder / "slurm" / LEDGER
        self._cancel_left_behind()
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
        self._write_ledger()

    def _write_ledger(self) -> None:
        atomic_write_json(self.ledger, {str(handle.job_id): job.name for handle, job in self.jobs.items()})

    def _cancel_left_behind(self) -> None:
        """Cancel the jobs a killed driver left in flight (its ledger), so no run trains twice at once."""
        try:
            left = json.loads(self.ledger.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if not isinstance(left, dict) or not left:
            return
        if self.cluster == "local":
            stopped = [job_id for job_id in left if _stop_local_job(job_id)]
        else:
            from submitit.slurm.slurm import SlurmJob

            for job_id in left:
                SlurmJob(folder=self.ledger.parent, job_id=job_id).cancel(check=False)  # scancel; no-op if ended
            stopped = list(left)
        if stopped:
            runs = ", ".join(left[job_id] for job_id in stopped)
            print(f"{self.ledger}: cancelled {len(stopped)} job(s) a driver that is gone left behind (job "
                  f"{', '.join(stopped)}: {runs}); their runs start again", file=sys.stderr, flush=True)
        self.ledger.unlink(missing_ok=True)

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
        if done:
            self._write_ledger()
        return finished

    def close(self) -> None:
        for handle in self.jobs:
            if not handle.done():
                handle.cancel(check=False)
        self.jobs.clear()
        self.ledger.unlink(missing_ok=True)


def _stop_local_job(job_id: str) -> bool:
    """SIGKILL a job of submitit's local executor if it still runs: its id is the pid of a controller process whose
    children run the task (they ignore SIGTERM, as Slurm tasks must), so the children go first (Linux /proc)."""
    try:
        pid = int(job_id)
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ValueError, OSError):
        return False
    if b"submitit" not in command:  # the pid was reused by something else
        return False
    for victim in [*_children(pid), pid]:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return True


def _children(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc/*/stat)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # ended while we looked
        if int(fields[1]) == pid:  # field 4 of proc(5): the parent's pid
            found.append(int(stat.parent.name))
    return found

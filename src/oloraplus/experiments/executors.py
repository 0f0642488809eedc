"""Where a sweep's runs train: here one after another (`local`), as Ray tasks (`ray`) or a Slurm job array (`slurm`).

`sweep`, `tune-ratio` and `compose-study` plan their runs, names and resume exactly as before; only the place a run
trains changes. A backend (`executor_ray`, `executor_slurm`) has three verbs: `submit` a job, `wait` for finished
ones, `close`. `run_jobs` drives any of them: it prints each run's start and end with its host and GPU and a
running count, retries a run whose worker was lost (killed, crashed, node gone) up to `--retries` times, and never
lets one failed run stop the others. Workers only write their run directories; the driver writes the rest.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from oloraplus.errors import OloraError
from oloraplus.experiments.executor_config import ExecutorConfig, require_extra
from oloraplus.experiments.worker import Job, Outcome, here, run_job

EXECUTOR_DIR = "executor"  # DIR/executor/: start markers of the workers, submitit's job files and logs
POLL_S = 0.5


class RunFailedError(OloraError):
    """Runs that failed on every attempt; the others finished and were recorded."""


class Backend(Protocol):
    name: str

    def submit(self, job: Job, marker: str) -> None: ...

    def wait(self, timeout: float) -> list[tuple[Job, Outcome | BaseException]]: ...

    def close(self) -> None: ...


class LocalBackend:
    """Today's behaviour: each run in this process, in plan order; an exception stops the sweep as before."""

    name = "local"

    def __init__(self, announce: Callable[[Job, dict[str, str]], None]):
        self.queue: list[Job] = []
        self.announce = announce

    def submit(self, job: Job, marker: str) -> None:
        self.queue.append(job)

    def wait(self, timeout: float) -> list[tuple[Job, Outcome | BaseException]]:
        job = self.queue.pop(0)
        self.announce(job, here())
        return [(job, run_job(job.fn, catch=False))]

    def close(self) -> None:
        self.queue.clear()


def open_backend(cfg: ExecutorConfig, folder: Path, announce: Callable[[Job, dict[str, str]], None]) -> Backend:
    require_extra(cfg)
    if cfg.executor == "ray":
        from oloraplus.experiments.executor_ray import RayBackend

        return RayBackend(cfg)
    if cfg.executor == "slurm":
        from oloraplus.experiments.executor_slurm import SlurmBackend

        return SlurmBackend(cfg, folder)
    return LocalBackend(announce)


def reason(exc: BaseException) -> str:
    """One line for a lost or failed worker: the exception type and its message's first line."""
    cause = getattr(exc, "cause", None)  # Ray wraps the worker's own exception
    exc = cause if isinstance(cause, BaseException) else exc
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _read_marker(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # written atomically, so only a vanished file lands here
        return {"host": "?", "gpu": "?"}


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_jobs(jobs: Sequence[Job], cfg: ExecutorConfig, folder: str | Path,
             on_end: Callable[[Job, Outcome], str] | None = None) -> dict[str, Outcome]:
    """Run every job on `cfg.executor`; returns each finished job's outcome by name.

    `on_end(job, outcome)` runs in the driver after each finished job (refresh results.csv, ...) and returns a
    note for its progress line. Raises RunFailedError at the end, naming the jobs that failed on every attempt.
    """
    folder = Path(folder)
    started_dir = folder / "started"
    if cfg.executor != "local":
        started_dir.mkdir(parents=True, exist_ok=True)
    total, outcomes, failed = len(jobs), {}, {}
    attempts = {job.name: 0 for job in jobs}
    announced: set[tuple[str, int]] = set()  # (job, attempt) whose start was printed
    running: set[str] = set()

    def announce(job: Job, where: dict[str, Any]) -> None:
        announced.add((job.name, attempts[job.name]))
        running.add(job.name)
        retry = f" (attempt {attempts[job.name] + 1})" if attempts[job.name] else ""
        _say(f"{job.label}: start on {where.get('host')} ({where.get('gpu')}){retry}; {len(running)} running, "
             f"{len(outcomes)} of {total} done")

    def marker(job: Job) -> str:
        return str(started_dir / f"{job.name}.{attempts[job.name]}.json")

    def announce_started(candidates: list[Job]) -> None:  # starts the workers noted since the last look
        for job in candidates:
            path = Path(marker(job))
            if (job.name, attempts[job.name]) not in announced and path.is_file():
                announce(job, _read_marker(path))

    if not jobs:
        return outcomes
    backend = open_backend(cfg, folder, announce)
    in_flight = {}
    try:
        for job in jobs:
            backend.submit(job, marker(job))
            in_flight[job.name] = job
        while in_flight:
            finished = backend.wait(POLL_S)
            # a finished job's start first, then its end, then the starts of the jobs that took its place: the
            # running count never includes a job that has already ended
            announce_started([job for job, _ in finished if job.name in in_flight])
            for job, result in finished:
                running.discard(job.name)
                if isinstance(result, Outcome) and result.error is None:
                    del in_flight[job.name]
                    outcomes[job.name] = result
                    note = on_end(job, result) if on_end else ""
                    _say(f"{job.label}: end on {result.host} ({result.gpu}) after {result.seconds:.1f} s, "
                         f"{len(outcomes)} of {total} done{note}")
                    continue
                why = result.error if isinstance(result, Outcome) else reason(result)
                attempts[job.name] += 1
                if isinstance(result, Outcome) or attempts[job.name] > cfg.retries:
                    del in_flight[job.name]
                    failed[job.name] = f"{why} (after {attempts[job.name]} attempt{'s' * (attempts[job.name] > 1)})"
                    _say(f"{job.label}: failed: {failed[job.name]}; the other runs go on")
                    continue
                _say(f"{job.label}: lost its worker ({why}); retry {attempts[job.name]} of {cfg.retries}")
                backend.submit(job, marker(job))
            announce_started(list(in_flight.values()))
    finally:
        backend.close()  # cancels whatever still runs (an exception or Ctrl-C in the driver)
    if failed:
        names = "; ".join(f"{name}: {why}" for name, why in failed.items())
        raise RunFailedError(f"{len(failed)} of {total} runs failed, the others finished: {names}; "
                             "run the same command again to retry them")
    return outcomes

"""`--executor ray`: each run a Ray task with `--gpus-per-run` GPUs and `--cpus-per-run` cores.

A fraction of a GPU (`--gpus-per-run 0.25`) is Ray's own fractional resource: Ray starts up to 1/fraction runs
on each GPU at once and points each at its GPU (CUDA_VISIBLE_DEVICES). It shares the GPU's time and memory, not
a slice of it: the runs must fit side by side (`oloraplus plan` gives one run's memory).

It connects to a running cluster (`--ray-address auto` or ray://HOST:PORT), reuses the connection this process
already has (tests start one Ray per module), or starts a Ray on this machine that listens on the loopback
address only: Ray on Linux binds its servers to the machine's network address unless told it is a single-node
setup, so `start_local` says so (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes 127.0.0.1 the node address) and
turns the dashboard off. Ray's own task retries are off: the driver retries (`--retries`) the same way for every
executor and prints why.
"""

from __future__ import annotations

import os
from typing import Any

from oloraplus.errors import ConfigError
from oloraplus.experiments.executor_config import ExecutorConfig
from oloraplus.experiments.worker import Job, Outcome, run_job

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # read by ray._private.ray_constants when ray is imported
OBJECT_STORE_BYTES = 256 * 2**20  # runs send back a few hundred bytes; Ray's default takes 30 % of the RAM


def start_local(num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """A Ray instance of this machine's cores and GPUs, reachable from this machine only, no dashboard."""
    from ray._private import ray_constants, services

    before = os.environ.get(LOOPBACK_ENV)
    os.environ[LOOPBACK_ENV] = "0"  # its processes read it too (they import ray afresh)
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process may have imported ray before the variable was set
    try:
        import ray

        if services.get_node_ip_address() not in ("127.0.0.1", "::1"):
            raise RuntimeError("ray would listen on a network address; refusing to start it")
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, object_store_memory=OBJECT_STORE_BYTES)
    finally:
        if before is None:
            os.environ.pop(LOOPBACK_ENV, None)
        else:
            os.environ[LOOPBACK_ENV] = before
        ray_constants.ENABLE_RAY_CLUSTER = True


class RayBackend:
    name = "ray"

    def __init__(self, cfg: ExecutorConfig):
        import ray

        self.ray = ray
        self.owned = not ray.is_initialized()
        if self.owned and cfg.ray_address:
            ray.init(address=cfg.ray_address, log_to_driver=False, configure_logging=False)
        elif self.owned:
            start_local()
        have = ray.cluster_resources()
        gpus = cfg.gpus_per_run
        if gpus is None:
            gpus = 1 if have.get("GPU", 0) > 0 else 0
        if self.owned and not cfg.ray_address:  # this machine's Ray never grows: an unplaceable run waits forever
            for flag, want, kind in (("--gpus-per-run", gpus, "GPU"), ("--cpus-per-run", cfg.cpus_per_run, "CPU")):
                if want > have.get(kind, 0):
                    ray.shutdown()
                    raise ConfigError(f"{flag} {want:g}: this machine has {int(have.get(kind, 0))} {kind}s for Ray")
        self.threads = cfg.cpus_per_run
        self.task = ray.remote(run_job).options(num_cpus=cfg.cpus_per_run, num_gpus=gpus, max_retries=0)
        self.refs: dict[Any, Job] = {}

    def submit(self, job: Job, marker: str) -> None:
        self.refs[self.task.remote(job.fn, marker, self.threads)] = job

    def wait(self, timeout: float) -> list[tuple[Job, Outcome | BaseException]]:
        if not self.refs:
            return []
        ready, _ = self.ray.wait(list(self.refs), num_returns=len(self.refs), timeout=timeout)
        finished = []
        for ref in ready:
            job = self.refs.pop(ref)
            try:
                finished.append((job, self.ray.get(ref)))
            except Exception as exc:  # the worker died, or the run raised something else than a project error
                finished.append((job, exc))
        return finished

    def close(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.owned:
            self.ray.shutdown()

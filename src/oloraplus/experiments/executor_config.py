"""The executor options of `sweep`, `tune-ratio` and `compose-study`: one dataclass, its fields generate the flags.

Read before anything is planned or written: a missing extra (`oloraplus[ray]`, `oloraplus[slurm]`) fails first.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
from dataclasses import dataclass

from oloraplus.config import add_arguments, build_config, opt
from oloraplus.errors import ConfigError

EXECUTORS = ("local", "ray", "slurm")
EXTRAS = {"ray": ("ray", "Ray"), "slurm": ("submitit", "submitit")}  # executor -> (module, what it is)


@dataclass
class ExecutorConfig:
    """How a sweep's runs are spread over machines; results do not depend on it (sweep.json records it)."""

    executor: str = opt("local", "where runs train: local (here, one after another), ray (Ray tasks: this "
                                 "machine's GPUs/cores or a Ray cluster) or slurm (a Slurm job array via submitit)",
                        choices=EXECUTORS)
    retries: int = opt(1, "start a run again this many times when its worker is lost (killed, crashed, out of "
                          "memory, node gone); ray and slurm only")
    gpus_per_run: float | None = opt(None, "GPUs each run gets: 0 or 1, or with ray a fraction (0.25: four runs "
                                           "share a GPU, for models far smaller than its memory) (default: ray: 1 "
                                           "when the cluster has GPUs, else 0; slurm: 0)")
    cpus_per_run: int = opt(1, "CPU cores each run gets, also its torch threads (ray, slurm)")
    ray_address: str | None = opt(None, "a running Ray cluster: 'auto' (the one `ray start` began on this machine) "
                                        "or ray://HOST:PORT (default: start one on this machine, listening on "
                                        "127.0.0.1 only, no dashboard)")
    slurm_partition: str | None = opt(None, "Slurm partition of the job array (default: the cluster's default)")
    slurm_time: int = opt(60, "Slurm time limit of each run, in minutes")
    slurm_cluster: str = opt("slurm", "slurm (submit with sbatch) or local (submitit's local executor: the same "
                                      "jobs as processes on this machine, to try a setup without a cluster)",
                             choices=("slurm", "local"))

    def validate(self) -> "ExecutorConfig":
        if self.retries < 0:
            raise ConfigError(f"--retries: must be >= 0, got {self.retries}")
        if self.cpus_per_run < 1:
            raise ConfigError(f"--cpus-per-run: must be >= 1, got {self.cpus_per_run}")
        if self.gpus_per_run is not None and self.gpus_per_run < 0:
            raise ConfigError(f"--gpus-per-run: must be >= 0, got {self.gpus_per_run}")
        if self.gpus_per_run is not None and self.gpus_per_run > 1:
            raise ConfigError(f"--gpus-per-run {self.gpus_per_run:g}: a run on several GPUs (torchrun) is not "
                              "spread by --executor; give each run one GPU (docs/cluster.md)")
        if self.gpus_per_run not in (None, 0, 1) and self.executor != "ray":
            raise ConfigError(f"--gpus-per-run {self.gpus_per_run:g}: a share of a GPU needs --executor ray "
                              f"(--executor {self.executor} gives a run 0 or 1 whole GPU)")
        if self.slurm_time < 1:
            raise ConfigError(f"--slurm-time: must be >= 1 minute, got {self.slurm_time}")
        if self.ray_address is not None and self.executor != "ray":
            raise ConfigError(f"--ray-address: only with --executor ray (got --executor {self.executor})")
        return self


def require_extra(cfg: ExecutorConfig) -> None:
    """Fail in one line naming the extra to install (or the missing Slurm), before anything is planned or written."""
    if cfg.executor not in EXTRAS:
        return
    module, what = EXTRAS[cfg.executor]
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(f'--executor {cfg.executor}: needs {what}: pip install "oloraplus[{cfg.executor}]"') from None
    if cfg.executor == "slurm" and cfg.slurm_cluster == "slurm" and shutil.which("srun") is None:
        raise ConfigError("--executor slurm: no Slurm on this machine (srun not found); run the command where "
                          "sbatch works, or pass --slurm-cluster local to run the jobs here")


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """The executor flags of `sweep`, `tune-ratio` and `compose-study`, generated from ExecutorConfig's fields."""
    add_arguments(parser, ExecutorConfig, config_flag=False)


def executor_options(args: argparse.Namespace) -> ExecutorConfig:
    """The parsed flags as a checked ExecutorConfig, with the extra it needs importable."""
    names = {f.name for f in dataclasses.fields(ExecutorConfig)}
    cfg = build_config(ExecutorConfig, {k: v for k, v in vars(args).items() if k in names}, "command line")
    require_extra(cfg.validate())
    return cfg



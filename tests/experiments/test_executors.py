"""The executor options, the driver lock and the local executor (Ray and Slurm: test_executors_ray/_slurm.py)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from experiment_helpers import FakeTrain

from oloraplus.cli.main import build_parser, main
from oloraplus.errors import ConfigError
from oloraplus.experiments import executors, sweeplock
from oloraplus.experiments.executor_config import ExecutorConfig, executor_options
from oloraplus.experiments.executors import run_jobs
from oloraplus.experiments.sweep import run_sweep
from oloraplus.experiments.sweeplock import LOCK_FILE, sweep_lock
from oloraplus.experiments.worker import Job, Outcome

SPEC = {"base": {"rank": 4, "max_steps": 8}, "grid": {"ratio": [0.5, 2]}}


def write_sweep(path: Path, spec: dict = SPEC) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(directory: Path, **holder) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    path.write_text(json.dumps({"host": socket.gethostname(), "since": "2026-01-01T00:00:00", **holder}))
    return path


def test_flags_come_from_the_dataclass_and_are_checked():
    args = build_parser().parse_args(["sweep", "s.yaml", "--output", "o", "--executor", "slurm", "--retries", "3",
                                      "--gpus-per-run", "1", "--cpus-per-run", "4", "--slurm-partition", "gpu",
                                      "--slurm-time", "30", "--slurm-cluster", "local"])
    assert executor_options(args) == ExecutorConfig(executor="slurm", retries=3, gpus_per_run=1, cpus_per_run=4,
                                                    slurm_partition="gpu", slurm_time=30, slurm_cluster="local")
    assert executor_options(build_parser().parse_args(["sweep", "s.yaml", "--output", "o"])) == ExecutorConfig()


@pytest.mark.parametrize("values, fragment", [
    ({"gpus_per_run": 2}, "--gpus-per-run 2: a run on several GPUs (torchrun)"),
    ({"retries": -1}, "--retries: must be >= 0"),
    ({"cpus_per_run": 0}, "--cpus-per-run: must be >= 1"),
    ({"slurm_time": 0}, "--slurm-time: must be >= 1 minute"),
    ({"ray_address": "auto"}, "--ray-address: only with --executor ray"),
])
def test_bad_executor_options_are_config_errors(values, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        ExecutorConfig(**values).validate()


@pytest.mark.parametrize("executor, module", [("ray", "ray"), ("slurm", "submitit")])
@pytest.mark.parametrize("command", ["sweep", "tune-ratio", "compose-study"])
def test_a_missing_extra_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys, executor, module, command):
    monkeypatch.setitem(sys.modules, module, None)  # `import ray` raises ImportError, as without the extra
    source = {"sweep": write_sweep(tmp_path / "s.yaml"), "tune-ratio": None, "compose-study": tmp_path / "nofile"}
    argv = [command, *([str(source[command])] if source[command] else []), "--output", str(tmp_path / "out"),
            "--executor", executor]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f'oloraplus: error: --executor {executor}: needs {"Ray" if executor == "ray" else "submitit"}: ' \
                  f'pip install "oloraplus[{executor}]"'
    assert not (tmp_path / "out").exists()


def test_the_lock_names_host_and_pid_and_goes_away_after(tmp_path):
    with sweep_lock(tmp_path / "sweep") as path:
        holder = json.loads(path.read_text())
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), os.getpid())
    assert not path.exists() and not (tmp_path / "sweep").exists()  # created empty, left empty: removed


def test_a_second_driver_is_refused_while_the_first_runs(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_lock(tmp_path / "out", pid=live.pid)
        train = FakeTrain()
        with pytest.raises(ConfigError, match=rf"another sweep driver runs on it \(host {socket.gethostname()}, "
                                              rf"pid {live.pid}, since"):
            run_sweep(sweep, tmp_path / "out", train_fn=train)
        assert train.calls == [] and sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK_FILE]
    finally:
        live.kill()
        live.wait()


def test_a_lock_from_another_host_is_refused_with_the_file_to_delete(tmp_path):
    path = write_lock(tmp_path / "out", host="node-17", pid=4242)
    with pytest.raises(ConfigError, match=f"host node-17, pid 4242.*delete {path}"):
        run_sweep(write_sweep(tmp_path / "s.yaml"), tmp_path / "out", train_fn=FakeTrain())


def test_a_stale_lock_of_a_dead_driver_is_taken_over_with_a_line(tmp_path, capsys):
    pid = dead_pid()
    path = write_lock(tmp_path / "out", pid=pid)
    run_sweep(write_sweep(tmp_path / "s.yaml"), tmp_path / "out", train_fn=FakeTrain())
    err = capsys.readouterr().err
    assert f"{path}: the sweep driver that held it (host {socket.gethostname()}, pid {pid}, since " in err
    assert err.splitlines()[0].endswith("is gone; taking over")
    assert not path.exists() and (tmp_path / "out" / "results.csv").is_file()


def test_a_reused_pid_does_not_keep_a_stale_lock_alive():
    """The pid of a dead driver may belong to another process by now: its start time tells them apart."""
    me = {"pid": os.getpid(), "start_ticks": sweeplock._start_ticks(os.getpid())}
    assert sweeplock.holder_alive(me)
    assert not sweeplock.holder_alive({**me, "start_ticks": me["start_ticks"] - 1})
    assert not sweeplock.holder_alive({"pid": dead_pid()})


def test_sweep_json_records_the_executor_and_where_each_run_trained(tmp_path, capsys):
    run_sweep(write_sweep(tmp_path / "s.yaml"), tmp_path / "out", train_fn=FakeTrain())
    plan = json.loads((tmp_path / "out" / "sweep.json").read_text())
    assert plan["executor"] == "local"
    assert [r["ran_on"] for r in plan["runs"]] == [{"host": socket.gethostname(), "gpu": "cpu"}] * 2
    err = capsys.readouterr().err
    assert f"[1/2] ratio=0.5: start on {socket.gethostname()} (cpu); 1 running, 0 of 2 done" in err
    assert f"[2/2] ratio=2: end on {socket.gethostname()} (cpu) after" in err and "2 of 2 done" in err

    run_sweep(write_sweep(tmp_path / "s.yaml"), tmp_path / "out", train_fn=FakeTrain())  # all skipped: kept
    assert json.loads((tmp_path / "out" / "sweep.json").read_text())["runs"] == plan["runs"]


def test_the_local_executor_stops_at_an_exception_as_before(tmp_path):
    calls = []

    def boom():
        calls.append("boom")
        raise RuntimeError("a bug")

    jobs = [Job("a", "[1/2] a", boom), Job("b", "[2/2] b", lambda: calls.append("b"))]
    with pytest.raises(RuntimeError, match="a bug"):
        run_jobs(jobs, ExecutorConfig(retries=3), tmp_path)
    assert calls == ["boom"]  # in-process: no retry, the next run does not start


def test_without_slurm_the_slurm_executor_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no srun anywhere
    assert main(["sweep", str(write_sweep(tmp_path / "s.yaml")), "--output", str(tmp_path / "out"),
                 "--executor", "slurm"]) == 2
    assert capsys.readouterr().err.strip() == (
        "oloraplus: error: --executor slurm: no Slurm on this machine (srun not found); run the command where "
        "sbatch works, or pass --slurm-cluster local to run the jobs here")
    assert not (tmp_path / "out").exists()


FAKE_SBATCH = """#!/bin/sh
# records the batch script it was given and answers as sbatch does
for last; do :; done
cp "$last" "{scripts}/$(ls {scripts} | wc -l).sh"
echo "Submitted batch job 4242"
"""


def test_the_runs_go_to_slurm_as_one_job_array_with_partition_time_and_gpus(tmp_path, monkeypatch):
    """sbatch and srun are stand-ins that record what they get: one batch script, an array of all the runs."""
    from oloraplus.experiments.executor_slurm import SlurmBackend

    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(scripts=scripts))
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = ExecutorConfig(executor="slurm", slurm_partition="gpu", slurm_time=120, gpus_per_run=1, cpus_per_run=8)
    backend = SlurmBackend(cfg, tmp_path / "executor")
    for index in range(4):
        backend.submit(Job(f"run-{index}", f"[{index + 1}/4] run", print), str(tmp_path / f"m{index}.json"))
    backend._flush()  # sent at the first wait: one sbatch call
    [script] = [p.read_text() for p in scripts.iterdir()]
    for line in ("#SBATCH --array=0-3%4", "#SBATCH --partition=gpu", "#SBATCH --time=120",
                 "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --job-name=oloraplus"):
        assert line in script, (line, script)
    assert sorted(job.name for job in backend.jobs.values()) == [f"run-{i}" for i in range(4)]


class ScriptedBackend:
    """Two slots: each poll finishes the oldest running job and starts the next queued one, as Ray does when a
    run ends and its core goes to the next run between two looks of the driver."""

    name = "scripted"

    def __init__(self):
        self.queued: list[tuple[Job, str]] = []
        self.running: list[Job] = []

    def submit(self, job: Job, marker: str) -> None:
        self.queued.append((job, marker))

    def _start(self) -> None:
        job, marker = self.queued.pop(0)
        Path(marker).write_text(json.dumps({"host": "h", "gpu": "cpu"}))
        self.running.append(job)

    def wait(self, timeout: float):
        finished = []
        if self.running:
            job = self.running.pop(0)
            finished.append((job, Outcome("h", "cpu", 1.0)))
        while self.queued and len(self.running) < 2:
            self._start()
        return finished

    def close(self) -> None:
        pass


def test_progress_lines_never_count_a_job_that_has_ended(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(executors, "open_backend", lambda cfg, folder, announce: ScriptedBackend())
    monkeypatch.setattr(executors, "require_extra", lambda cfg: None)
    jobs = [Job(f"j{i}", f"[{i}/4] j{i}", lambda: None) for i in range(1, 5)]
    run_jobs(jobs, ExecutorConfig(executor="ray"), tmp_path)
    lines = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert lines == [
        "j1: start on h (cpu); 1 running, 0 of 4 done", "j2: start on h (cpu); 2 running, 0 of 4 done",
        "j1: end on h (cpu) after 1.0 s, 1 of 4 done", "j3: start on h (cpu); 2 running, 1 of 4 done",
        "j2: end on h (cpu) after 1.0 s, 2 of 4 done", "j4: start on h (cpu); 2 running, 2 of 4 done",
        "j3: end on h (cpu) after 1.0 s, 3 of 4 done", "j4: end on h (cpu) after 1.0 s, 4 of 4 done"]


def test_a_driver_that_finds_a_live_lock_where_the_dead_one_was_puts_it_back(tmp_path):
    """Two drivers read the same dead lock; the first takes over; the second, acting on what it read, must not
    remove the first one's lock (the old unlink-then-create did, and both ran)."""
    dead = {"host": socket.gethostname(), "pid": dead_pid(), "since": "2026-01-01T00:00:00"}
    path = write_lock(tmp_path, **dead)
    with sweep_lock(tmp_path) as mine:  # the first driver took over
        first = json.loads(mine.read_text())
        assert first["pid"] == os.getpid()
        assert sweeplock._remove_dead(path, dead) is False  # the second driver's late take-over
        assert json.loads(path.read_text()) == first and sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]
        with pytest.raises(ConfigError, match="another sweep driver runs on it"):
            with sweep_lock(tmp_path):
                pass


HOLD = """
import sys, time
from pathlib import Path
from oloraplus.errors import ConfigError
from oloraplus.experiments.sweeplock import sweep_lock
directory, gate, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(gate / f"ready.{me}").touch()
while not (gate / "go").exists():  # every process imported and waiting before any tries
    time.sleep(0.005)
try:
    with sweep_lock(directory):
        print("held", flush=True)
        time.sleep(5.0)  # far longer than the others take to try
except ConfigError:
    print("refused", flush=True)
"""


def test_of_drivers_racing_for_a_dead_lock_exactly_one_holds_it(tmp_path):
    write_lock(tmp_path / "sweep", pid=dead_pid())
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "sweep"), str(gate), str(i)],
                              stdout=subprocess.PIPE, text=True) for i in range(6)]
    deadline = time.monotonic() + 120
    while len(list(gate.glob("ready.*"))) < 6:
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "a racer did not start"
        time.sleep(0.05)
    (gate / "go").touch()
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["held"] + ["refused"] * 5, outcomes

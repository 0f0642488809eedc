"""`--executor ray` on one Ray instance for the module (start-up ~5 s), and `slurm` with submitit's local executor:
the same results as local, a killed worker retried, a killed driver resumed, a diverged run kept, loopback only."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import ray
import yaml
from executor_helpers import KillingTrain, attempts, rows, worker_pythonpath
from experiment_helpers import FakeTrain

from oloraplus.cli.main import main
from oloraplus.experiments import executor_ray
from oloraplus.errors import ConfigError
from oloraplus.experiments.executor_config import ExecutorConfig
from oloraplus.experiments.executors import RunFailedError
from oloraplus.experiments.sweep import run_sweep
from tests.helpers import TIMING_KEYS

RAY = ExecutorConfig(executor="ray", retries=1)
SLURM_LOCAL = ExecutorConfig(executor="slurm", slurm_cluster="local", retries=1, slurm_time=10)
FAKE = {"base": {"rank": 4, "max_steps": 8}, "grid": {"method": ["olora", "lora"], "ratio": [0.5, 2]}}
LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


@pytest.fixture(scope="module")
def ray_here():
    """One local Ray (2 CPUs) for the module, started the way `--executor ray` starts one."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = worker_pythonpath()  # the workers unpickle the helpers' stand-in trainers
    executor_ray.start_local(num_cpus=2)
    yield
    ray.shutdown()
    if before is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = before


def write_sweep(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tiny_spec(model: Path, data: Path) -> dict:
    return {"base": {"model": str(model), "data": str(data), "rank": 4, "alpha": 8, "lr": 3e-3, "max_steps": 2,
                     "batch_size": 4, "max_length": 64, "train_size": 8, "eval_size": 4, "logging_steps": 1},
            "grid": {"method": ["olora", "lora"], "ratio": [0.5, 2]}}


def test_local_ray_listens_on_loopback_only_without_dashboard(ray_here):
    ray_procs = [p for p in psutil.Process().children(recursive=True)]
    pids = {p.pid for p in ray_procs} | {os.getpid()}
    listening = [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert len(listening) >= 3  # gcs, raylet, this driver's core worker at least
    assert {c.laddr.ip for c in listening} <= set(LOOPBACK), [(c.laddr, c.pid) for c in listening]
    commands = [" ".join(p.cmdline()) for p in ray_procs if p.is_running()]
    assert any("gcs_server" in c for c in commands)
    # include_dashboard=False: Ray keeps its head process in minimal mode, without the web UI or a port
    head = [c for c in commands if "dashboard/dashboard.py" in c]
    assert all("--minimal" in c and "--disable-frontend" in c for c in head), head
    assert 8265 not in {c.laddr.port for c in listening}
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")


def test_ray_and_slurm_give_the_local_results(ray_here, tiny_llama_dir, alpaca_file, tmp_path, one_thread):
    """A 4-run tiny sweep, really trained: results.csv is the same whoever ran it (wall-clock columns aside)."""
    sweep = write_sweep(tmp_path / "s.yaml", tiny_spec(tiny_llama_dir, alpaca_file))
    run_sweep(sweep, tmp_path / "local")
    run_sweep(sweep, tmp_path / "ray", executor=RAY)
    run_sweep(sweep, tmp_path / "slurm", executor=SLURM_LOCAL)
    local = rows(tmp_path / "local" / "results.csv", TIMING_KEYS)
    assert len(local) == 4 and all(float(r["eval_loss"]) > 0 for r in local)
    assert rows(tmp_path / "ray" / "results.csv", TIMING_KEYS) == local
    assert rows(tmp_path / "slurm" / "results.csv", TIMING_KEYS) == local
    for name in ("ray", "slurm"):
        plan = json.loads((tmp_path / name / "sweep.json").read_text())
        assert plan["executor"] == name and all(r["ran_on"]["gpu"] == "cpu" for r in plan["runs"])


@pytest.mark.parametrize("executor, grid", [(RAY, FAKE["grid"]), (SLURM_LOCAL, {"ratio": [0.5, 2]})],
                         ids=["ray", "slurm"])  # slurm: 2 runs (each job is two processes: submitit's controller)
def test_a_killed_worker_is_retried_and_the_others_go_on(ray_here, tmp_path, capsys, executor, grid):
    sweep = write_sweep(tmp_path / "s.yaml", {**FAKE, "grid": grid})
    (tmp_path / "tally").mkdir()
    names = [f"method-{m}_ratio-{r}" for m in grid["method"] for r in ("0.5", "2")] if "method" in grid else [
        "ratio-0.5", "ratio-2"]
    train = KillingTrain(tmp_path / "tally", kills={names[1]: 1})
    run_sweep(sweep, tmp_path / "out", train_fn=train, executor=executor)
    assert attempts(tmp_path / "tally") == {name: 1 + (name == names[1]) for name in names}
    reference = tmp_path / "ref"
    run_sweep(sweep, reference, train_fn=FakeTrain())
    assert rows(tmp_path / "out" / "results.csv", TIMING_KEYS) == rows(reference / "results.csv", TIMING_KEYS)
    assert not list((tmp_path / "out" / "runs").glob("*.partial"))
    err = capsys.readouterr().err
    victim = names[1].replace("_", " ").replace("-", "=")  # method-olora_ratio-2 -> method=olora ratio=2
    assert f"{victim}: lost its worker (" in err and "retry 1 of 1" in err
    assert f"{victim}: start on" in err and "(attempt 2)" in err


def test_a_run_killed_on_every_attempt_fails_alone_and_a_rerun_finishes_it(ray_here, tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml", FAKE)
    (tmp_path / "tally").mkdir()
    train = KillingTrain(tmp_path / "tally", kills={"method-lora_ratio-0.5": 99})
    with pytest.raises(RunFailedError, match=r"1 of 4 runs failed, the others finished: method-lora_ratio-0.5: "
                                             r".*\(after 2 attempts\); run the same command again"):
        run_sweep(sweep, tmp_path / "out", train_fn=train, executor=RAY)
    assert attempts(tmp_path / "tally")["method-lora_ratio-0.5"] == 2
    assert [r["run"] for r in rows(tmp_path / "out" / "results.csv", ())] == [
        "method-olora_ratio-0.5", "method-olora_ratio-2", "method-lora_ratio-2"]
    assert "failed: " in capsys.readouterr().err

    again = KillingTrain(tmp_path / "tally", kills={})
    run_sweep(sweep, tmp_path / "out", train_fn=again, executor=RAY)
    assert attempts(tmp_path / "tally")["method-lora_ratio-0.5"] == 3
    assert sum(attempts(tmp_path / "tally").values()) == 6  # the three finished runs were not trained again
    assert len(rows(tmp_path / "out" / "results.csv", ())) == 4


def test_a_diverged_run_stays_a_result_on_ray(ray_here, tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml", FAKE)
    run_sweep(sweep, tmp_path / "out", train_fn=FakeTrain(diverges=lambda cfg: cfg.ratio == 2 and cfg.method == "lora"),
              executor=RAY)
    results = {r["run"]: r for r in rows(tmp_path / "out" / "results.csv", ())}
    assert results["method-lora_ratio-2"]["diverged"] == "True" and results["method-lora_ratio-2"]["eval_loss"] == ""
    assert all(results[n]["eval_loss"] for n in results if n != "method-lora_ratio-2")
    assert "diverged at step 2 (the loss is not finite); kept as a result, going on" in capsys.readouterr().err


def test_a_killed_driver_is_resumed_by_the_next_one(ray_here, tiny_llama_dir, alpaca_file, tmp_path, capsys,
                                                    one_thread):
    """The driver (with the Ray it started) is SIGKILLed once a run finished: its lock is taken over, the
    finished runs are skipped, the rest are trained, and its Ray processes went with it."""
    sweep = write_sweep(tmp_path / "s.yaml", tiny_spec(tiny_llama_dir, alpaca_file))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OLORAPLUS_PROGRESS": "0"}
    driver = subprocess.Popen([sys.executable, "-m", "oloraplus", "sweep", str(sweep), "--output", str(out),
                               "--executor", "ray"], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not any(p.is_dir() and not p.name.endswith(".partial") for p in (out / "runs").glob("*")):
        assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before a run finished"
        time.sleep(0.2)
    children = psutil.Process(driver.pid).children(recursive=True)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    core = [p for p in children if not p.name().startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))]
    gone, alive = psutil.wait_procs(core, timeout=30)  # gcs, raylet and the workers share the driver's fate
    assert not alive, [p.cmdline() for p in alive]
    finished = {p.name for p in (out / "runs").glob("*") if not p.name.endswith(".partial")}  # a worker may finish
    assert 1 <= len(finished) < 4 and (out / "sweep.lock").is_file()  # its run in the moment the driver is gone
    for agent in set(children) - set(core):  # Ray's agents may linger a while on a dead GCS: not ours to wait for
        with contextlib.suppress(psutil.NoSuchProcess):
            agent.kill()

    assert main(["sweep", str(sweep), "--output", str(out), "--executor", "ray"]) == 0
    err = capsys.readouterr().err
    assert f"pid {driver.pid}" in err and "is gone; taking over" in err
    assert err.count("(finished earlier, skipped)") == len(finished)
    assert err.count(": end on ") == 4 - len(finished)
    assert len(rows(out / "results.csv", TIMING_KEYS)) == 4 and not (out / "sweep.lock").exists()


def test_compose_study_on_ray_gives_the_local_study(ray_here, tiny_llama_dir, tmp_path, one_thread):
    """The study's trainings go to Ray workers; its evaluation stays in the driver: the same numbers as local."""
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    domains = {}
    for name, template in (("repeat", "{w} {w}"), ("shout", "{W}!")):
        records = [{"instruction": f"Say {w}.", "input": "", "output": template.format(w=w, W=w.upper())}
                   for w in words * 3]
        (tmp_path / f"{name}.json").write_text(json.dumps(records))
        domains[name] = str(tmp_path / f"{name}.json")
    base = {"model": str(tiny_llama_dir), "method": "lora", "rank": 4, "alpha": 8, "lr": 3e-3, "max_steps": 2,
            "batch_size": 4, "max_length": 64, "train_size": 8, "eval_size": 4, "seed": 5}
    spec = write_sweep(tmp_path / "study.yaml", {"base": base, "domains": domains})
    assert main(["compose-study", str(spec), "--output", str(tmp_path / "local")]) == 0
    assert main(["compose-study", str(spec), "--output", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    local, remote = (json.loads((tmp_path / d / "study.json").read_text()) for d in ("local", "ray"))
    assert list(remote["runs"]) == ["repeat", "shout", "merged"]
    assert remote["perplexity"] == local["perplexity"] and remote["sums"] == local["sums"]
    assert {k: v["metrics"]["eval_loss"] for k, v in remote["runs"].items()} == {k: v["metrics"]["eval_loss"]
                                                                       for k, v in local["runs"].items()}


def test_a_run_this_machine_cannot_place_is_refused_not_queued_forever(tmp_path, monkeypatch, capsys):
    """Without a connected Ray, --executor ray starts one of this machine's resources; a GPU run on a CPU-only
    machine would wait for ever, so it is refused in one line and that Ray stopped (here a stand-in Ray of 2 CPUs:
    the check, not Ray's start-up, is under test)."""
    stopped = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(executor_ray, "start_local", lambda: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "shutdown", lambda: stopped.append(True))
    sweep = write_sweep(tmp_path / "s.yaml", FAKE)
    assert main(["sweep", str(sweep), "--output", str(tmp_path / "out"), "--executor", "ray",
                 "--gpus-per-run", "1"]) == 2
    assert capsys.readouterr().err.strip().endswith("--gpus-per-run 1: this machine has 0 GPUs for Ray")
    assert main(["sweep", str(sweep), "--output", str(tmp_path / "out"), "--executor", "ray",
                 "--cpus-per-run", "3"]) == 2
    assert capsys.readouterr().err.strip().endswith("--cpus-per-run 3: this machine has 2 CPUs for Ray")
    assert stopped == [True, True] and not (tmp_path / "out" / "runs").exists()


SHARED_GPU = """
import json, os, sys, time
from oloraplus.experiments import executor_ray
from oloraplus.experiments.executor_config import ExecutorConfig
from oloraplus.experiments.executors import run_jobs
from oloraplus.experiments.worker import Job


def hold():
    start = time.time()
    time.sleep(3.0)
    return {"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}


executor_ray.start_local(num_cpus=2, num_gpus=1)  # one (logical) GPU: Ray hands out its id as on a real one
cfg = ExecutorConfig(executor="ray", gpus_per_run=0.5, cpus_per_run=1).validate()
outcomes = run_jobs([Job(f"j{i}", f"[{i}/2] j{i}", hold) for i in (1, 2)], cfg, sys.argv[1])
print(json.dumps([o.value for o in outcomes.values()]))
"""


def test_half_a_gpu_each_puts_two_runs_on_one_gpu_at_once(tmp_path):
    """In a process of its own: this module's Ray has no GPU."""
    proc = subprocess.run([sys.executable, "-c", SHARED_GPU, str(tmp_path)], capture_output=True, text=True,
                          timeout=180, env={**os.environ, "PYTHONPATH": worker_pythonpath()})
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first["gpu"] == second["gpu"] == "0"
    assert first["start"] < second["end"] and second["start"] < first["end"]  # they ran side by side


def test_a_share_of_a_gpu_is_refused_outside_ray(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.yaml", FAKE)
    assert main(["sweep", str(sweep), "--output", str(tmp_path / "out"), "--executor", "slurm", "--slurm-cluster",
                 "local", "--gpus-per-run", "0.5"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "--gpus-per-run 0.5: a share of a GPU needs --executor ray (--executor slurm gives a run 0 or 1 whole GPU)")
    assert not (tmp_path / "out").exists()


ORPHANING_DRIVER = """
import sys
from pathlib import Path
from executor_helpers import SlowTrain
from oloraplus.experiments.executor_config import ExecutorConfig
from oloraplus.experiments.sweep import run_sweep
sweep, out, tally = map(Path, sys.argv[1:4])
run_sweep(sweep, out, train_fn=SlowTrain(tally, seconds=120),
          executor=ExecutorConfig(executor="slurm", slurm_cluster="local", slurm_time=10))
"""


def test_jobs_a_killed_slurm_driver_left_behind_are_cancelled_by_the_next_one(tmp_path, capsys):
    """SIGKILL spares the job array; the next driver cancels its jobs before it submits the runs again."""
    sweep, out, tally = write_sweep(tmp_path / "s.yaml", FAKE), tmp_path / "out", tmp_path / "tally"
    tally.mkdir()
    env = {**os.environ, "PYTHONPATH": worker_pythonpath()}
    driver = subprocess.Popen([sys.executable, "-c", ORPHANING_DRIVER, str(sweep), str(out), str(tally)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(tally.iterdir())) < 4:  # every run's job has started (and sleeps)
        assert driver.poll() is None and time.monotonic() < deadline, "the driver ended before its jobs started"
        time.sleep(0.2)
    workers = [psutil.Process(int(p.read_text())) for p in tally.iterdir()]
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert all(w.is_running() for w in workers)  # the array outlived its driver
    os.environ["PYTHONPATH"], before = env["PYTHONPATH"], os.environ.get("PYTHONPATH")
    try:
        run_sweep(sweep, out, train_fn=FakeTrain(), executor=SLURM_LOCAL)
    finally:
        os.environ.pop("PYTHONPATH") if before is None else os.environ.update(PYTHONPATH=before)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, [w.pid for w in alive]
    err = capsys.readouterr().err
    assert "cancelled 4 job(s) a driver that is gone left behind" in err and "their runs start again" in err
    assert len(rows(out / "results.csv", TIMING_KEYS)) == 4 and not (out / "executor" / "slurm" / "jobs.json").exists()

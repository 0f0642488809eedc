"""The GPU bench always brings numbers back: per-job timeouts, a budget, and results + report rewritten after
every job, so a killed job or a killed bench keeps what finished. Stand-in jobs (`sleep`) on the CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from gpu_bench import Job, run_jobs  # noqa: E402

BENCH = Path(__file__).resolve().parents[2] / "bench"


def sleeper(tag: str, seconds: float, timeout_s: float = 30.0) -> Job:
    return Job(tag, "sleep", {"seconds": seconds}, timeout_s)


def read(out: Path) -> dict:
    return json.loads(out.with_suffix(".json").read_text())


def test_a_job_past_its_timeout_is_killed_and_the_others_keep_their_results(tmp_path):
    out = tmp_path / "gpu_results.md"
    jobs = [sleeper("first", 0.1), sleeper("stuck", 60, timeout_s=2), sleeper("after", 0.1)]
    t0 = time.perf_counter()
    results = run_jobs(jobs, out, tmp_path, "cmd", budget_s=300)
    assert time.perf_counter() - t0 < 30  # the stuck job did not hold the run for its 60 s
    assert results["first"]["slept_s"] == 0.1 and results["after"]["slept_s"] == 0.1
    assert results["stuck"]["timed_out"] and "timed out after 2 s" in results["stuck"]["error"]
    saved = read(out)
    assert saved["results"].keys() == {"first", "stuck", "after"} and saved["pending"] == []
    report = out.read_text()
    assert "| stuck | timed out |" in report and "| first | done |" in report and "Partial" not in report


def test_jobs_past_the_budget_are_skipped_not_started(tmp_path):
    out = tmp_path / "gpu_results.md"
    results = run_jobs([sleeper("a", 0.1), sleeper("b", 0.1)], out, tmp_path, "cmd", budget_s=10)  # < MIN_START_S
    assert all(r.get("skipped") and "budget" in r["error"] for r in results.values())
    assert "| a | skipped |" in out.read_text()


def test_a_bench_killed_mid_job_leaves_the_finished_jobs_and_their_report(tmp_path):
    out = tmp_path / "gpu_results.md"
    driver = tmp_path / "driver.py"
    driver.write_text(f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(BENCH)!r})
from gpu_bench import Job, run_jobs
jobs = [Job("one", "sleep", {{"seconds": 0.1}}, 30), Job("two", "sleep", {{"seconds": 0.1}}, 30),
        Job("long", "sleep", {{"seconds": 120}}, 300), Job("never", "sleep", {{"seconds": 0.1}}, 30)]
run_jobs(jobs, Path({str(out)!r}), Path({str(tmp_path)!r}), "cmd", budget_s=600)
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH.parent / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(driver)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # until "long" is running: two results written
            if out.with_suffix(".json").exists() and len(read(out)["results"]) == 2:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the first two jobs' results were never written")
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)  # the whole bench, as a time limit would
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    saved = read(out)
    assert list(saved["results"]) == ["one", "two"] and saved["pending"] == ["long", "never"]
    assert all(r["slept_s"] == 0.1 for r in saved["results"].values())
    report = out.read_text()
    assert "**Partial**: 2 job(s) not run yet" in report and "| long | not run yet |" in report

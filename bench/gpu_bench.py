"""oloraplus vs the paper's recipe on one GPU, bf16, on random-init models of real shapes (no download).

    python bench/gpu_bench.py                      # H100/H200: the jobs below within --budget-s (default 480 s)
    python bench/gpu_bench.py --quick              # tiny shapes, a few steps: checks the pipeline (CPU is fine)
    python bench/gpu_bench.py --plan               # print the jobs, their timeouts, and stop

Jobs run in order of what the targets need, each in its own process (this script with --worker, the functions
of gpu_workers.py) with its own timeout, so each peak `torch.cuda.max_memory_allocated` is its own and a hung
or crashed job costs only itself. After EVERY job the results (.json) and the report (.md, gpu_report.py) are
rewritten at --out: a run cut off by a time limit still leaves the finished jobs and their report. A job that
would start with less than MIN_START_S of the budget left is skipped and reported as such.

Order (FULL): TinyLlama-1.1B at the paper's batch 4 (baseline, oloraplus; one epoch), the bf16 matmul rate
(MFU's denominator), batch 32 (baseline, oloraplus, oloraplus without diagnostics: the loop with and without
them), the Llama-3-8B-shape job (nf4 + gradient checkpointing: issue 20), then extras if time remains
(`--no-packing` at batch 4, SmolLM2-135M at batch 4). `bench/gpu_run.sh` runs it on a CUDA machine.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CARRIED = REPO / ".gpu"  # what bench/gpu_prepare.sh puts beside the repo (git-ignored)
MIN_START_S = 20.0  # a job is not started with less of the budget left
LOG_TAIL = 40  # lines of a failed job's log kept in the results (the log itself stays on the machine)


@dataclass(frozen=True)
class Job:
    tag: str
    worker: str
    spec: dict
    timeout_s: float


@dataclass(frozen=True)
class Sizes:
    shape: str  # the target comparison's shape (batch 4 and 32, one epoch each)
    batches: tuple[int, int]  # (the paper's batch, the large batch)
    eval_size: int
    epoch_examples: int | None  # None: one epoch over the data's training split
    extra_shape: str  # a second shape, at the paper's batch, after everything else
    short_steps: int  # steps of the extra shape's runs
    matmul_n: int
    big_shape: str  # the big-model job (issue 20): nf4 + gradient checkpointing
    big_steps: int
    big_tokens: int  # real tokens per step of the big job: batch 4 × 512
    budget_s: float  # default --budget-s
    timeouts: dict  # seconds per kind of job


FULL = Sizes(shape="TinyLlama-1.1B", batches=(4, 32), eval_size=32, epoch_examples=None, extra_shape="SmolLM2-135M",
             short_steps=50, matmul_n=8192, big_shape="Llama-3-8B", big_steps=20, big_tokens=4 * 512, budget_s=480,
             timeouts={"model": 60, "matmul": 45, "b_small": 150, "b_large": 100, "big": 240, "extra": 90})
QUICK = Sizes(shape="tiny", batches=(2, 4), eval_size=4, epoch_examples=16, extra_shape="tiny", short_steps=3,
              matmul_n=512, big_shape="tiny", big_steps=7, big_tokens=2 * 64, budget_s=900,
              timeouts={"model": 120, "matmul": 60, "b_small": 180, "b_large": 180, "big": 240, "extra": 180})


def train_examples(data: str, eval_size: int) -> int:
    """Examples in the training split of one epoch (what `split_examples` leaves after the eval set)."""
    from oloraplus.data.formats import load_examples

    return len(load_examples(data)) - eval_size


def plan(sizes: Sizes, data: str, models_dir: str, n_train: int) -> list[Job]:
    """The jobs in run order: what the targets need first, the big-model job, then extras."""
    t = sizes.timeouts
    epoch = sizes.epoch_examples or n_train
    small, large = sizes.batches

    def setup(shape: str, batch: int, steps: int) -> dict:
        return {"data": data, "model": str(Path(models_dir) / shape), "steps": steps, "batch_size": batch,
                "eval_size": sizes.eval_size, "max_length": 512}

    def pair(shape: str, batch: int, steps: int, kind: str) -> list[Job]:
        s = setup(shape, batch, steps)
        key = f"{shape}_b{batch}"
        return [Job(f"{key}_baseline", "train", {"side": "baseline", "setup": s, "shape": shape}, t[kind]),
                Job(f"{key}_oloraplus", "train", {"side": "oloraplus", "setup": s, "shape": shape}, t[kind])]

    def model(shape: str) -> Job:
        return Job(f"model_{shape}", "build_model", {"shape": shape, "path": str(Path(models_dir) / shape)},
                   t["model"])

    main = sizes.shape
    jobs = [model(main), *pair(main, small, math.ceil(epoch / small), "b_small"),
            Job("matmul", "matmul", {"n": sizes.matmul_n}, t["matmul"]),
            *pair(main, large, math.ceil(epoch / large), "b_large")]
    large_setup = setup(main, large, math.ceil(epoch / large))
    jobs.append(Job(f"{main}_b{large}_nodiag", "train",  # the loop without diagnostics, else the same run
                    {"side": "oloraplus", "setup": large_setup, "shape": main,
                     "options": {"diagnostics_steps": -1}}, t["b_large"]))
    big_options = {"quantize": "nf4", "gradient_checkpointing": True, "max_steps": sizes.big_steps,
                   "tokens_per_batch": sizes.big_tokens, "batch_size": small, "max_length": sizes.big_tokens // small,
                   "eval_size": 8 if sizes is FULL else sizes.eval_size, "rank": 32, "alpha": 16.0, "lr": 3e-4,
                   "ratio": 4.0, "seed": 0, "logging_steps": 5}
    jobs.append(Job(f"{sizes.big_shape}_nf4_checkpointing", "train_big",
                    {"shape": sizes.big_shape, "dir": str(Path(models_dir) / "big"), "data": data,
                     "options": big_options}, t["big"]))
    padded = setup(main, small, math.ceil(epoch / small))  # what packing adds: the batch-4 run on padded rows
    jobs.append(Job(f"{main}_b{small}_padded", "train", {"side": "oloraplus", "setup": padded, "shape": main,
                                                         "options": {"packing": False}}, t["b_small"]))
    extra = sizes.extra_shape
    if extra != main:
        jobs.append(model(extra))
    jobs += pair(extra, small, sizes.short_steps, "extra") if extra != main else []
    return jobs


def _tail(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-LOG_TAIL:]
    except OSError:
        return []


def _own_session_dying_with_the_bench() -> None:
    """In the job's process before exec: its own session (a timeout kills its whole group) and, on Linux,
    SIGKILL when the bench dies, so a bench killed by a time limit leaves no job running on the device."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_job(job: Job, workdir: Path, timeout_s: float, script: Path) -> dict:
    """Run one job in a fresh interpreter (its own session, so a timeout kills it and its children);
    its result, or {"error": ...} with the log's tail."""
    spec_path, result_path, log_path = (workdir / f"{job.tag}.{ext}" for ext in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps(job.spec))
    env = {**os.environ, "OLORAPLUS_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    t0, start_unix = time.perf_counter(), time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(script), "--worker", job.worker, "--spec", str(spec_path),
                                 "--result", str(result_path)], stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO, preexec_fn=_own_session_dying_with_the_bench)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return {"error": f"timed out after {timeout_s:.0f} s (killed)", "timed_out": True,
                    "wall_s": time.perf_counter() - t0, "log_tail": _tail(log_path)}
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result_path.exists():
        lines = [line for line in _tail(log_path) if line.strip()]
        return {"error": lines[-1] if lines else f"exit {proc.returncode}", "wall_s": wall, "log_tail": lines}
    result = {**json.loads(result_path.read_text()), "wall_s": wall}
    if "end_unix" in result:  # a training run: the process as a user sees it, without the bench's counting after
        result["process_s"] = result.pop("end_unix") - start_unix
    return result


def write_results(out: Path, results: dict, command: str, elapsed_s: float, quick: bool, pending: list[str]) -> None:
    """The raw results and the report, each replaced atomically (a kill mid-write leaves the previous one)."""
    sys.path.insert(0, str(BENCH))
    from gpu_report import render

    payload = {"results": results, "command": command, "elapsed_s": elapsed_s, "pending": pending}
    for path, text in ((out.with_suffix(".json"), json.dumps(payload, indent=1)),
                       (out, render(results, command, elapsed_s, quick=quick, pending=pending))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)


def run_jobs(jobs: list[Job], out: Path, workdir: Path, command: str, *, budget_s: float, quick: bool = False,
             script: Path | None = None) -> dict:
    """Each job in order within the budget; the results and report at `out` rewritten after every job."""
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    write_results(out, results, command, 0.0, quick, [j.tag for j in jobs])
    for i, job in enumerate(jobs):
        left = budget_s - (time.perf_counter() - t0)
        if left < MIN_START_S:
            result = {"error": f"skipped: {max(left, 0):.0f} s of the {budget_s:.0f} s budget left", "skipped": True}
        else:
            timeout = min(job.timeout_s, left)
            print(f"{job.tag}: running (timeout {timeout:.0f} s)", flush=True)
            result = run_job(job, workdir, timeout, script or Path(__file__).resolve())
        results[job.tag] = {**result, "spec": job.spec, "timeout_s": job.timeout_s}
        status = "FAILED: " + result["error"] if "error" in result else "done"
        print(f"{job.tag}: {status} ({result.get('wall_s', 0):.1f} s)", flush=True)
        write_results(out, results, command, time.perf_counter() - t0, quick, [j.tag for j in jobs[i + 1:]])
    return results


def default_data() -> str | None:
    return next((str(p) for p in (CARRIED / "alpaca_en_demo.json", REPO.parent / "shared" / "data" /
                                  "alpaca_en_demo.json") if p.is_file()), None)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape, a few steps: checks the pipeline")
    parser.add_argument("--plan", action="store_true", help="print the jobs and exit")
    parser.add_argument("--data", default=None, help="Alpaca-format file (default: .gpu/ or ../shared/data)")
    parser.add_argument("--out", default=str(BENCH / "gpu_results.md"), help="the report (.md; .json beside it)")
    parser.add_argument("--only", default=None, help="comma-separated job tags to run (--plan lists them)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds for all jobs (default: 480 full, 900 --quick); later jobs are skipped")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sys.path.insert(0, str(BENCH))
        from gpu_workers import WORKERS

        result = WORKERS[args.worker](json.loads(Path(args.spec).read_text()))
        Path(args.result).write_text(json.dumps(result))
        return 0
    data = args.data or default_data()
    if not data or not Path(data).is_file():
        parser.error(f"--data: no Alpaca file at {data or '.gpu/ or ../shared/data'}")
    sizes = QUICK if args.quick else FULL
    workdir = Path(tempfile.gettempdir()) / "oloraplus-gpu-bench" if args.plan else \
        Path(tempfile.mkdtemp(prefix="oloraplus-gpu-bench-"))
    jobs = plan(sizes, data, str(workdir / "models"), train_examples(data, sizes.eval_size))
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {j.tag for j in jobs}
        if unknown:
            parser.error(f"--only: unknown job(s) {', '.join(sorted(unknown))} (see --plan)")
        needed = {f"model_{j.spec['shape']}" for j in jobs if j.tag in wanted and j.worker == "train"}
        jobs = [j for j in jobs if j.tag in wanted | needed]
    if args.plan:
        for job in jobs:
            print(f"{job.tag}  (timeout {job.timeout_s:.0f} s)  {json.dumps(job.spec)}")
        return 0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/gpu_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = run_jobs(jobs, out, workdir, command.strip(), budget_s=args.budget_s or sizes.budget_s,
                       quick=args.quick)
    failed = [tag for tag, r in results.items() if "error" in r]
    if not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {out} and {out.with_suffix('.json')}" + (f" ({len(failed)} job(s) did not finish: "
                                                          f"{', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())

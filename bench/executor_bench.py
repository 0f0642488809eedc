"""`--executor local` against `--executor ray` on this machine: a 6-run tiny sweep, each in its own process.

    python bench/executor_bench.py                        # 6 runs x 40 and x 200 steps: bench/executor_results.md
    python bench/executor_bench.py --steps 10 --out /tmp/e.md

Arms, one after the other, each a fresh `python -m oloraplus sweep` process: local (the runs one after another in
the driver, 1 torch thread) and ray (a local Ray of this machine's cores, `--cpus-per-run 1`: one single-threaded
run per core). Ray's start-up cost is measured apart in its own process: `import ray`, `ray.init` as the
executor starts it (loopback only, no dashboard), and the first trivial task (a worker process started). The
results must agree: results.csv of both arms, wall-clock columns aside. The model is a tiny random Llama (the
test suite's), the data the test suite's Alpaca records, so the numbers show the executor's overhead and
parallelism, not a model's speed.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))  # tests.conftest: the tiny model and its tokenizer

STARTUP = """
import time
t0 = time.perf_counter()
import ray
t1 = time.perf_counter()
from oloraplus.experiments.executor_ray import start_local
start_local()
t2 = time.perf_counter()
ray.get(ray.remote(lambda: 1).remote())
t3 = time.perf_counter()
ray.shutdown()
t4 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {t3 - t2:.3f} {t4 - t3:.3f}")
"""
TIMING = ("train_runtime_s", "tokens_per_s", "seconds_per_step", "load_s", "compile_s", "diagnostics_s",
          "diagnostics_calls", "diagnostics_loop_share", "diagnostics_after_loop_s")


def make_inputs(work: Path, steps: int) -> Path:
    """A tiny random Llama, 64 Alpaca records and the 6-run sweep (method x λ) that trains on them."""
    import json

    from tests.conftest import build_tokenizer, save_model_dir, tiny_llama

    tok = build_tokenizer(chat_template=True)
    model = save_model_dir(work / "tiny-llama", tiny_llama(len(tok), hidden_size=64, intermediate_size=128), tok)
    data = work / "alpaca.json"
    data.write_text(json.dumps([{"instruction": f"Explain what the function number {i} does.", "input": "",
                                 "output": "Return the sum of a list of numbers. " * (1 + i % 3)} for i in range(64)]))
    spec = {"base": {"model": str(model), "data": str(data), "rank": 4, "alpha": 8, "lr": 3e-3, "max_steps": steps,
                     "batch_size": 4, "max_length": 64, "train_size": 48, "eval_size": 16, "logging_steps": 10},
            "grid": {"method": ["olora", "lora", "pissa"], "ratio": [1, 4]}}
    sweep = work / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(spec, sort_keys=False))
    return sweep


def run_arm(sweep: Path, out: Path, extra: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OLORAPLUS_PROGRESS": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "oloraplus", "sweep", str(sweep), "--output", str(out), *extra],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(extra) or 'local'}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    with open(out / "results.csv", newline="") as f:
        full = list(csv.DictReader(f))
    rows = [{k: v for k, v in row.items() if k not in TIMING} for row in full]
    return {"wall_s": wall, "train_s": sum(float(r["train_runtime_s"]) for r in full), "rows": rows}


def ray_startup() -> list[float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", STARTUP], env=env, capture_output=True, text=True, check=True)
    return [float(x) for x in proc.stdout.split()[-4:]]


def git_commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="40,200",
                        help="optimizer steps per run, one sweep pair per value (default 40,200)")
    parser.add_argument("--out", default=str(BENCH / "executor_results.md"))
    args = parser.parse_args()
    step_counts = [int(x) for x in args.steps.split(",")]
    load_before = os.getloadavg()
    arms = {}
    with tempfile.TemporaryDirectory(prefix="oloraplus-executor-bench-") as tmp:
        work = Path(tmp)
        startup = ray_startup()
        print(f"ray start-up: import {startup[0]:.1f} s, init {startup[1]:.1f} s, first task {startup[2]:.1f} s",
              flush=True)
        for steps in step_counts:
            sweep = make_inputs(work / str(steps), steps)
            local = run_arm(sweep, work / str(steps) / "local", [])
            ray = run_arm(sweep, work / str(steps) / "ray", ["--executor", "ray", "--cpus-per-run", "1"])
            arms[steps] = (local, ray, os.getloadavg()[0])
            print(f"{steps} steps: local {local['wall_s']:.1f} s, ray {ray['wall_s']:.1f} s", flush=True)
    load_after = os.getloadavg()
    cores = os.cpu_count()
    header = " | ".join(f"{steps} steps: local | {steps} steps: ray" for steps in step_counts)
    rule = " | ".join("--- | ---" for _ in step_counts)

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(f"{cell(local, 'local')} | {cell(ray, 'ray')}"
                                           for local, ray, _ in arms.values()) + " |"

    ratio = {steps: local["wall_s"] / ray["wall_s"] for steps, (local, ray, _) in arms.items()}
    same = all(local["rows"] == ray["rows"] and len(local["rows"]) == 6 for local, ray, _ in arms.values())
    lines = [
        f"# Sweeps: `--executor local` vs `--executor ray` on {cores} CPU cores", "",
        f"Command: `python bench/executor_bench.py --steps {args.steps}` at commit `{git_commit()}`: a 6-run sweep "
        "(method olora/lora/pissa × λ 1/4) of a tiny random Llama (hidden 64, 2 blocks; r = 4, batch 4, 16 eval "
        "records), each arm a fresh `python -m oloraplus sweep` process with `OMP_NUM_THREADS=1`; ray: a local Ray "
        f"of the machine's {cores} cores, `--cpus-per-run 1` (two single-threaded runs at a time).",
        f"Machine: {platform.machine()}, {cores} cores, **shared with other jobs**: load average "
        f"{load_before[0]:.1f} before, " + ", ".join(f"{load:.1f} after the {steps}-step pair"
                                                   for steps, (_, _, load) in arms.items())
        + " (with the cores that busy, two runs at a time cannot run twice as fast; timings are noisy).", "",
        f"| | {header} |", f"| --- | {rule} |",
        row("whole sweep, wall clock (s)", lambda arm, name: f"{arm['wall_s']:.1f}"),
        row("the runs' own train time, summed (s)", lambda arm, name: f"{arm['train_s']:.1f}"),
        "| speed-up (local wall / ray wall) | " + " | ".join(f"1.00x | {ratio[s]:.2f}x" for s in step_counts) + " |",
        "", f"results.csv of both arms equal (wall-clock columns aside): {'yes' if same else '**no**'}.", "",
        f"Ray's start-up, measured apart (`python -c` in its own process): `import ray` {startup[0]:.1f} s, "
        f"`ray.init` as `--executor ray` starts it (127.0.0.1 only, no dashboard) {startup[1]:.1f} s, the first "
        f"trivial task (a worker process started) {startup[2]:.1f} s, `ray.shutdown` {startup[3]:.1f} s: about "
        f"{sum(startup[:3]):.0f} s before the first run can start, paid once per sweep (per round of `tune-ratio`). "
        "Each Ray worker also imports torch, transformers and PEFT once (the local arm does it once in all).", "",
    ]
    text = "\n".join(lines)
    Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

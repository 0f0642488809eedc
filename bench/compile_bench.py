"""`--compile` against eager, end to end: the same training run three times, each in its own process.

    python bench/compile_bench.py                       # SmolLM2-135M, alpaca_en_demo, 12 steps x batch 4
    python bench/compile_bench.py --steps 4 --out /tmp/c.md

Arms: eager; compiled with an empty inductor cache (what a first run on a machine pays); compiled again
with that cache filled (what every later run with the same model and versions pays). For each: the
whole process (wall clock, model load and final eval included), the train loop with and without the
time spent compiling, steady-state s/step and tokens/s (compile time subtracted, see docs/compile.md),
and the eval loss, which must agree. Results go to a Markdown file (default bench/compile_results.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"  # read in place, never copied


def train_flags(args: argparse.Namespace, out: Path) -> list[str]:
    return ["train", "--model", args.model, "--data", str(args.data), "--method", "olora", "--ratio", "4",
            "--rank", "32", "--alpha", "16", "--lr", "3e-4", "--max-steps", str(args.steps), "--batch-size", "4",
            "--max-length", "512", "--eval-size", "32", "--diagnostics-steps", "-1", "--seed", "42",
            "--output", str(out)]


def run_arm(args: argparse.Namespace, name: str, extra: list[str], cache: Path, work: Path) -> dict:
    out = work / name
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "OLORAPLUS_PROGRESS": "0"}
    cpu0 = _children_cpu_s()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "oloraplus", *train_flags(args, out), *extra], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = _children_cpu_s() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    print(f"{name}: {wall:.1f} s, compile {m.get('compile_s', 0):.1f} s, eval loss {m['eval_loss']:.5f}",
          flush=True)
    return {"wall_s": wall, "cpu_s": cpu, **m}


def _children_cpu_s() -> float:
    """User + system CPU seconds of the finished children (and theirs, e.g. inductor's gcc workers): on a
    shared machine, where wall clock depends on the other jobs, the work each arm did."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def table(arms: dict[str, dict]) -> list[str]:
    names = list(arms)
    eager = arms["eager"]
    rows = [
        ("whole process (s, wall clock)", lambda m: f"{m['wall_s']:.1f}"),
        ("whole process (CPU s, this arm's processes)", lambda m: f"{m['cpu_s']:.1f}"),
        ("train loop incl. compile (s)", lambda m: f"{m['train_runtime_s']:.1f}"),
        ("of which compiling (s)", lambda m: f"{m.get('compile_s', 0):.1f}"),
        ("train loop excl. compile (s)", lambda m: f"{m['train_runtime_s'] - m.get('compile_s', 0):.1f}"),
        ("steady s/step (compile excluded)", lambda m: f"{m['seconds_per_step']:.2f}"),
        ("real tokens/s (compile excluded)", lambda m: f"{m['tokens_per_s']:.1f}"),
        ("graphs compiled", lambda m: str(m.get("compile_graphs", 0))),
        ("eval loss", lambda m: f"{m['eval_loss']:.5f}"),
        ("whole process vs eager (wall)", lambda m: f"{eager['wall_s'] / m['wall_s']:.2f}x"),
        ("whole process vs eager (CPU s)", lambda m: f"{eager['cpu_s'] / m['cpu_s']:.2f}x"),
        ("train loop incl. compile vs eager", lambda m: f"{eager['train_runtime_s'] / m['train_runtime_s']:.2f}x"),
        ("train loop excl. compile vs eager",
         lambda m: f"{eager['train_runtime_s'] / (m['train_runtime_s'] - m.get('compile_s', 0)):.2f}x"),
    ]
    lines = ["| | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    lines += [f"| {label} | " + " | ".join(fmt(arms[n]) for n in names) + " |" for label, fmt in rows]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--out", type=Path, default=BENCH / "compile_results.md")
    parser.add_argument("--no-warm", action="store_true", help="skip the warm-cache arm")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        work, cache = Path(tmp), Path(tmp) / "inductor-cache"
        arms = {
            "eager": run_arm(args, "eager", [], cache, work),
            "compiled, cold cache": run_arm(args, "cold", ["--compile"], cache, work),
        }
        if not args.no_warm:
            arms["compiled, warm cache"] = run_arm(args, "warm", ["--compile"], cache, work)
    load_after = os.getloadavg()
    command = ("python bench/compile_bench.py" + (f" --steps {args.steps}" if args.steps != 12 else "")
               + (" --no-warm" if args.no_warm else ""))
    shown = [a if a != str(args.data) else f".../{args.data.name}" for a in train_flags(args, Path("RUN"))[1:]]
    text = [
        "# `--compile` vs eager on the CPU",
        "",
        f"Command: `{command}` (each arm `python -m oloraplus train {' '.join(shown)}`"
        " plus `--compile` for the compiled arms), one process per arm, one after the other.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with other jobs; "
        f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f} (timings are noisy: compare the "
        "ratios within this run). Cold cache: an empty `TORCHINDUCTOR_CACHE_DIR`; warm: the same directory again.",
        "",
        *table(arms),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Benchmark oloraplus against the OLoRA+ paper's implementation (bench/baseline.py), side by side.

    python bench/run_bench.py                  # SmolLM2-135M + alpaca_en_demo, ~10-15 min on 2 CPU cores
    python bench/run_bench.py --quick          # tiny sizes (~2 min): checks that every section runs
    python bench/run_bench.py --only train,loss --out /tmp/r.md

Every measurement runs in its own child process (this script with --worker), so each peak RSS
(ru_maxrss from wait4) belongs to one measurement only. Results go to a Markdown file (and a PNG of
the scaling tables next to it); see bench/README.md for what each section measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from oloraplus.config import TrainConfig

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"  # read in place, never copied
SECTIONS = ("machine", "load", "init", "train", "loss", "generate", "scaling")


@dataclass(frozen=True)
class Sizes:
    steps: int  # optimizer steps of each training run (one epoch of steps × batch examples)
    batch: int
    eval_size: int
    max_length: int  # the baseline pads every row to this
    loss_batches: int  # real batches per pass in the response-only loss comparison
    loss_reps: int  # timed passes (each runs both losses on every batch)
    gen_prompts: int
    gen_tokens: int
    order_seeds: tuple[int, ...]  # extra batch orders of the same-order run (the order-noise check)
    gen_batches: tuple[int, ...]  # generate_batched is timed at each; the product default is among them
    seq_lens: tuple[int, ...]
    seq_batch: int
    ranks: tuple[int, ...]
    rank_seq: int
    rank_batch: int
    step_reps: int
    cold_load: bool  # convert the GGUF into an empty temporary cache
    matmul_n: int
    matmul_reps: int
    reps: int  # init and load timings
    init_blocks: int | None  # time the OLoRA init on the first blocks only (None: all)


FULL = Sizes(steps=12, batch=4, eval_size=32, max_length=512, order_seeds=(1, 2), loss_batches=2, loss_reps=3,
             gen_prompts=64, gen_tokens=32, gen_batches=(16, 32, 64), seq_lens=(128, 256, 512, 1024), seq_batch=2,
             ranks=(8, 16, 32, 64, 128), rank_seq=256, rank_batch=2, step_reps=2, cold_load=True, matmul_n=2048,
             matmul_reps=8, reps=3, init_blocks=None)
QUICK = Sizes(steps=2, batch=2, eval_size=4, max_length=128, order_seeds=(1,), loss_batches=1, loss_reps=1,
              gen_prompts=4, gen_tokens=8, gen_batches=(2, 4), seq_lens=(64, 128), seq_batch=1, ranks=(8, 32),
              rank_seq=64, rank_batch=1, step_reps=1, cold_load=False, matmul_n=1024, matmul_reps=3, reps=1,
              init_blocks=2)


GENERATE_BATCH = TrainConfig().generate_batch_size  # what `train --eval-generate` and `eval --generate` use
META = "_meta"  # results.json key of the commands that made it (not a measurement)


def run_child(worker: str, spec: dict, workdir: Path, tag: str, threads: int | None = None,
              script: Path | None = None) -> dict:
    """Run one worker in a fresh interpreter; add its own peak RSS and wall time, or the error it ended with.

    `script` (default: this file) is run with `--worker WORKER --spec ... --result ...`.
    """
    spec_path, result_path, log_path = (workdir / f"{tag}.{ext}" for ext in ("spec.json", "result.json", "log"))
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OLORAPLUS_PROGRESS": "0", "TOKENIZERS_PARALLELISM": "false"}
    if threads:  # torch reads it at start-up: its intra-op thread count
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0, start_unix = time.perf_counter(), time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(script or Path(__file__).resolve()), "--worker", worker, "--spec",
                                 str(spec_path), "--result", str(result_path)], stdout=log, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage, unlike RUSAGE_CHILDREN's running max
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not result_path.exists():
        lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
        error = lines[-1] if lines else f"exit {proc.returncode}"
        print(f"  {tag}: FAILED (exit {proc.returncode}): {error}  [log kept: {log_path}]", flush=True)
        return {"error": error, "log": str(log_path)}
    result = json.loads(result_path.read_text())
    result.update(peak_rss_mib=usage.ru_maxrss / 1024, wall_s=wall)  # ru_maxrss is in KiB on Linux
    if "end_unix" in result:  # a training run: the process as a user sees it, without the bench's own counting after
        result["process_s"] = result.pop("end_unix") - start_unix
    print(f"  {tag}: {wall:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    return result


def plan(sizes: Sizes, data: str, sections: set[str]) -> list[tuple[str, str, str, dict]]:
    """(section, tag, worker, spec) of every child, in run order."""
    setup = {"data": data, "steps": sizes.steps, "batch_size": sizes.batch, "eval_size": sizes.eval_size,
             "max_length": sizes.max_length}
    model = {"model": "smollm2-135m", "alpha": 16.0}
    jobs: list[tuple[str, str, str, dict]] = []
    matmul = {"matmul_n": sizes.matmul_n, "matmul_reps": sizes.matmul_reps}
    jobs.append(("machine", "machine_start", "machine", matmul))
    jobs.append(("load", "load_cached", "model_load", {"model": "smollm2-135m", "cold": False, "reps": sizes.reps}))
    if sizes.cold_load:
        jobs.append(("load", "load_cold", "model_load", {"model": "smollm2-135m", "cold": True, "reps": 1}))
    jobs.append(("init", "olora_init", "olora_init", {**model, "rank": 32, "reps": sizes.reps,
                                                      "blocks": sizes.init_blocks}))
    jobs.append(("train", "train_baseline", "train_baseline", {"setup": setup}))
    jobs.append(("train", "train_oloraplus", "train_oloraplus", {"setup": setup, "group_by_length": True}))
    # oloraplus's default: the same batches in the same order as the baseline (random sampler, same seed), so
    # only the padding differs and the eval loss must match the baseline's to rounding. The run above groups
    # rows by length (`--group-by-length`): faster, other batches.
    jobs.append(("train", "train_oloraplus_same_order", "train_oloraplus",
                 {"setup": setup, "group_by_length": False}))
    jobs.append(("train", "train_oloraplus_padded", "train_oloraplus",  # what packing adds
                 {"setup": setup, "group_by_length": False, "options": {"packing": False}}))
    for order in sizes.order_seeds:  # the same run, other random batch orders: how much the order alone moves it
        jobs.append(("train", f"train_order_{order}", "train_oloraplus",
                     {"setup": setup, "group_by_length": False, "data_seed": order}))
    jobs.append(("loss", "loss_compare", "loss_compare",
                 {"setup": setup, "batches": sizes.loss_batches, "reps": sizes.loss_reps}))
    jobs.append(("generate", "generation", "generation", {"setup": setup, "prompts": sizes.gen_prompts,
                                                          "max_new_tokens": sizes.gen_tokens,
                                                          "batch_sizes": sizes.gen_batches,
                                                          "default_batch_size": GENERATE_BATCH}))
    for seq in sizes.seq_lens:
        jobs.append(("scaling", f"seq_{seq}", "step_scaling",
                     {**model, "rank": 32, "seq": seq, "batch": sizes.seq_batch, "reps": sizes.step_reps}))
    for rank in sizes.ranks:
        jobs.append(("scaling", f"rank_{rank}", "step_scaling",
                     {**model, "rank": rank, "seq": sizes.rank_seq, "batch": sizes.rank_batch,
                      "reps": sizes.step_reps}))
    jobs.append(("machine", "machine_end", "machine", matmul))
    return [job for job in jobs if job[0] in sections]


def run_worker(worker: str, spec_path: str, result_path: str) -> None:
    sys.path.insert(0, str(BENCH))
    from workers import WORKERS

    result = WORKERS[worker](json.loads(Path(spec_path).read_text()))
    Path(result_path).write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: validates every section in ~2 min")
    parser.add_argument("--out", default=str(BENCH / "results.md"), help="Markdown file to write")
    parser.add_argument("--data", default=str(DATA), help="Alpaca-format file (default: <repo>/../shared/data)")
    parser.add_argument("--steps", type=int, help="override the optimizer steps of each training run")
    parser.add_argument("--threads", type=int, help="torch threads per child (default: torch's, one per core); "
                        "use fewer than the idle cores on a shared machine")
    parser.add_argument("--only", help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}")
    parser.add_argument("--update", action="store_true", help="keep the numbers of the sections not run from the "
                        "existing results.json beside --out (with --only: re-measure some sections)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.spec, args.result)
        return 0
    sections = set(args.only.split(",")) if args.only else set(SECTIONS)
    if sections - set(SECTIONS):
        parser.error(f"--only: unknown section(s) {', '.join(sorted(sections - set(SECTIONS)))}")
    if not Path(args.data).is_file():
        parser.error(f"--data: {args.data} not found")
    sizes = QUICK if args.quick else FULL
    if args.steps:
        sizes = dataclasses.replace(sizes, steps=args.steps)
    command = "python bench/run_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{command.strip()}  ({'quick' if args.quick else 'full'} sizes; load average {os.getloadavg()[0]:.2f})",
          flush=True)
    t0 = time.perf_counter()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # before the first measurement, not after the last
    results: dict[str, dict] = {}
    commands = [command.strip()]
    if args.update:
        try:
            results = json.loads(out.with_suffix(".json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            parser.error(f"--update: cannot read {out.with_suffix('.json')}: {exc}")
        earlier = results.pop(META, {}).get("commands", ["python bench/run_bench.py (an earlier run)"])
        commands = [*earlier, *commands]
    workdir = Path(tempfile.mkdtemp(prefix="oloraplus-bench-"))
    jobs = plan(sizes, args.data, sections)
    for _, tag, worker, spec in jobs:
        results[tag] = run_child(worker, spec, workdir, tag, args.threads)
        results[tag]["spec"] = spec
    failed = any("error" in results[tag] for _, tag, _, _ in jobs)  # this run's; --update keeps older ones
    if not failed:  # on failure the logs stay for reading
        shutil.rmtree(workdir, ignore_errors=True)
    sys.path.insert(0, str(BENCH))
    from report import render, summary_lines, write_scaling_plot

    # the raw numbers behind the table, and the command(s) that measured them
    out.with_suffix(".json").write_text(json.dumps({**results, META: {"commands": commands}}, indent=1))
    plot = write_scaling_plot(results, out.with_name(out.stem + "_scaling.png"))
    out.write_text(render(results, sizes, ", then ".join(f"`{c}`" for c in commands), time.perf_counter() - t0,
                          quick=args.quick, plot=plot))
    print("\n".join(summary_lines(results)))
    print(f"wrote {out}, {out.with_suffix('.json')}" + (f", {plot}" if plot else "")
          + f" in {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

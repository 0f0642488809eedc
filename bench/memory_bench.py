"""Peak memory of SmolLM2-135M training on the CPU: fp32 vs nf4 vs --gradient-checkpointing, next to `oloraplus plan`.

    python bench/memory_bench.py --steps 2 --batch 2 --max-length 512  # the committed rows: ~35 min, busy 2-core CPU
    python bench/memory_bench.py --steps 1 --batch 1 --max-length 64 --out /tmp/m.md   # a quick check (~5 min)

Each configuration trains in its own child process (this script with --child). The child imports everything a
run imports, reads its RSS (the baseline: interpreter, torch, transformers, PEFT, oloraplus), runs the real
`oloraplus.train.recipe.train`, and reports its peak RSS (VmHWM, reset through /proc/self/clear_refs when
`Trainer.train` starts, so it is the peak of training and the final eval; loading's own peak is reported
apart) and the run's metrics. The estimate of
`oloraplus.plan` for the same options is compared with peak − baseline.

Data: alpaca_en_demo.json (read in place) with each record's output lengthened by the next records' outputs, so
every example is truncated to --max-length and a batch holds exactly batch × max-length tokens, the plan's case.
nf4: the base is loaded through transformers' BitsAndBytesConfig (fp32 compute), as `--quantize nf4` does, when
the installed oloraplus has no `--quantize` of its own; the method is LoRA in every row (its init reads no weight).
Every row but "glibc default" runs with MALLOC_MMAP_THRESHOLD_ fixed (see MMAP_THRESHOLD below).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
DATA = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"
CONFIGS = {  # name: (quantize, gradient checkpointing, glibc's default allocator)
    "fp32": ("none", False, False),
    "fp32 + checkpointing": ("none", True, False),
    "nf4": ("nf4", False, False),
    "nf4 + checkpointing": ("nf4", True, False),
    "fp32 (glibc default)": ("none", False, True),
}
# glibc serves allocations below its mmap threshold from heaps it keeps after free(), and raises that threshold
# (up to 32 MiB) whenever a large block is freed, so a step's activations end up in retained heap and the
# peak RSS counts memory no tensor holds (measured: +57 % over the allocations for SmolLM2 at 2 × 512 tokens).
# A fixed threshold makes every large tensor its own mapping, returned when freed: RSS then follows the
# allocations, which is what the plan predicts (and what a GPU's allocated memory is).
MMAP_THRESHOLD = "65536"


def rss_kib(field: str) -> int:
    return status()[field]


def status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, KiB."""
    fields = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    return {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
            if line.split(":")[0] in fields}


class Sampler:
    """RSS every 5 ms in a thread: the peak of each phase with its anonymous and file-backed parts."""

    def __init__(self) -> None:
        import threading

        self.phase = "load"
        self.peaks: dict[str, dict[str, int]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.005):
            now = status()
            if now["VmRSS"] > self.peaks.get(self.phase, {}).get("VmRSS", -1):
                self.peaks[self.phase] = now


def long_examples(source: Path, path: Path, records: int) -> None:
    """Alpaca records whose outputs are long enough to be truncated at any --max-length up to ~1000 tokens."""
    data = json.loads(source.read_text(encoding="utf-8"))
    out = []
    for i in range(records):
        text = ""
        j = i
        while len(text) < 6000:
            text += data[j % len(data)]["output"] + "\n"
            j += 1
        out.append({"instruction": data[i]["instruction"], "input": "", "output": text})
    path.write_text(json.dumps(out))


def patch_nf4() -> None:
    """Load the base in nf4 through transformers' BitsAndBytesConfig (bench only, for an oloraplus without
    --quantize): what `--quantize nf4` asks transformers for."""
    import torch
    import transformers
    from transformers import BitsAndBytesConfig

    original = transformers.AutoModelForCausalLM.from_pretrained

    def from_pretrained(*args, **kwargs):
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                           bnb_4bit_compute_dtype=torch.float32)
        return original(*args, **kwargs)

    transformers.AutoModelForCausalLM.from_pretrained = from_pretrained


def child(args: argparse.Namespace) -> None:
    import torch  # noqa: F401  everything a run imports, before the baseline is read
    import peft  # noqa: F401
    import transformers  # noqa: F401

    from oloraplus import plan
    from oloraplus.config import TrainConfig
    from oloraplus.train import recipe

    baseline = status()
    sampler = Sampler()
    quantize, checkpointing, _ = CONFIGS[args.child]
    native = "quantize" in TrainConfig.__dataclass_fields__ and _recipe_quantizes()
    cfg = TrainConfig(model="smollm2-135m", data=args.data, method="lora", rank=32, batch_size=args.batch,
                      max_length=args.max_length, max_steps=args.steps, train_size=args.batch * args.steps,
                      eval_size=8, logging_steps=1, diagnostics_steps=-1, seed=1, output=args.run,
                      gradient_checkpointing=checkpointing, quantize=quantize if native else "none")
    if quantize != "none" and not native:
        patch_nf4()
    marks = {}
    original_train = recipe.RatioTrainer.train

    def train_from_here(self, *a, **k):  # the peak of training alone: loading's transient copies excluded
        marks["load_peak_kib"], marks["loaded_kib"] = rss_kib("VmHWM"), rss_kib("VmRSS")
        # the frozen base tensors that live in the mmapped checkpoint (file pages, not anonymous memory)
        marks["file_weights_bytes"] = sum(p.numel() * p.element_size() for p in self.model.parameters()
                                          if not p.requires_grad and p.dtype.is_floating_point
                                          and not hasattr(p, "quant_state"))
        marks["weights_bytes"] = sum(p.numel() * p.element_size() for p in self.model.parameters()
                                     if not p.requires_grad) + sum(
            t.numel() * t.element_size() for p in self.model.parameters() if hasattr(p, "quant_state")
            for t in (p.quant_state.absmax,))
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux)
        sampler.phase = "train"
        return original_train(self, *a, **k)

    recipe.RatioTrainer.train = train_from_here
    start = time.perf_counter()
    metrics = recipe.train(cfg).metrics
    wall = time.perf_counter() - start
    peak = rss_kib("VmHWM")
    sampler.stop.set()
    at_peak = sampler.peaks["train"]
    # what the run allocated at its sampled peak: anonymous growth over the import baseline, plus the base
    # tensors served from the mmapped checkpoint; the other file pages are checkpoint pages nf4 read while
    # quantizing, which the kernel may drop at any time
    marks["allocated_bytes"] = (at_peak["RssAnon"] - baseline["RssAnon"]) * 1024 + marks["file_weights_bytes"]
    marks["sampled_peak"] = at_peak
    estimate = plan.estimate(dataclasses.replace(cfg, quantize=quantize), plan.read_shapes(cfg))
    json.dump({"baseline_kib": baseline["VmRSS"], "peak_kib": peak, **marks,
               "estimate_bytes": estimate.total(checkpointing),
               "estimate": {"weights": estimate.weights, "adapters": estimate.adapters,
                            "activations": estimate.activations_checkpointed if checkpointing
                            else estimate.activations},
               "batch": args.batch, "max_length": args.max_length,
               "seconds_per_step": metrics["seconds_per_step"], "eval_loss": metrics["eval_loss"],
               "train_tokens": metrics["train_tokens"], "steps": metrics["steps"], "wall_s": wall,
               "quantize_route": "oloraplus --quantize" if native else "BitsAndBytesConfig (bench patch)"},
              open(args.result, "w"))


def _recipe_quantizes() -> bool:
    """Whether this oloraplus loads a quantized base itself (the quant branch's --quantize)."""
    import inspect

    from oloraplus import models

    return "quantize" in inspect.signature(models.load_model).parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=BENCH / "memory_results.md")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--alpaca", type=Path, default=DATA, help=f"alpaca_en_demo.json (default: {DATA})")
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated config names")
    parser.add_argument("--child", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    names = [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"--only: unknown config {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    raw = args.out.with_suffix(".json")  # every row measured so far: --only re-measures some and keeps the others
    rows = json.loads(raw.read_text()) if raw.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "long.json"
        long_examples(args.alpaca, data, args.batch * args.steps + 40)
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "OLORAPLUS_PROGRESS": "0",
               "PYTHONPATH": str(REPO / "src")}
        for name in names:
            child_env = dict(env) if CONFIGS[name][2] else {**env, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD}
            result = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, __file__, "--child", name, "--data", str(data),
                   "--run", str(Path(tmp) / "run" / name), "--result", str(result),
                   "--steps", str(args.steps), "--batch", str(args.batch),
                   "--max-length", str(args.max_length)]
            load = os.getloadavg()
            print(f"{name}: running (load average {load[0]:.2f}) ...", flush=True)
            subprocess.run(cmd, env=child_env, check=True, cwd=REPO)
            rows[name] = {**json.loads(result.read_text()), "load": os.getloadavg()[0], "load_before": load[0],
                          "command": command_line(args, name)}
            print(f"{name}: {rows[name]}", flush=True)
            rows = {n: rows[n] for n in CONFIGS if n in rows}
            raw.write_text(json.dumps(rows, indent=1))  # after every row: a long bench keeps what it measured
            args.out.write_text(report(rows))
    print(f"wrote {args.out}")


def command_line(args: argparse.Namespace, name: str) -> str:
    return (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')} python bench/memory_bench.py --steps "
            f"{args.steps} --batch {args.batch} --max-length {args.max_length} --only '{name}'")


def report(rows: dict) -> str:
    mib = 1024 ** 2
    first = next(iter(rows.values()))
    batch, length, steps = first["batch"], first["max_length"], first["steps"]
    lines = [
        "# Peak memory on the CPU: SmolLM2-135M, fp32 vs nf4 vs --gradient-checkpointing",
        "",
        "Command: `OMP_NUM_THREADS=1 python bench/memory_bench.py --steps 2 --batch 2 --max-length 512` (one child "
        "process per row, each row's own command in the last column; `--only NAME` re-measures one row and keeps "
        "the others, whose raw numbers are in memory_results.json).",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other jobs (load average per row "
        "below: timings are noisy, memory is not).",
        f"Run: `--method lora --rank 32 --batch-size {batch} --max-length {length} --max-steps "
        f"{steps}`, every example truncated to --max-length ({batch} × {length} tokens per "
        "step), eval on 8 examples, packing and response-only loss on (the defaults).",
        "",
        "- *baseline*: the child's RSS after importing torch, transformers, PEFT and oloraplus, before the model "
        "loads.",
        "- *peak RSS*: VmHWM from the start of `Trainer.train` to the child's exit (training and the final eval; "
        "reset through /proc/self/clear_refs, so loading's transient copies are left out; *load peak* is theirs).",
        "- *allocated*: at the sampled (5 ms) RSS peak of training, the anonymous memory grown over the baseline plus "
        "the frozen base tensors served from the mmapped checkpoint. It differs from peak RSS − baseline by the "
        "checkpoint's other file pages: nf4 reads every fp32 weight while quantizing and those clean pages stay "
        "mapped (the kernel may drop them; a GPU run never holds them).",
        "- *plan*: `oloraplus plan` with the same options (fp32 CPU): weights + adapters + activations.",
        f"- Every row but *glibc default* runs with `MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}`: glibc otherwise keeps "
        "freed activation memory in its heaps (it raises its mmap threshold whenever a large block is freed), "
        "and the peak RSS counts memory that no tensor holds; the *glibc default* row shows how much.",
        "",
        "| config | peak RSS − baseline (MiB) | allocated (MiB) | plan (MiB) | plan / allocated | weights: tensors / "
        "plan (MiB) | load peak (MiB) | s/step | eval loss | load avg | command |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        rss = (r["peak_kib"] - r["baseline_kib"]) * 1024
        alloc = r["allocated_bytes"]
        lines.append(
            f"| {name} | {rss / mib:.0f} | {alloc / mib:.0f} | {r['estimate_bytes'] / mib:.0f} | "
            f"{r['estimate_bytes'] / alloc:.2f} | "
            f"{r['weights_bytes'] / mib:.0f} / {r['estimate']['weights'] / mib:.0f} | "
            f"{(r['load_peak_kib'] - r['baseline_kib']) / 1024:.0f} | {r['seconds_per_step']:.1f} | "
            f"{r['eval_loss']:.4f} | {r['load_before']:.2f} | `{r['command']}` |")
    lines += ["", "Plan terms (MiB): " + "; ".join(
        f"{name}: weights {r['estimate']['weights'] / mib:.0f}, adapters {r['estimate']['adapters'] / mib:.0f}, "
        f"activations {r['estimate']['activations'] / mib:.0f}" for name, r in rows.items()),
        "", "nf4 route: " + ", ".join(sorted({r["quantize_route"] for n, r in rows.items() if "nf4" in n}) or ["-"]),
        ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

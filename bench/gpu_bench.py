"""oloraplus vs the paper's recipe on one GPU, bf16, on random-init models of real shapes (no download).

    python bench/gpu_bench.py                      # H100/H200: TinyLlama-1.1B and SmolLM2-135M shapes, ~6 min
    python bench/gpu_bench.py --quick              # tiny shapes, a few steps: checks the pipeline (CPU is fine)
    python bench/gpu_bench.py --plan               # print the jobs and stop

Every measurement runs in its own process (this script with --worker), so each peak
`torch.cuda.max_memory_allocated` is its own. The training workers are `bench/workers.py`'s
(`train_baseline`: bench/baseline.py, the paper's implementation; `train_oloraplus`: `train()`),
the same ones `run_bench.py` compares on a CPU; this script adds the model shapes, the bf16 matmul
rate (the MFU denominator, measured in the same run) and GPU memory. Results: bench/gpu_results.md
and gpu_results.json. `bench/gpu_run.sh` runs it on a lent machine (see ../shared/GPU.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CARRIED = REPO / ".gpu"  # what bench/gpu_prepare.sh puts beside the repo for a lent machine (git-ignored)

# Model shapes, from the models' own config.json; vocab comes from the tokenizer (SmolLM2's, 49,152).
SHAPES: dict[str, dict] = {
    "TinyLlama-1.1B": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, head_dim=64, tie_word_embeddings=False,
                           max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5),
    "SmolLM2-135M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, max_position_embeddings=1024),
}


@dataclass(frozen=True)
class Job:
    tag: str
    worker: str
    spec: dict


@dataclass(frozen=True)
class Sizes:
    shapes: tuple[str, ...]  # the first one gets the full comparison (batch 4 and 32, one epoch)
    batches: tuple[int, ...]
    eval_size: int
    epoch_examples: int | None  # None: one epoch over the data's training split
    short_steps: int  # steps of the other shapes' runs
    matmul_n: int


FULL = Sizes(shapes=("TinyLlama-1.1B", "SmolLM2-135M"), batches=(4, 32), eval_size=32, epoch_examples=None,
             short_steps=50, matmul_n=8192)
QUICK = Sizes(shapes=("tiny",), batches=(2, 4), eval_size=4, epoch_examples=16, short_steps=3, matmul_n=512)


def train_examples(data: str, eval_size: int) -> int:
    """Examples in the training split of one epoch (what `split_examples` leaves after the eval set)."""
    from oloraplus.data.formats import load_examples

    return len(load_examples(data)) - eval_size


def plan(sizes: Sizes, data: str, models_dir: str, n_train: int) -> list[Job]:
    """The jobs in run order: build the models, the matmul rate, then baseline/oloraplus pairs."""
    jobs = [Job("models", "build_models", {"shapes": list(sizes.shapes), "dir": models_dir}),
            Job("matmul", "matmul", {"n": sizes.matmul_n})]
    epoch = sizes.epoch_examples or n_train
    for i, shape in enumerate(sizes.shapes):
        batches = sizes.batches if i == 0 else sizes.batches[:1]
        for batch in batches:
            steps = math.ceil(epoch / batch) if i == 0 else sizes.short_steps
            setup = {"data": data, "model": str(Path(models_dir) / shape), "steps": steps, "batch_size": batch,
                     "eval_size": sizes.eval_size, "max_length": 512}
            key = f"{shape}_b{batch}"
            jobs.append(Job(f"{key}_baseline", "train", {"side": "baseline", "setup": setup, "shape": shape}))
            jobs.append(Job(f"{key}_oloraplus", "train", {"side": "oloraplus", "setup": setup, "shape": shape}))
            if i == 0 and batch == sizes.batches[0]:  # what packing adds: the same run on padded batches
                jobs.append(Job(f"{key}_padded", "train", {"side": "oloraplus", "setup": setup, "shape": shape,
                                                           "options": {"packing": False}}))
    return jobs


# --- workers (each in its own process) ---

def _device():
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def tokenizer_dir() -> Path:
    """SmolLM2's tokenizer files: carried to a lent machine in .gpu/tokenizer, else the converted model cache."""
    if (CARRIED / "tokenizer" / "tokenizer.json").is_file():
        return CARRIED / "tokenizer"
    from oloraplus import models

    return Path(models.resolve_model_path("smollm2-135m"))


def build_models(spec: dict) -> dict:
    """Random-init models of each shape in bf16 (fp32 on a CPU), saved as HF directories with SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    device = _device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tok = AutoTokenizer.from_pretrained(tokenizer_dir())
    out = {}
    for shape in spec["shapes"]:
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, **SHAPES[shape])
        with torch.device(device):
            model = LlamaForCausalLM(config).to(dtype)
        path = Path(spec["dir"]) / shape
        model.save_pretrained(path, safe_serialization=True)
        tok.save_pretrained(path)
        out[shape] = {"params": sum(p.numel() for p in model.parameters()), "path": str(path)}
        del model
    return out


def matmul(spec: dict) -> dict:
    """Best bf16 (CUDA) or fp32 (CPU) n×n matmul rate in FLOP/s, timed with CUDA events after a warm-up."""
    import torch

    device = _device()
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = spec["n"]
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    rates = []
    for _ in range(10):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            torch.mm(a, b)
            seconds = time.perf_counter() - t0
        rates.append(2 * n**3 / seconds)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    return {"best_flops": max(rates[1:]), "dtype": str(dtype), "device": name, "n": n,
            "torch": torch.__version__, "cuda": torch.version.cuda}


def train(spec: dict) -> dict:
    """One training run (`workers.train_baseline` or `train_oloraplus`) with its peak GPU memory."""
    import torch

    sys.path.insert(0, str(BENCH))
    import workers

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    worker = workers.train_baseline if spec["side"] == "baseline" else workers.train_oloraplus
    result = worker({"setup": spec["setup"], "options": spec.get("options", {})})
    if torch.cuda.is_available():
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    result.pop("train_lengths", None)
    return result


WORKERS = {"build_models": build_models, "matmul": matmul, "train": train}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape, a few steps: checks the pipeline")
    parser.add_argument("--plan", action="store_true", help="print the jobs and exit")
    parser.add_argument("--data", default=None, help="Alpaca-format file (default: .gpu/ or ../shared/data)")
    parser.add_argument("--out", default=str(BENCH / "gpu_results.md"))
    parser.add_argument("--only", default=None, help="comma-separated job tags to run (with --plan to list them)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        Path(args.result).write_text(json.dumps(WORKERS[args.worker](json.loads(Path(args.spec).read_text()))))
        return 0
    data = args.data or next((str(p) for p in (CARRIED / "alpaca_en_demo.json",
                                                REPO.parent / "shared" / "data" / "alpaca_en_demo.json")
                              if p.is_file()), None)
    if not data or not Path(data).is_file():
        parser.error(f"--data: no Alpaca file at {data or '.gpu/ or ../shared/data'}")
    sizes = QUICK if args.quick else FULL
    workdir = Path(tempfile.mkdtemp(prefix="oloraplus-gpu-bench-"))
    jobs = plan(sizes, data, str(workdir / "models"), train_examples(data, sizes.eval_size))
    if args.only:
        keep = set(args.only.split(",")) | {"models", "matmul"}
        jobs = [j for j in jobs if j.tag in keep]
    if args.plan:
        for job in jobs:
            print(job.tag, json.dumps(job.spec))
        return 0
    sys.path.insert(0, str(BENCH))
    from gpu_report import render
    from run_bench import run_child

    command = "python bench/gpu_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    for job in jobs:
        result = run_child(job.worker, job.spec, workdir, job.tag, script=Path(__file__))
        if "error" in result:  # the log stays in a temporary folder that a lent machine does not send back
            result["log_tail"] = Path(result["log"]).read_text(errors="replace").splitlines()[-40:]
        results[job.tag] = {**result, "spec": job.spec}
    elapsed = time.perf_counter() - t0
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"results": results, "command": command.strip(),
                                                    "elapsed_s": elapsed}, indent=1))
    out.write_text(render(results, command.strip(), elapsed, quick=args.quick))
    failed = any("error" in r for r in results.values())
    if not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {out} in {elapsed:.0f} s" + (" (some jobs failed: see the file)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())

"""`oloraplus plan`: parameters and memory per process of a `train` run, before anything loads.

Takes every `train` option and reads only the model's config (config.json or a GGUF header), never its
weights, so it answers in seconds for a 70B model on a laptop. Prints the parameters, the trainable
parameters of --method at --rank on --target-modules, and per process: the weights (fp32 on the CPU, bf16 on
CUDA, or --quantize), the adapters with their gradients and AdamW state, and the activations at --batch-size
× --max-length with and without --gradient-checkpointing; with --fsdp over --processes N the sharded share.
--gpu-memory GiB adds the largest --batch-size that fits. Formulas and measured checks: docs/plan.md.
"""

from __future__ import annotations

import argparse
import math

from oloraplus.config import TrainConfig, add_arguments, resolve
from oloraplus.console import world_size
from oloraplus.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, TrainConfig)
    parser.add_argument("--gpu-memory", type=float, default=None, metavar="GiB",
                        help="memory of one GPU: also print the largest --batch-size that fits (plans for CUDA)")
    parser.add_argument("--processes", type=int, default=None, metavar="N",
                        help="processes of the launch, e.g. torchrun --nproc-per-node N (default: $WORLD_SIZE or 1)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="plan for the CPU (fp32 weights) or CUDA (bf16 weights, plus its context); auto: "
                        "CUDA with --gpu-memory or when this machine has a GPU, else the CPU (default: auto)")


def check_plan_arguments(gpu_memory: float | None, processes: int | None, fsdp: bool) -> None:
    """The plan-only flags, checked before the model's config is read."""
    if gpu_memory is not None and not (math.isfinite(gpu_memory) and gpu_memory > 0):
        raise ConfigError(f"--gpu-memory: must be a positive number of GiB, got {gpu_memory}")
    if processes is not None and processes < 1:
        raise ConfigError(f"--processes: must be >= 1, got {processes}")
    if fsdp and processes is not None and processes < 2:
        raise ConfigError("--fsdp: shards over processes; plan it with --processes 2 or more")


def plan_command(args: argparse.Namespace) -> int:
    cfg = resolve(TrainConfig, args)
    check_plan_arguments(args.gpu_memory, args.processes, cfg.fsdp)
    from oloraplus import plan

    processes = args.processes or world_size()
    if cfg.fsdp and processes < 2:
        raise ConfigError("--fsdp: shards over processes; plan it with --processes 2 or more (or under torchrun)")
    cuda = args.device == "cuda" or (args.device == "auto" and (args.gpu_memory is not None or plan.has_cuda()))
    shapes = plan.read_shapes(cfg)
    plan.check_ranks(cfg, shapes)
    kwargs = dict(dtype="bf16" if cuda else "fp32", processes=processes, cuda=cuda)
    estimate = plan.estimate(cfg, shapes, **kwargs)
    lines = plan.summary(estimate)
    if args.gpu_memory is not None:
        budget = args.gpu_memory * plan.GiB
        loads = estimate.fits_load(budget)
        plain, ckpt = ((plan.largest_batch(cfg, shapes, budget, c, **kwargs) if loads else 0) for c in (False, True))
        lines.append(f"largest --batch-size at --max-length {cfg.max_length} in {args.gpu_memory:g} GiB: "
                     f"{plain or 'none'}; with --gradient-checkpointing: {ckpt or 'none'}")
        if not loads:
            lines.append(f"  the load does not fit: every --fsdp process loads the whole base ({plan.gib(estimate.load)}) "
                         "before sharding it, to compute the init from full weights (docs/fsdp.md, Limits)")
        elif not ckpt:
            lines.append("  does not fit: try --gradient-checkpointing, --quantize nf4, a lower --max-length"
                         + (", or --fsdp over more processes" if not cfg.fsdp or processes < 8 else ""))
    print("\n".join(lines))
    return 0

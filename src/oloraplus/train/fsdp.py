"""`--fsdp`: the frozen base sharded over the torchrun processes with FSDP2 (`fully_shard` per decoder layer).

The sharding itself is accelerate's FSDP2 plugin, driven by `TrainingArguments(fsdp=..., fsdp_config=...)`:
the Trainer hands the model and our λ optimizer to `accelerator.prepare`, which calls `fully_shard` on each
decoder layer, on the embedding and on the root, and swaps the optimizer's parameters for their sharded
DTensors in place, so its named A/B groups (B at λη) carry over unchanged. accelerate switches FSDP on
only for GPU process groups; `enable` sets the same state on the CPU, so gloo runs (CI) take the GPU path.

The adapter is attached *before* that, on every process from the full weights: the OLoRA/PiSSA/OHoRA/EVA
inits are the single-process ones exactly. Checkpoints hold the adapter and the optimizer state sharded
(torch.distributed.checkpoint, adapter only: the frozen base is never written); the final adapter is gathered
into full tensors and saved by rank 0, the same PEFT adapter a single process writes.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from oloraplus.console import world_size
from oloraplus.errors import ConfigError

STATE_DICT_TYPE = "SHARDED_STATE_DICT"  # checkpoints: adapter + optimizer shards per rank, no base, no gather


def check_launch() -> None:
    """`--fsdp` needs several processes started by torchrun; refused before the model loads."""
    if "WORLD_SIZE" not in os.environ:
        raise ConfigError("--fsdp: shards the base over processes started by torchrun; launch with "
                          "'torchrun --nproc_per_node N -m oloraplus train ... --fsdp' (N >= 2)")
    if world_size() < 2:
        raise ConfigError(f"--fsdp: needs 2 or more processes to shard over, torchrun started {world_size()}; "
                          "use --nproc_per_node 2 or more, or drop --fsdp")


def decoder_layer_classes(model: torch.nn.Module, name: str = "the model") -> list[str]:
    """Class names of the repeated decoder blocks FSDP wraps one by one (transformers' `_no_split_modules`).

    A model that names none, or whose named classes are absent, cannot be sharded per layer: one line.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    declared = set(getattr(base, "_no_split_modules", None) or [])
    present = sorted({type(m).__name__ for m in base.modules()} & declared)
    if not present:
        raise ConfigError(f"--fsdp: {name} ({type(base).__name__}) declares no decoder layer class "
                          "(transformers' _no_split_modules), so FSDP cannot shard it layer by layer")
    return present


def training_arguments(model: torch.nn.Module, name: str = "the model") -> dict[str, Any]:
    """`TrainingArguments` keywords that make the Trainer shard `model` with FSDP2 per decoder layer.

    Mixed precision follows the Trainer's `bf16` flag: on CUDA the plugin's MixedPrecisionPolicy all-gathers and
    computes in bf16; on the CPU everything stays fp32.
    """
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "transformer_layer_cls_to_wrap": decoder_layer_classes(model, name),
            "reshard_after_forward": True,  # ZeRO-3: each layer's full weights live only during its compute
            "state_dict_type": STATE_DICT_TYPE,
            "cpu_ram_efficient_loading": False,  # every rank holds the full weights already (the init needs them)
        },
    }


def enable(trainer: Any) -> None:
    """Turn on accelerate's FSDP2 path in a Trainer built with `training_arguments`, on the CPU too.

    accelerate enables FSDP only for GPU-like process groups and silently falls back to DDP for
    several CPU (gloo) processes, although `fully_shard` itself works there. Setting the state the GPU
    launch sets (distributed type FSDP, the plugin the Trainer built from `fsdp_config`) runs the very
    same code path on both: `accelerator.prepare` shards, checkpoints go through DCP.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if getattr(state, "fsdp_plugin", None) is None:
        state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
        if trainer.accelerator.mixed_precision != "no":
            state.fsdp_plugin.set_mixed_precision(trainer.accelerator.mixed_precision)
    state.distributed_type = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP2 has wrapped `model` (its forward then runs collectives on every rank)."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def gathered_adapter(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter as a full CPU tensor, by its state-dict name: what `save_adapter` writes.

    A collective (one all-gather per parameter, in the same order on every rank): every rank must call it.
    Only the adapter is gathered, never the frozen base.
    """
    from torch.distributed.tensor import DTensor

    return {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().cpu()
            for name, p in model.named_parameters() if p.requires_grad}


def local_shards(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """This rank's part of each (possibly DTensor) tensor, for per-rank math without collectives."""
    from torch.distributed.tensor import DTensor

    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def all_ranks(*flags: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each boolean flag AND-ed over the ranks (one small all-reduce, no host read): sharded ranks see different
    shards and batches, yet must stop together."""
    import torch.distributed as dist

    both = torch.stack([f.to(torch.float32) for f in flags])
    dist.all_reduce(both, op=dist.ReduceOp.MIN)
    return tuple(both.bool())

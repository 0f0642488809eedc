"""Can FSDP2 shard bitsandbytes 4-bit weights here? The check behind `--fsdp --quantize` being refused.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 scripts/fsdp_bnb_check.py

Two blocks of (NF4 `Linear4bit` + a trainable linear), sharded per block with `fully_shard`, forward and
backward on gloo. Tried with the default uint8 quant storage and with float32 storage (the QLoRA-FSDP
recipe's way to make the packed weight shardable), then with the 4-bit weights left out of sharding
(`ignored_params`, accelerate's fallback). Prints one line per case and rank.
Measured with bitsandbytes 0.50.2 and torch 2.13 on the CPU: both sharded cases fail with
"quant_state is required" (FSDP2 turns Params4bit into a plain DTensor); the ignored case trains,
with every rank holding the whole 4-bit base.
"""

from __future__ import annotations

import bitsandbytes as bnb
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard


class Block(torch.nn.Module):
    def __init__(self, storage: torch.dtype):
        super().__init__()
        self.base = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4", quant_storage=storage,
                                      compute_dtype=torch.float32)
        self.base.weight = bnb.nn.Params4bit(self.base.weight.data, requires_grad=False, quant_type="nf4",
                                             quant_storage=storage)
        self.adapter = torch.nn.Linear(64, 64, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.adapter(x)


def check(storage: torch.dtype, ignore_4bit: bool) -> str:
    torch.manual_seed(0)
    model = torch.nn.Sequential(Block(storage), Block(storage)).to("cpu")  # .to quantizes the weights
    x = torch.randn(4, 64)
    want = model(x).sum().item()
    try:
        for block in model:
            fully_shard(block, ignored_params={block.base.weight} if ignore_4bit else None)
        fully_shard(model, ignored_params={b.base.weight for b in model} if ignore_4bit else None)
        y = model(x)
        y.sum().backward()
        return f"trains, same output: {abs(y.sum().item() - want) < 1e-5}"
    except Exception as exc:  # the point is to report what fails
        return f"fails: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


if __name__ == "__main__":
    dist.init_process_group("gloo")
    for storage, ignore in [(torch.uint8, False), (torch.float32, False), (torch.uint8, True)]:
        case = f"quant_storage={storage}, {'4-bit weights left unsharded' if ignore else 'sharded'}"
        print(f"rank {dist.get_rank()}: {case}: {check(storage, ignore)}", flush=True)
    dist.destroy_process_group()

"""One SmolLM2-135M training step's RSS growth against the plan's activations, with glibc's defaults or not.

    OMP_NUM_THREADS=1 python bench/memory_step.py 2 512
    MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=1 python bench/memory_step.py 2 512

Loads the model, attaches LoRA r=32, touches the weights, resets VmHWM (/proc/self/clear_refs) and runs one
forward and backward of BATCH packed examples of LENGTH random tokens, every position scored (the plan's
case). The growth of the peak over the RSS before the step is the step's activations plus the adapters'
gradients; docs/plan.md quotes both runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from oloraplus import plan
from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.config import TrainConfig
from oloraplus.data.collate import CausalLMCollator
from oloraplus.eval.fast_loss import response_only_loss
from oloraplus.models import load_model


def mib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) // 1024


def main(batch: int, length: int) -> None:
    model, _ = attach_adapter(load_model("smollm2-135m").model, AdapterSpec("lora", rank=32))
    model.train()
    g = torch.Generator().manual_seed(0)
    items = [{"input_ids": ids, "labels": ids}
             for ids in (torch.randint(3, 40000, (length,), generator=g).tolist() for _ in range(batch))]
    data = CausalLMCollator(pad_token_id=0, packing=True, pack_length=length)(items)
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 8, dtype=torch.long))  # the mmapped weights become resident first
    Path("/proc/self/clear_refs").write_text("5")
    before = mib("VmRSS")
    response_only_loss(model, data).backward()
    cfg = TrainConfig(method="lora", rank=32, batch_size=batch, max_length=length)
    estimate = plan.estimate(cfg, plan.read_shapes(cfg))
    print(f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', '(glibc default)')}: step peak "
          f"{mib('VmHWM') - before} MiB over the RSS before it; after it {mib('VmRSS') - before} MiB still held; "
          f"plan: activations {estimate.activations / 2**20:.0f} MiB + adapter gradients "
          f"{estimate.trainable * 4 / 2**20:.0f} MiB")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))

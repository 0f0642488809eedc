"""What one diagnostics call costs next to one training step, and the schedule the 2 % budget derives from it.

    python bench/diagnostics_cost.py                     # SmolLM2-135M, OLoRA r = 32 on every linear layer
    python bench/diagnostics_cost.py --model PATH --reps 5

Times, in one process on the current device: the probe the automatic schedule runs first (the largest unit
of a call: one layer when looping, one shape group when batched), the whole call looped and batched, and one
optimizer step (forward, backward, AdamW) of random tokens. From them: the call's cost predicted by the probe,
and the fewest steps between two calls that keep the diagnostics at ≤ 2 % of the loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from oloraplus import models
from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.eval.diagnostics import adapter_diagnostics, cost_probe, factors_on
from oloraplus.optim.ratio import build_optimizer
from oloraplus.train.callbacks import BUDGET


def timed(fn, reps: int) -> float:
    """Median seconds of `fn()` over `reps` calls after one warm-up, the device synchronised around each."""
    fn()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    loaded = models.load_model(args.model)
    model, initial = attach_adapter(loaded.model, AdapterSpec("olora", rank=args.rank, alpha=16.0))
    device = next(p.device for p in model.parameters() if p.requires_grad)
    factors = factors_on({name: (f.B, f.A) for name, f in initial.items()}, device)
    rows = {}
    for batched in (False, True):
        part, units = cost_probe(factors, batched)
        probe = timed(lambda: adapter_diagnostics(model, part, batched=batched), args.reps)
        call = timed(lambda: adapter_diagnostics(model, factors, batched=batched), args.reps)
        rows["batched" if batched else "looped"] = (probe, units, call)
    vocab = model.get_base_model().config.vocab_size
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).to(device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    optimizer = build_optimizer(model.train(), 3e-4, 4.0)

    def step() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step_s = timed(step, args.reps)
    print(f"{args.model}, {len(factors)} adapted layers, r = {args.rank}, device {device}, "
          f"{torch.get_num_threads()} thread(s), load average {load:.2f} at start; step: batch {args.batch} × "
          f"{args.seq} random tokens: {step_s:.3f} s")
    print("| path | probe (s) | units | predicted call (s) | measured call (s) | steps between calls at ≤ 2 % |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (probe, units, call) in rows.items():
        gap = call / (BUDGET * step_s)
        print(f"| {name} | {probe:.4f} | {units} | {probe * units:.3f} | {call:.3f} | {gap:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

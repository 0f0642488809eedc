"""A `train()` run that also records what the Trainer holds once the model is wrapped (test_fsdp.py's worker).

    python -m tests.train.fsdp_probe CONFIG.json PROBE_DIR            # one process (or run() in-process)
    torchrun --standalone --nproc_per_node 2 -m tests.train.fsdp_probe CONFIG.json PROBE_DIR   # --fsdp

At `on_train_begin` (after `accelerator.prepare` has sharded the model and swapped the optimizer's
parameters) rank 0 writes `groups.json`: for every optimizer group its lr and, per parameter, the name,
whether it is a DTensor, its placements and its local and global shapes. Every rank gathers the adapter
(a collective) and rank 0 writes it as `initial.safetensors`: the factors the run starts from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import save_file
from transformers import TrainerCallback

from oloraplus.config import TrainConfig
from oloraplus.train import fsdp, recipe


class WrappedProbe(TrainerCallback):
    def __init__(self, out: Path):
        self.out = out

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        from torch.distributed.tensor import DTensor

        initial = fsdp.gathered_adapter(model)
        if not state.is_world_process_zero:
            return
        names = {id(p): n for n, p in model.named_parameters()}
        groups = {g["name"]: {"lr": g["lr"], "params": [
            {"name": names.get(id(p)), "dtensor": isinstance(p, DTensor),
             "placements": [repr(x) for x in p.placements] if isinstance(p, DTensor) else None,
             "shape": list(p.shape), "local_shape": list(p.to_local().shape) if isinstance(p, DTensor) else None}
            for p in g["params"]]} for g in optimizer.param_groups}
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "groups.json").write_text(json.dumps(groups))
        save_file({k: v.contiguous() for k, v in initial.items()}, self.out / "initial.safetensors")


def run(cfg: TrainConfig, out: Path) -> dict:
    """`recipe.train(cfg)` with the probe among the Trainer's callbacks; returns the run's metrics."""
    original = recipe.RatioTrainer.__init__

    def with_probe(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), WrappedProbe(out)]
        original(self, *args, **kwargs)

    recipe.RatioTrainer.__init__ = with_probe
    try:
        return recipe.train(cfg).metrics
    finally:
        recipe.RatioTrainer.__init__ = original


if __name__ == "__main__":  # one config, or a list of them run one after another (PROBE_DIR/0, PROBE_DIR/1, ...)
    configs = json.loads(Path(sys.argv[1]).read_text())
    if isinstance(configs, dict):
        run(TrainConfig(**configs), Path(sys.argv[2]))
    else:
        for i, fields in enumerate(configs):
            run(TrainConfig(**fields), Path(sys.argv[2]) / str(i))

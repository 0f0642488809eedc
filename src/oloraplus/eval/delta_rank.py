"""Effective rank of each adapted layer's learned update ΔW (the OHoRA paper's Figure 3), from saved adapters.

ΔW is materialised, not derived from each method's factors: the base is loaded in float64, PEFT merges
the saved adapter into it, and ΔW = W_merged − W0 for every adapted layer. One route covers every method
(LoRA's s·BA, OLoRA/PiSSA's base-relative s(B_tA_t − B_0A_0), HiRA's W0 ⊙ BA, OHoRA's A ⊗ Bᵀ), so a new
method needs no code here. Float64 keeps W_merged − W0 free of the cancellation a float32 base would add
(‖W0‖ ≫ ‖ΔW‖ after a short run).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor

from oloraplus.eval.diagnostics import entropy_rank


def delta_weights(base: torch.nn.Module, adapter: str | Path) -> dict[str, Tensor]:
    """ΔW = W_merged − W0 for every layer the adapter at `adapter` adapts; `base` is consumed (merged into)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from oloraplus.adapters.export import load_adapter

    base = base.double()
    before = {name: module.weight.detach().clone() for name, module in base.named_modules()
              if isinstance(getattr(module, "weight", None), Tensor)}
    peft_model = load_adapter(base, adapter)
    prefix = "base_model.model."
    adapted = [name.removeprefix(prefix) for name, module in peft_model.named_modules()
               if isinstance(module, BaseTunerLayer)]
    merged = dict(peft_model.merge_and_unload().named_modules())
    return {name: merged[name].weight.detach() - before[name] for name in adapted if name in before}


def delta_rank(delta: Tensor) -> float:
    """Roy & Vetterli effective rank of ΔW; singular values below float32 rounding of the largest are dropped.

    The adapters are saved in float32, so their ΔW carries relative noise of ~eps32 that would otherwise
    add a sliver of rank to a rank-r update. σ² are the eigenvalues of the smaller Gram matrix ΔWΔWᵀ (float64):
    5x faster than an SVD on SmolLM2's layers, and their error (~√(eps64·n)·σ_max ≈ 1e-7·σ_max) sits far
    below that floor (eps32·max(m, n)·σ_max ≈ 1e-4·σ_max).
    """
    M = delta.double()
    if M.numel() == 0:
        return 0.0
    if M.shape[0] > M.shape[1]:
        M = M.T
    sigma = torch.linalg.eigvalsh(M @ M.T).clamp(min=0).sqrt()
    floor = torch.finfo(torch.float32).eps * max(delta.shape) * sigma.max()
    return entropy_rank(sigma[sigma > floor])


def run_delta_ranks(run_dir: str | Path) -> dict[str, float]:
    """{layer name: effective rank of its ΔW} for a finished run, on its recorded base model (CPU)."""
    from oloraplus import models
    from oloraplus.rundir import ADAPTER_DIR, load_run_config

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    loaded = models.load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, device="cpu",
                               dtype=torch.float64)
    deltas = delta_weights(loaded.model, run_dir / ADAPTER_DIR)
    return {name: delta_rank(delta) for name, delta in deltas.items()}


def _split(layer: str) -> tuple[int | None, str]:
    """(block index, role) of a layer name: `model.layers.12.self_attn.q_proj` → (12, `self_attn.q_proj`)."""
    parts = layer.split(".")
    index = next((i for i, part in enumerate(parts) if part.isdigit()), None)
    return (None, layer) if index is None else (int(parts[index]), ".".join(parts[index + 1:]))


def block_of(layer: str) -> int | None:
    """The transformer block index in a layer name, None outside the blocks."""
    return _split(layer)[0]


def kind_of(layer: str) -> str:
    """The layer's role with the block index removed, to pool the same layer across blocks."""
    return _split(layer)[1]


def per_block(ranks: Mapping[str, float]) -> dict[int, float]:
    """Mean effective rank over each block's adapted layers."""
    blocks: dict[int, list[float]] = {}
    for layer, value in ranks.items():
        block = block_of(layer)
        if block is not None:
            blocks.setdefault(block, []).append(value)
    return {block: statistics.fmean(values) for block, values in sorted(blocks.items())}


def per_kind(ranks: Mapping[str, float]) -> dict[str, float]:
    """Mean effective rank of each layer role over the blocks."""
    kinds: dict[str, list[float]] = {}
    for layer, value in ranks.items():
        kinds.setdefault(kind_of(layer), []).append(value)
    return {kind: statistics.fmean(values) for kind, values in kinds.items()}


def mean_over_runs(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Layer-wise mean over seeds (layers every run has)."""
    if not runs:
        return {}
    shared = set(runs[0]).intersection(*runs[1:])
    return {layer: statistics.fmean(run[layer] for run in runs) for layer in runs[0] if layer in shared}

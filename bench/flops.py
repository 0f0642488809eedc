"""Model FLOPs of LoRA fine-tuning, counted analytically, and the machine's measured fp32 matmul rate.

For one example of ℓ real tokens (model FLOPs in the PaLM convention: no recomputation, full ℓ×ℓ
attention, padding never counts):

    forward  = 2·N·ℓ + 2·N_lora·ℓ + 4·L·d_attn·ℓ²          (QKᵀ and attention·V: 2·ℓ²·d_attn each)
    backward = 2·N·ℓ                                         activation gradients through the frozen W;
                                                             no weight-gradient matmul, W is frozen
             + 4·N_lora·ℓ                                    LoRA: activation and weight gradients
             + 8·L·d_attn·ℓ²                                 attention has no weights: 2× its forward
    train    = 4·N·ℓ + 6·N_lora·ℓ + 12·L·d_attn·ℓ²

N: weights of every matmul (the block linears and the output head, tied or not; not the embedding
lookup); N_lora = Σ r·(in + out) over the adapted layers; L layers; d_attn = heads × head_dim.
(Full fine-tuning would be 6·N·ℓ: the frozen base saves a third of the matmuls.) Small terms left out:
norms, activations, softmax, the loss, and the first layer's q/k/v, whose inputs (the frozen embedding)
need no gradient (2·ℓ·(in·out + r·in) each, < 1 % of a 30-layer model).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Iterable

import torch
from transformers.pytorch_utils import Conv1D

LORA_MARKERS = ("lora_A", "lora_B")


@dataclass(frozen=True)
class FlopModel:
    n_matmul: int  # N
    n_lora: int  # N_lora
    n_layers: int  # L
    d_attn: int  # heads × head_dim

    def forward(self, lengths: Iterable[int]) -> float:
        """Forward FLOPs of examples with these real lengths."""
        return sum(2 * (self.n_matmul + self.n_lora) * n + 4 * self.n_layers * self.d_attn * n * n for n in lengths)

    def train(self, lengths: Iterable[int]) -> float:
        """Forward + backward FLOPs of one pass over examples with these real lengths (frozen base, LoRA trains)."""
        return sum((4 * self.n_matmul + 6 * self.n_lora) * n + 12 * self.n_layers * self.d_attn * n * n
                   for n in lengths)


def _config(model: torch.nn.Module):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config


def flop_model(model: torch.nn.Module) -> FlopModel:
    """N, N_lora, L and d_attn of a (PEFT-wrapped) causal LM, from its modules and config."""
    n_matmul = n_lora = 0
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            if any(marker in name for marker in LORA_MARKERS):
                n_lora += module.weight.numel()
            else:
                n_matmul += module.weight.numel()
    cfg = _config(model)
    layers = getattr(cfg, "num_hidden_layers", None) or cfg.n_layer
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    hidden = getattr(cfg, "hidden_size", None) or cfg.n_embd
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return FlopModel(n_matmul=n_matmul, n_lora=n_lora, n_layers=layers, d_attn=heads * head_dim)


def matmul_rate(n: int = 2048, reps: int = 8) -> dict[str, float]:
    """fp32 FLOP/s of an n×n by n×n torch.mm (2n³ FLOPs): best and median of `reps` after one warm-up.

    The best is the rate this machine can reach (the MFU denominator); a median far below it means
    other processes were competing for the cores.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n**3 / (time.perf_counter() - t0))
    return {"best_flops": max(rates), "median_flops": statistics.median(rates), "n": n, "reps": reps}

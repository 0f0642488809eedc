"""PiSSA initialisation (Meng et al. 2024): adapters start on the principal singular triplets of the weight.

W = U S Vᵀ,  B = U_r (S_r/s)^½,  A = (S_r/s)^½ V_rᵀ,  W' = W − s·B·A  with s = α/r,  so W' + s·B·A = W.

The same factors as PEFT's `init_lora_weights="pissa"` (its `pissa_init`), computed here so that they stay
float32: on a bf16 base PEFT shifts the base with the float32 factors and then rounds the factors to bf16,
so the model starts off by s·(B'A' − BA) and a base-relative export from the rounded factors is off as well.
"""

from __future__ import annotations

import torch
from torch import Tensor

from oloraplus.adapters.olora import LoraFactors, _check_rank, apply_shifted_init_


def pissa_factors(W: Tensor, r: int, s: float) -> tuple[Tensor, Tensor]:
    """(B, A) of an out×in float32 W: the top-r singular triplets, S_r divided by s so that s·B·A = U_r S_r V_rᵀ."""
    _check_rank(W, r)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    root = (S[:r] / s).sqrt()  # (S_r/s)^½, PEFT's `Sr /= scaling` then sqrt
    return U[:, :r] * root, root[:, None] * Vh[:r]  # B (out, r), A (r, in)


def apply_pissa_(peft_model: torch.nn.Module, adapter_name: str = "default") -> dict[str, LoraFactors]:
    """PiSSA-initialise every LoRA layer of `adapter_name` in place; returns the float32 initial factors."""
    return apply_shifted_init_(peft_model, adapter_name, pissa_factors, "pissa")

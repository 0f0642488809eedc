"""OLoRA initialisation (Büyükakyüz 2024): adapters start on the orthonormal basis of the weight.

W = QR,  B = Q_r,  A = R_r,  W' = W − s·B·A  with s = α/r,  so W' + s·B·A = W and the model is unchanged.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from peft.tuners.lora import LoraLayer
from torch import Tensor
from transformers.pytorch_utils import Conv1D

from oloraplus.adapters.quantized import dense_weight, is_quantized, shift_quantized_
from oloraplus.errors import AdapterError


class LoraFactors(NamedTuple):
    """A layer's adapter factors: A is r×in, B is out×r (PEFT's `lora_A.weight`, `lora_B.weight`)."""

    A: Tensor
    B: Tensor


def _check_rank(W: Tensor, r: int) -> None:
    out_features, in_features = W.shape
    if not 0 < r <= min(out_features, in_features):
        raise AdapterError(
            f"--rank {r}: must be in 1..min(out, in)={min(out_features, in_features)} "
            f"for a {out_features}×{in_features} weight"
        )


def olora_factors(W: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """(Q_r, R_r) of W = QR (W is out×in). Q_r spans W's first r columns only, so a thin QR of those suffices."""
    _check_rank(W, r)
    Q_r, _ = torch.linalg.qr(W[:, :r])  # (out, r): same Householder signs as the full QR's first r columns
    R_r = Q_r.T @ W  # (r, in): rows r.. of R belong to columns of Q orthogonal to Q_r
    return Q_r, R_r


def olora_factors_full_qr(W: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """Reference: the full QR of W, sliced to rank r (OLoRA eq. as written)."""
    _check_rank(W, r)
    Q, R = torch.linalg.qr(W)
    return Q[:, :r], R[:r]


def apply_shifted_init_(
    peft_model: torch.nn.Module,
    adapter_name: str,
    factors: Callable[[Tensor, int, float], tuple[Tensor, Tensor]],
    init_name: str,
) -> dict[str, LoraFactors]:
    """Set every LoRA layer of `adapter_name` to (B, A) = factors(W, r, s) of its out×in float32 weight and shift
    the base to W − s·B·A in place; returns the initial factors (CPU float32 clones).

    The factors stay float32 (PEFT keeps adapters in float32 on a low-precision base): the model starts at
    W + (rounding of W − s·B·A) and `save_adapter` writes the exact base-relative difference from these factors.
    A bitsandbytes base (--quantize) is factored dequantized and re-quantized after the shift (adapters/quantized.py).
    """
    initial: dict[str, LoraFactors] = {}
    for name, layer in peft_model.named_modules():
        if not isinstance(layer, LoraLayer) or adapter_name not in layer.lora_A:
            continue
        base = layer.get_base_layer()
        conv1d = isinstance(base, Conv1D)
        quantized = is_quantized(base)
        W = dense_weight(base) if quantized else base.weight.detach().to(torch.float32)
        W = W.T if conv1d else W  # (out, in)
        s = layer.scaling[adapter_name]
        try:
            B, A = factors(W, layer.r[adapter_name], s)
        except AdapterError as exc:
            raise AdapterError(f"layer '{name}': {exc}") from None
        with torch.no_grad():
            layer.lora_B[adapter_name].weight.copy_(B)
            layer.lora_A[adapter_name].weight.copy_(A)
            weight = base.weight
            if quantized:  # bitsandbytes: W_res = deq(Q(W)) − s·B·A in float32, re-quantized (adapters/quantized.py)
                shift_quantized_(base, s * (B @ A))
            elif weight.dtype == torch.float32:  # W' = W − s·B·A in place: no m×n temporary, one pass over W
                if conv1d:
                    weight.addmm_(A.T, B.T, alpha=-s)  # Conv1D stores Wᵀ
                else:
                    weight.addmm_(B, A, alpha=-s)
            else:  # a low-precision base: subtract in float32, round once
                W_res = W - s * (B @ A)
                weight.copy_((W_res.T if conv1d else W_res).to(weight.dtype))
        initial[name] = LoraFactors(A=A.cpu().clone(), B=B.cpu().clone())  # not views of the parameters
    if not initial:
        raise AdapterError(f"adapter '{adapter_name}': the model has no LoRA layers to initialise")
    peft_model.peft_config[adapter_name].init_lora_weights = init_name  # tells save_adapter the base was shifted
    return initial


def apply_olora_(peft_model: torch.nn.Module, adapter_name: str = "default") -> dict[str, LoraFactors]:
    """OLoRA-initialise every LoRA layer of `adapter_name` in place; returns the initial factors (CPU clones).

    PEFT's own `init_lora_weights="olora"` factors the stored weight, which for GPT-2's `Conv1D`
    is in×out; here the QR is always of the out×in matrix the layer computes with.
    """
    return apply_shifted_init_(peft_model, adapter_name, lambda W, r, s: olora_factors(W, r), "olora")

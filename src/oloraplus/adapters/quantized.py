"""OLoRA, PiSSA and OHoRA on a bitsandbytes base (--quantize): the init reads the dequantized weight, the shifted
residual is written back re-quantized, and the rounding that costs is recorded.

For a quantized layer Q(·) with dequantization deq(·), the init works in float32 on W = deq(Q(W0)) (PEFT's
`olora_init` on bitsandbytes does the same) and the base becomes Q(W_res), W_res = W − s·B0·A0. Training therefore
runs on deq(Q(W_res)) + s·Bt·At; the re-quantization error of a layer is ε = ‖deq(Q(W_res)) − W_res‖_F / ‖W_res‖_F.

The saved adapter stays base-relative (the rank-2r [At; A0], [Bt, −B0] of `export.save_adapter`). With the errors
e(X) = deq(Q(X)) − X, the trained model is W0 + e(W0) + e(W_res) + s·(Bt·At − B0·A0). Applied as plain LoRA the
adapter therefore misses e(W_res) on the quantized base Q(W0), and e(W0) + e(W_res) on the full-precision W0 (a LoRA
adapter trained on Q(W0) misses e(W0) there too). `reshift_` makes it exact on the quantized base it was trained on
(`export.load_adapter` calls it; OHoRA folds likewise): it re-quantizes deq(Q(W0)) − s·B0·A0 from the adapter's own
A0, B0 (the same float32 arithmetic and deterministic quantizer as at init), which rebuilds Q(W_res) bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

ERROR_ATTR = "oloraplus_requant_error"  # set on a base layer whose weight was re-quantized: its ε


def is_quantized(layer: nn.Module) -> bool:
    """Whether `layer`'s weight is a bitsandbytes 4-bit or 8-bit parameter (checked without importing bitsandbytes)."""
    return type(getattr(layer, "weight", None)).__name__ in ("Params4bit", "Int8Params")


def has_quantized_layers(model: nn.Module) -> bool:
    return any(is_quantized(m) for m in model.modules())


def dense_weight(layer: nn.Module) -> Tensor:
    """The float32 out×in weight a quantized Linear computes with: deq(Q(W0))."""
    from peft.utils.integrations import dequantize_module_weight

    return dequantize_module_weight(layer).detach().to(torch.float32)


def requantize_(layer: nn.Module, W: Tensor) -> float:
    """Replace `layer`'s quantized weight by Q(W) in its own format; returns ε = ‖deq(Q(W)) − W‖_F / ‖W‖_F."""
    import bitsandbytes as bnb

    old = layer.weight
    device = old.device
    W = W.detach().to(torch.float32).contiguous()
    if type(old).__name__ == "Params4bit":
        new = bnb.nn.Params4bit(W, requires_grad=False, blocksize=old.blocksize,
                                compress_statistics=old.compress_statistics, quant_type=old.quant_type,
                                quant_storage=old.quant_storage, module=layer)
    else:  # Int8Params quantizes only from data on the CPU
        new = bnb.nn.Int8Params(W.cpu(), requires_grad=False, has_fp16_weights=False)
        layer.state.CB = layer.state.SCB = None  # the next forward takes the new statistics from the weight
    layer.weight = new.to(device)  # bitsandbytes quantizes when the parameter is placed
    error = float(torch.linalg.norm(dense_weight(layer) - W.to(device)) / torch.linalg.norm(W).clamp_min(1e-30))
    setattr(layer, ERROR_ATTR, error)
    return error


def shift_quantized_(layer: nn.Module, delta: Tensor) -> float:
    """Q(W) → Q(deq(Q(W)) − delta) for a float32 out×in `delta` (s·B0·A0, or OHoRA's s·A0 ⊗ B0ᵀ); returns ε."""
    return requantize_(layer, dense_weight(layer) - delta.to(torch.float32))


def requantization_errors(model: nn.Module) -> dict[str, float]:
    """{layer name: ε} of every re-quantized base layer."""
    return {name: getattr(m, ERROR_ATTR) for name, m in model.named_modules() if hasattr(m, ERROR_ATTR)}


def requantization_metrics(model: nn.Module, quantize: str) -> dict[str, object]:
    """What metrics.json records for a quantized run: the format, and the mean and max ε over re-quantized layers
    (none for LoRA, DoRA, EVA, HiRA, which leave the base as loaded)."""
    if quantize == "none":
        return {}
    errors = list(requantization_errors(model).values())
    return {"quantize": quantize, "requant_layers": len(errors),
            "requant_error_mean": sum(errors) / len(errors) if errors else None,
            "requant_error_max": max(errors) if errors else None}


def reshift_(peft_model: nn.Module, adapter_name: str = "default") -> int:
    """Turn a loaded base-relative rank-2r OLoRA/PiSSA adapter on a quantized base back into the trained model:
    base Q(W − s·B0·A0) and the live half (At, Bt); the −B0 half of B is zeroed. Returns the layers changed."""
    from peft.tuners.lora import LoraLayer

    count = 0
    for layer in peft_model.modules():
        if not isinstance(layer, LoraLayer) or adapter_name not in layer.lora_A:
            continue
        base = layer.get_base_layer()
        if not is_quantized(base):
            continue
        r = layer.r[adapter_name] // 2  # A' = [At; A0] (2r, in), B' = [Bt, −B0] (out, 2r)
        A_0 = layer.lora_A[adapter_name].weight[r:].detach().to(torch.float32)
        B_0 = -layer.lora_B[adapter_name].weight[:, r:].detach().to(torch.float32)
        s = layer.scaling[adapter_name]
        shift_quantized_(base, s * (B_0 @ A_0))  # the expression apply_shifted_init_ subtracts
        with torch.no_grad():
            layer.lora_B[adapter_name].weight[:, r:] = 0
        count += 1
    return count

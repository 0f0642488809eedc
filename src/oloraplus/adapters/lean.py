"""Fewer ops per training step, same math: a lean LoRA forward and a packed mask built without a host sync.

On a GPU a LoRA step at small batch is bound by the host launching kernels, so it costs in proportion to the
ops it dispatches (bench/opcount.md). Two sources of ops that change nothing in the result:

- PEFT's `lora.Linear.forward` casts each LoRA input to the adapter's dtype (fp32 master weights on a bf16
  base) and autocast casts it straight back, then scales and adds in two more ops, and autograd records a
  node for each. `LeanLinear` computes y = W x + s · B A x as one autograd node (`lora_linear`): the weights
  are cast, not the activation, s and the residual add are folded into one `addmm_`, and the backward is
  written out. Dropout is called only when p > 0 (PEFT already uses an `nn.Identity` at p = 0, which
  dispatches nothing).
- transformers' packed-sequence path (restarting `position_ids`, no attention mask) asks the GPU whether the
  rows are packed, `(mask[:, -1] == 0).all()`, once per forward: a host sync that drains the queue of launched
  kernels, and SDPA then turns the boolean mask into an additive one in every layer. `packed_causal_mask`
  builds that additive mask from the position ids on the device, once per forward and without a sync; the
  model receives it as a prepared 4D mask, which transformers passes through untouched.

Both apply only where the result is the same: a plain LoRA layer (one active adapter, not merged, no DoRA or
other variant, no LoRA bias) computing in autocast or in the adapter's own dtype; the mask only for Llama
models using SDPA. Elsewhere PEFT's and transformers' own code runs. The saved adapter is unchanged: only
the forward changes, never a parameter.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear

# Model types whose decoder uses one causal mask for every layer (no sliding window, no extra mask functions).
PACKED_MASK_MODEL_TYPES = ("llama",)
MASK_HOOK = "_oloraplus_packed_mask_hook"  # attribute of the decoder holding the hook's handle


class LeanLinear(LoraLinear):
    """PEFT's LoRA Linear computing y = W x + s · B A x in the fewest ops (`lora_linear`), else PEFT's forward."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self._lean_adapter(x)
        if name is None or args or kwargs:
            return super().forward(x, *args, **kwargs)
        A, B, s = self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]  # (r, in), (out, r)
        dropout = self.lora_dropout[name]
        if type(self.base_layer) is torch.nn.Linear and isinstance(dropout, torch.nn.Identity):
            return lora_linear(x, self.base_layer.weight, self.base_layer.bias, A, B, s)
        result = self.base_layer(x)  # another base (Conv1D, ...) or dropout: PEFT's autograd, four ops fewer
        if not isinstance(dropout, torch.nn.Identity):
            x = dropout(x)
        h = F.linear(x, A)  # (..., r); under autocast A is cast, not x
        out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]), B.t(), alpha=s)
        return out.view(result.shape)

    def _lean_adapter(self, x: torch.Tensor) -> str | None:
        """The one active plain adapter whose lean forward equals PEFT's here, else None."""
        if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if name not in self.lora_A or name in self.lora_variant or self.lora_B[name].bias is not None:
            return None
        if not isinstance(self.scaling[name], Real):
            return None
        # Outside autocast PEFT computes the adapter in the adapter's dtype (fp32 on a bf16 base): keep its forward.
        if x.dtype != self.lora_A[name].weight.dtype and not torch.is_autocast_enabled(x.device.type):
            return None
        return name


def lora_linear(x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor,
                s: float) -> torch.Tensor:
    """y = x Wᵀ + bias + s · (x Aᵀ) Bᵀ in autocast's dtype when it is on (else x's), as PEFT + autocast do.

    One autograd node instead of a dozen: the forward is 5 ops (A and B cast, three matmuls), the backward 9
    (four matmuls, the A and B gradients cast back to their dtype, two scalings), where autograd on PEFT's
    forward dispatches about twice as many, counting views.
    """
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return _LoraLinear.apply(x, W, bias, A, B, s, dtype)


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W, bias, A, B, s, dtype):
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)  # (N, in)
            Wc, Ac, Bc = W.to(dtype), A.to(dtype), B.to(dtype)  # the weights cast, never the activation
            h = torch.mm(x2, Ac.t())  # (N, r)
            y = torch.mm(x2, Wc.t()) if bias is None else torch.addmm(bias.to(dtype), x2, Wc.t())
            y.addmm_(h, Bc.t(), alpha=s)  # W x + s · B (A x)
        ctx.save_for_backward(x2, h, Wc, Ac, Bc)
        ctx.s, ctx.x_shape, ctx.x_dtype, ctx.dtypes = s, x.shape, x.dtype, (A.dtype, B.dtype)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, g):
        x2, h, Wc, Ac, Bc = ctx.saved_tensors
        s, (a_dtype, b_dtype) = ctx.s, ctx.dtypes
        need_x, _, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        g2 = g.reshape(-1, g.shape[-1]).to(h.dtype)  # (N, out)
        gx = ga = gb = gbias = None
        if need_x or need_a:
            gh = torch.mm(g2, Bc)  # (N, r): ∂L/∂(A x)
            if s != 1:
                gh = gh.mul(s)
            if need_x:
                gx = torch.mm(g2, Wc).addmm_(gh, Ac).view(ctx.x_shape).to(ctx.x_dtype)
            if need_a:
                ga = torch.mm(gh.t(), x2).to(a_dtype)
        if need_b:
            gb = torch.mm(g2.t(), h).to(b_dtype)
            if s != 1:
                gb = gb.mul_(s)
        if need_bias:
            gbias = g2.sum(0).to(ctx.bias_dtype)
        return gx, None, gbias, ga, gb, None, None


def make_lean_(model: torch.nn.Module, mask: bool | None = None) -> torch.nn.Module:
    """Give every plain PEFT LoRA Linear of `model` the lean forward and a Llama model the sync-free packed mask.

    `mask` None: the packed mask only on a CUDA model, where it removes a host sync per forward. On the CPU there is
    no sync to remove, and the CPU's SDPA keeps more for backward with the dense float mask (measured in
    tests/test_plan.py: about rows × rows·L²·4 bytes more per layer), so transformers' own path stays there.
    In place; returns `model`. Layers of other types (DoRA's are plain LoRA Linears with a variant and fall
    back per call; HiRA, OHoRA, quantized layers are other classes) keep their forward.
    """
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = LeanLinear
    if mask is None:
        mask = any(p.device.type == "cuda" for p in model.parameters())
    decoder = _decoder(model) if mask else None
    if decoder is not None and not hasattr(decoder, MASK_HOOK):
        setattr(decoder, MASK_HOOK, decoder.register_forward_pre_hook(_pass_packed_mask, with_kwargs=True))
    return model


def undo_lean_(model: torch.nn.Module, lora: bool = True, mask: bool = True) -> torch.nn.Module:
    """PEFT's LoRA forward (`lora`) and transformers' packed mask (`mask`) back where `make_lean_` changed them."""
    for module in model.modules():
        if lora and type(module) is LeanLinear:
            module.__class__ = LoraLinear
        if mask and hasattr(module, MASK_HOOK):
            getattr(module, MASK_HOOK).remove()
            delattr(module, MASK_HOOK)
    return model


def _decoder(model: torch.nn.Module) -> torch.nn.Module | None:
    """The Llama decoder (the module that builds the causal mask) when its attention is SDPA, else None."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if (type(module).__name__ == "LlamaModel" and getattr(config, "model_type", None) in PACKED_MASK_MODEL_TYPES
                and getattr(config, "_attn_implementation", None) == "sdpa"):
            return module
    return None


def packed_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(rows, 1, L, L) mask of packed rows: query q may attend key k when both are in one example and k is not after q.

    An example starts wherever the position does not follow the previous one by 1, as transformers'
    `find_packed_sequence_indices` reads it; the boolean mask is `sdpa_mask` of its packed-sequence mask function.
    With `dtype`, the additive mask SDPA makes of a boolean one (0 where attended, -inf elsewhere): built here once
    per forward instead of by SDPA in every layer.
    """
    first = position_ids[:, :1] - 1
    example = (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)  # (rows, L) example index
    same = example[:, None, :, None] == example[:, None, None, :]
    attend = same & (position_ids[:, None, None, :] <= position_ids[:, None, :, None])
    if dtype is None:
        return attend
    return torch.zeros(attend.shape, dtype=dtype, device=attend.device).masked_fill_(~attend, float("-inf"))


def _attention_dtype(decoder: torch.nn.Module, device: torch.device) -> torch.dtype:
    """The dtype SDPA sees: autocast's when it is on, else the hidden states' (the embeddings')."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return decoder.get_input_embeddings().weight.dtype


def _pass_packed_mask(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    """Forward pre-hook: packed rows (position ids, no mask, no cache) get `packed_causal_mask` as their mask."""
    position_ids = kwargs.get("position_ids")
    if (args or position_ids is None or kwargs.get("attention_mask") is not None
            or kwargs.get("past_key_values") is not None or kwargs.get("use_cache", True) is not False):
        return None
    if position_ids.dim() != 2:
        return None
    mask = packed_causal_mask(position_ids, _attention_dtype(module, position_ids.device))
    return args, {**kwargs, "attention_mask": mask}

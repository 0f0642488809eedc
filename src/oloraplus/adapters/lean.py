"""Fewer ops per training step, same math: a lean LoRA forward and a packed mask built without a host sync.

On a GPU a LoRA step at small batch is bound by the host launching kernels, so it costs in proportion to the
ops it dispatches (bench/opcount.md). Two sources of ops that change nothing in the result:

- PEFT's `lora.Linear.forward` casts each LoRA input to the adapter's dtype (fp32 master weights on a bf16
  base) and autocast casts it straight back, then scales and adds in two more ops, and autograd records a
  node for each. `LeanLinear` computes y = W x + s · B A x as one autograd node (`lora_linears`): the weights
  are cast, not the activation, s and the residual add are folded into one `addmm_`, and the backward is
  written out. Layers that read one input (q/k/v; gate/up) are one node, their A projections one
  matmul of the stacked A's (`LeanLinear._shared_output`). Dropout is called only when p > 0 (PEFT already uses an `nn.Identity` at p = 0,
  which dispatches nothing).
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
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear

# Model types whose decoder uses one causal mask for every layer (no sliding window, no extra mask functions).
PACKED_MASK_MODEL_TYPES = ("llama",)
MASK_HOOK = "_oloraplus_packed_mask_hook"  # attribute of the decoder holding the hook's handle
SIBLINGS = "_lean_siblings"  # attribute of a LeanLinear: the layers reading its input, itself included
# Sibling layers that read one input in Llama-like decoders (attention: q/k/v; MLP: gate/up).
SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class LeanLinear(LoraLinear):
    """PEFT's LoRA Linear computing y = W x + s · B A x in the fewest ops (`lora_linears`), else PEFT's forward."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = self._lean_adapter(x)
        if name is None or args or kwargs:
            return super().forward(x, *args, **kwargs)
        parts = self._lean_parts(x, name)
        if parts is not None:
            out = self._shared_output(x, parts) if self.__dict__.get(SIBLINGS) else None  # make_lean_, unshare_
            return lora_linears(x, [parts])[0] if out is None else out
        A, B, s = self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]  # (r, in), (out, r)
        result = self.base_layer(x)  # another base (Conv1D, ...) or dropout: PEFT's autograd, four ops fewer
        dropout = self.lora_dropout[name]
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

    def _lean_parts(self, x: torch.Tensor, name: str | None = None) -> Layer | None:
        """(W, bias, A, B, s) when `lora_linears` computes this layer for `x` (plain Linear base, no dropout)."""
        name = name or self._lean_adapter(x)
        if name is None or type(self.base_layer) is not torch.nn.Linear:
            return None
        if not isinstance(self.lora_dropout[name], torch.nn.Identity):
            return None
        base = self.base_layer
        return base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, float(self.scaling[name])

    def _shared_output(self, x: torch.Tensor, parts: Layer) -> torch.Tensor | None:
        """This layer's output for `x` (its `_lean_parts` are `parts`) computed with its siblings' (`SIBLINGS`), or
        None: compute it alone.

        Siblings read one input (q/k/v; gate/up): the first one called computes all their outputs in one node
        (`lora_linears`: the A's stacked into one matmul, one backward) and leaves each sibling its output and the
        input it is for; the model still calls each layer, and the sibling collects its output when called with
        that very tensor. An output never collected (the siblings read different inputs in this model) turns the
        sharing off for good: each layer then computes its own, as without it. The state lives on the layers
        themselves, so a compiled decoder layer is one graph for every layer.
        """
        if self._lean_input is x:
            out, self._lean_input, self._lean_output = self._lean_output, None, None
            return out
        siblings = self.__dict__[SIBLINGS]
        if any(m._lean_input is not None for m in siblings):  # never collected: they do not read one input here
            for m in siblings:
                m._lean_input, m._lean_output, m.__dict__[SIBLINGS] = None, None, ()
            return None
        every = [parts if m is self else m._lean_parts(x) for m in siblings]
        if any(p is None for p in every) or len({(p[2].dtype, p[3].dtype) for p in every}) != 1:
            return None
        mine = None
        for m, y in zip(siblings, lora_linears(x, every)):
            if m is self:
                mine = y
            else:
                m._lean_input, m._lean_output = x, y
        return mine


Layer = tuple[torch.Tensor, "torch.Tensor | None", torch.Tensor, torch.Tensor, float]  # W, bias, A, B, s


def lora_linears(x: torch.Tensor, layers: Sequence[Layer]) -> tuple[torch.Tensor, ...]:
    """y_i = x W_iᵀ + b_i + s_i · (x A_iᵀ) B_iᵀ for LoRA layers reading one x (Eq. 1 of LoRA, once per layer).

    Computed in autocast's dtype when it is on (else x's), as PEFT + autocast do, in one autograd node: the
    weights are cast, never the activation; the A's of all layers are stacked into one matmul (same math: the
    rows of x [A_1; A_2]ᵀ are x A_1ᵀ and x A_2ᵀ side by side); s_i and the residual add are folded into an
    `addmm_`, and the backward is written out. One layer: 5 forward ops and 7 backward (counting no views).
    """
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    scales = tuple(layer[4] for layer in layers)
    return _LoraLinears.apply(x, dtype, scales, *(t for W, b, A, B, _ in layers for t in (W, b, A, B)))


def lora_linear(x: torch.Tensor, W: torch.Tensor, bias: torch.Tensor | None, A: torch.Tensor, B: torch.Tensor,
                s: float) -> torch.Tensor:
    """One LoRA layer's y = x Wᵀ + bias + s · (x Aᵀ) Bᵀ (`lora_linears` of one)."""
    return lora_linears(x, [(W, bias, A, B, s)])[0]


class _LoraLinears(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, dtype, scales, *flat):
        Ws, biases, As, Bs = flat[0::4], flat[1::4], flat[2::4], flat[3::4]
        ranks = [A.shape[0] for A in As]
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)  # (N, in)
            Ac = (As[0] if len(As) == 1 else torch.cat(As)).to(dtype)  # (Σr, in): the stacked A's, cast once
            h = torch.mm(x2, Ac.t())  # (N, Σr): every layer's A x in one matmul
            hs = (h,) if len(As) == 1 else h.split(ranks, dim=1)
            Wcs, Bcs, ys = [], [], []
            for W, bias, B, h_i, s, Bc in zip(Ws, biases, Bs, hs, scales, _cast_each(Bs, dtype)):
                Wc = W.to(dtype)  # the weights cast, never the activation
                y = torch.mm(x2, Wc.t()) if bias is None else torch.addmm(bias.to(dtype), x2, Wc.t())
                y.addmm_(h_i, Bc.t(), alpha=s)  # W x + s · B (A x)
                Wcs.append(Wc)
                Bcs.append(Bc)
                ys.append(y.view(*x.shape[:-1], y.shape[-1]))
        ctx.save_for_backward(x2, h, Ac, *Wcs, *Bcs)
        ctx.scales, ctx.ranks, ctx.x_shape, ctx.x_dtype = scales, ranks, x.shape, x.dtype
        ctx.a_dtype, ctx.b_dtype = As[0].dtype, Bs[0].dtype
        ctx.bias_dtypes = [None if b is None else b.dtype for b in biases]
        return tuple(ys)

    @staticmethod
    def backward(ctx, *gs):
        x2, h, Ac, *rest = ctx.saved_tensors
        k, scales, ranks = len(gs), ctx.scales, ctx.ranks
        Wcs, Bcs = rest[:k], rest[k:]
        need = ctx.needs_input_grad
        need_x = need[0]
        need_bias = [need[3 + 4 * i + 1] for i in range(k)]
        need_a = any(need[3 + 4 * i + 2] for i in range(k))
        need_b = [need[3 + 4 * i + 3] for i in range(k)]
        g2s = [g.reshape(-1, g.shape[-1]).to(h.dtype) for g in gs]  # (N, out_i)
        grads: list[torch.Tensor | None] = [None] * (4 * k)
        if need_x or need_a:
            one_s = len(set(scales)) == 1  # then s is folded into the matmuls below
            ghs = [torch.mm(g2, Bc) for g2, Bc in zip(g2s, Bcs)]  # (N, r_i): ∂L/∂(A_i x) / s_i
            if not one_s:
                ghs = [gh.mul_(s) for gh, s in zip(ghs, scales)]
            gh, s = (ghs[0] if k == 1 else torch.cat(ghs, dim=1)), (scales[0] if one_s else 1.0)
            if need_x:
                gx = torch.mm(g2s[0], Wcs[0])
                for g2, Wc in zip(g2s[1:], Wcs[1:]):
                    gx.addmm_(g2, Wc)
                gx = gx.addmm_(gh, Ac, alpha=s).view(ctx.x_shape).to(ctx.x_dtype)
            if need_a:  # s · ghᵀ x in one op: addmm with beta = 0 ignores its first argument (only its shape)
                ga = torch.addmm(Ac, gh.t(), x2, beta=0, alpha=s).to(ctx.a_dtype)
                for i, ga_i in enumerate((ga,) if k == 1 else ga.split(ranks)):
                    grads[4 * i + 2] = ga_i
        if any(need_b):
            hs = (h,) if k == 1 else h.split(ranks, dim=1)
            gbs = [torch.addmm(Bc, g2.t(), h_i, beta=0, alpha=s) if need_b[i] else None
                   for i, (g2, h_i, Bc, s) in enumerate(zip(g2s, hs, Bcs, scales))]
            for i, gb in enumerate(_cast_each(gbs, ctx.b_dtype)):
                grads[4 * i + 3] = gb
        for i, g2 in enumerate(g2s):
            if need_bias[i]:
                grads[4 * i + 1] = g2.sum(0).to(ctx.bias_dtypes[i])
        return (gx if need_x else None), None, None, *grads


def _cast_each(tensors: Sequence[torch.Tensor | None], dtype: torch.dtype) -> list[torch.Tensor | None]:
    """Each tensor in `dtype`. Compiled, as one cast of their concatenation: inductor makes the concatenation and
    the cast one kernel instead of one per tensor; eager, one cast each (the concatenation would be an op more)."""
    present = [t for t in tensors if t is not None]
    if len(present) < 2 or not torch.compiler.is_compiling() or len({t.shape[1:] for t in present}) != 1:
        return [None if t is None else t.to(dtype) for t in tensors]
    cast = iter(torch.cat(present).to(dtype).split([t.shape[0] for t in present]))
    return [None if t is None else next(cast) for t in tensors]


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
    for parent in model.modules():
        for names in SHARED_INPUT:
            members = [getattr(parent, n) for n in names if type(getattr(parent, n, None)) is LeanLinear]
            if len(members) > 1 and not any(m.__dict__.get(SIBLINGS) for m in members):
                for member in members:  # plain attributes: not submodules, not in the state dict
                    member.__dict__.update({SIBLINGS: tuple(members), "_lean_input": None, "_lean_output": None})
    if mask is None:
        mask = any(p.device.type == "cuda" for p in model.parameters())
    decoder = _decoder(model) if mask else None
    if decoder is not None and not hasattr(decoder, MASK_HOOK):
        setattr(decoder, MASK_HOOK, decoder.register_forward_pre_hook(_pass_packed_mask, with_kwargs=True))
    return model


def undo_lean_(model: torch.nn.Module, lora: bool = True, mask: bool = True) -> torch.nn.Module:
    """PEFT's LoRA forward (`lora`) and transformers' packed mask (`mask`) back where `make_lean_` changed them."""
    if lora:
        unshare_(model)
    for module in model.modules():
        if lora and type(module) is LeanLinear:
            module.__class__ = LoraLinear
        if mask and hasattr(module, MASK_HOOK):
            getattr(module, MASK_HOOK).remove()
            delattr(module, MASK_HOOK)
    return model


def unshare_(model: torch.nn.Module) -> torch.nn.Module:
    """Each lean layer computes its own output, none with its siblings'. For a compiled region that cannot hold
    the siblings' shared state: dynamo refuses it inside a gradient checkpoint's region. In place."""
    for module in model.modules():
        for key in (SIBLINGS, "_lean_input", "_lean_output"):
            module.__dict__.pop(key, None)
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

"""The lean LoRA forward and the sync-free packed mask against PEFT's and transformers' own results."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.masking_utils import create_causal_mask

from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.adapters.lean import LeanLinear, make_lean_, packed_causal_mask, undo_lean_
from oloraplus.data.collate import CausalLMCollator
from tests.conftest import tiny_gpt2, tiny_llama

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_llama(dtype: torch.dtype = torch.float32, **lora) -> torch.nn.Module:
    """A tiny Llama with LoRA whose B is random (init_lora_weights=False), so the adapter path is exercised."""
    model = tiny_llama(128, attn_implementation="sdpa").to(dtype)
    torch.manual_seed(1)
    config = dict(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    return get_peft_model(model, LoraConfig(**{**config, **lora}))


def padded_batch(rows: int = 2, length: int = 9) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 128, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, length - 3:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def loss_and_grads(model: torch.nn.Module, batch: dict, autocast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(**batch).logits
    logits.float().square().mean().backward()
    return logits.float().detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def lean_copy(model: torch.nn.Module) -> torch.nn.Module:
    lean = make_lean_(copy.deepcopy(model), mask=True)
    assert sum(type(m) is LeanLinear for m in lean.modules()) == 14
    return lean


def test_fp32_same_logits_and_gradients_as_peft(one_thread):
    reference = peft_llama()
    lean = lean_copy(reference)
    batch = padded_batch()
    want, want_grads = loss_and_grads(reference, batch, autocast=False)
    got, got_grads = loss_and_grads(lean, batch, autocast=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert want_grads.keys() == got_grads.keys() and len(want_grads) == 28
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_base_fp32_adapters_under_autocast_as_close_to_fp32_as_peft(one_thread):
    """bf16 rounds differently in each order of ops: the lean forward must be as close to the fp32 truth as PEFT's."""
    reference = peft_llama(torch.bfloat16)
    assert {p.dtype for p in reference.parameters() if p.requires_grad} == {torch.float32}  # PEFT's fp32 adapters
    truth = copy.deepcopy(reference).float()
    lean = lean_copy(reference)
    batch = padded_batch()
    exact, exact_grads = loss_and_grads(truth, batch, autocast=False)
    peft, peft_grads = loss_and_grads(reference, batch, autocast=True)
    got, got_grads = loss_and_grads(lean, batch, autocast=True)
    assert got.dtype == peft.dtype
    peft_err, lean_err = (peft - exact).abs().max(), (got - exact).abs().max()
    assert 0 < lean_err <= 2 * peft_err
    for name in exact_grads:
        assert got_grads[name].dtype == torch.float32
        scale = exact_grads[name].abs().max()
        peft_err = (peft_grads[name] - exact_grads[name]).abs().max()
        lean_err = (got_grads[name] - exact_grads[name]).abs().max()
        assert lean_err <= 2 * peft_err + 1e-3 * scale, name


@pytest.mark.parametrize("case", ["merged", "disabled", "dora", "dropout", "gpt2"])
def test_falls_back_or_matches_where_the_lean_path_does_not_apply(case, one_thread):
    if case == "gpt2":  # Conv1D base layers: the addmm path
        torch.manual_seed(1)
        reference = get_peft_model(tiny_gpt2(128).eval(), LoraConfig(  # eval: GPT-2's own dropout off
            r=4, lora_alpha=8, target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, init_lora_weights=False))
    else:
        reference = peft_llama(use_dora=case == "dora", lora_dropout=0.3 if case == "dropout" else 0.0)
    lean = make_lean_(copy.deepcopy(reference), mask=True)
    assert any(type(m) is LeanLinear for m in lean.modules())
    batch = padded_batch()
    if case == "merged":
        reference.merge_adapter()
        lean.merge_adapter()
    if case == "dropout":  # same draws: the same elements dropped
        torch.manual_seed(5)
        want = reference(**batch).logits
        torch.manual_seed(5)
        got = lean(**batch).logits
    elif case == "disabled":
        with reference.disable_adapter():
            want = reference(**batch).logits
        with lean.disable_adapter():
            got = lean(**batch).logits
    else:
        want, got = reference(**batch).logits, lean(**batch).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_saved_adapter_unchanged_and_undo_restores_peft(one_thread):
    model, _ = attach_adapter(tiny_llama(128, attn_implementation="sdpa"), AdapterSpec("olora", rank=4, alpha=8))
    assert sum(type(m) is LeanLinear for m in model.modules()) == 14  # attach_adapter applies it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    undo_lean_(model)
    assert not any(type(m) is LeanLinear for m in model.modules())
    assert sum(type(m) is LoraLinear for m in model.modules()) == 14
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def packed_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    items = [{"input_ids": ids, "labels": ids} for ids in
             (torch.randint(1, 128, (n,), generator=g).tolist() for n in (7, 5, 4, 3, 6))]
    batch = CausalLMCollator(pad_token_id=0, packing=True, pack_length=13)(items)
    assert batch["position_ids"].shape[0] == 3  # 25 tokens in rows of ≤ 13: several examples in every row
    return {k: batch[k] for k in ("input_ids", "position_ids", "use_cache")}


def test_packed_mask_equals_transformers_packed_mask():
    model = tiny_llama(128, attn_implementation="sdpa")
    position_ids = packed_inputs()["position_ids"]
    embeds = torch.zeros(*position_ids.shape, 32)
    want = create_causal_mask(config=model.config, inputs_embeds=embeds, attention_mask=None,
                              past_key_values=None, position_ids=position_ids)
    got = packed_causal_mask(position_ids)
    assert want.dtype == got.dtype == torch.bool and torch.equal(got, want)
    additive = packed_causal_mask(position_ids, torch.bfloat16)
    assert additive.dtype == torch.bfloat16
    assert torch.equal(additive, torch.where(want, 0.0, float("-inf")).to(torch.bfloat16))


class Syncs(TorchDispatchMode):
    """Counts `.item()`-like reads of a tensor (on a GPU each is a host sync)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("autocast", [False, True])
def test_packed_rows_same_logits_without_the_host_sync(autocast, one_thread):
    reference = peft_llama()
    lean = lean_copy(reference)
    undo_lean_(lean, mask=False)
    inputs = packed_inputs()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        with Syncs() as before:
            want = reference(**inputs).logits
        with Syncs() as after:
            got = lean(**inputs).logits
    assert before.n >= 1 and after.n == 0  # transformers' (mask[:, -1] == 0).all() is gone
    tolerance = dict(rtol=1e-5, atol=1e-6) if not autocast else dict(rtol=0.02, atol=0.02)
    torch.testing.assert_close(got.float(), want.float(), **tolerance)


def test_mask_hook_leaves_padded_and_cached_calls_alone(one_thread):
    reference = peft_llama()
    lean = lean_copy(reference)
    batch = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(lean(**batch).logits, reference(**batch).logits, rtol=1e-5, atol=1e-6)
        ids = batch["input_ids"][:1, :5]
        want = reference.generate(input_ids=ids, max_new_tokens=3, do_sample=False)
        assert torch.equal(lean.generate(input_ids=ids, max_new_tokens=3, do_sample=False), want)


def test_packed_mask_hook_only_on_cuda_by_default(one_thread):
    """On the CPU there is no host sync to remove, and the dense float mask costs CPU SDPA memory: off there."""
    from oloraplus.adapters.lean import MASK_HOOK

    model = undo_lean_(peft_llama())
    make_lean_(model)  # a CPU model: the lean LoRA forward, not the mask
    assert any(type(m) is LeanLinear for m in model.modules())
    assert not any(hasattr(m, MASK_HOOK) for m in model.modules())
    make_lean_(model, mask=True)
    assert any(hasattr(m, MASK_HOOK) for m in model.modules())


def test_stacked_layers_equal_materialised_matrices_with_other_ranks_scales_and_a_bias():
    """y_i = x W_iᵀ + b_i + s_i x A_iᵀ B_iᵀ and every gradient, against autograd on the plain fp64 expression."""
    from oloraplus.adapters.lean import lora_linears

    torch.manual_seed(0)
    shapes = [(6, 2, 0.5), (4, 3, 2.0), (5, 1, 0.25)]  # (out, r, s): ranks and scales differ per layer
    parts = [(torch.randn(out, 8, dtype=torch.float64), torch.randn(out, dtype=torch.float64) if i == 1 else None,
              torch.randn(r, 8, dtype=torch.float64, requires_grad=True),
              torch.randn(out, r, dtype=torch.float64, requires_grad=True), s) for i, (out, r, s) in enumerate(shapes)]
    x = torch.randn(2, 7, 8, dtype=torch.float64, requires_grad=True)
    gs = [torch.randn(2, 7, out, dtype=torch.float64) for out, _, _ in shapes]
    ys = lora_linears(x, parts)
    torch.autograd.backward(ys, gs)
    got = [x.grad] + [t.grad for p in parts for t in p[2:4]]
    x_ref = x.detach().clone().requires_grad_()
    refs = [(p[2].detach().clone().requires_grad_(), p[3].detach().clone().requires_grad_()) for p in parts]
    want_ys = [x_ref @ W.T + (0 if b is None else b) + s * (x_ref @ A.T) @ B.T
               for (W, b, _, _, s), (A, B) in zip(parts, refs)]
    torch.autograd.backward(want_ys, gs)
    for y, want in zip(ys, want_ys):
        torch.testing.assert_close(y, want)
    want = [x_ref.grad] + [t.grad for pair in refs for t in pair]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def count_group_calls(model: torch.nn.Module, monkeypatch) -> list[int]:
    from oloraplus.adapters import lean

    calls: list[int] = []
    real = lean.lora_linears
    monkeypatch.setattr(lean, "lora_linears", lambda x, parts: calls.append(len(parts)) or real(x, parts))
    return calls


def test_q_k_v_and_gate_up_are_computed_together_with_peft_results(one_thread, monkeypatch):
    reference = peft_llama()
    lean = lean_copy(reference)
    calls = count_group_calls(lean, monkeypatch)
    batch = padded_batch()
    want, want_grads = loss_and_grads(reference, batch, autocast=False)
    got, got_grads = loss_and_grads(lean, batch, autocast=False)
    assert sorted(calls) == [1, 1, 1, 1, 2, 2, 3, 3]  # per layer (2 layers): q/k/v, gate/up, o, down
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_siblings_reading_other_inputs_stop_sharing_and_stay_correct(one_thread, monkeypatch):
    """A model whose k_proj reads another tensor than q_proj (e.g. cross-attention): the sharing turns itself off."""
    from oloraplus.adapters.lean import SIBLINGS

    reference = peft_llama()
    lean = lean_copy(reference)
    attention = lean.get_base_model().model.layers[0].self_attn
    assert attention.q_proj.__dict__[SIBLINGS] == (attention.q_proj, attention.k_proj, attention.v_proj)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        q = attention.q_proj(x)
        assert attention.k_proj._lean_input is x and attention.v_proj._lean_input is x  # q's call computed theirs
        k = attention.k_proj(x + 1)  # not the input q_proj was called with: computes its own, sharing off
        assert all(not m.__dict__[SIBLINGS] and m._lean_input is None
                   for m in (attention.q_proj, attention.k_proj, attention.v_proj))
        q2 = attention.q_proj(x)
        ref = reference.get_base_model().model.layers[0].self_attn
        torch.testing.assert_close(q, ref.q_proj(x))
        torch.testing.assert_close(q2, ref.q_proj(x))
        torch.testing.assert_close(k, ref.k_proj(x + 1))
        torch.testing.assert_close(attention.v_proj(x), ref.v_proj(x))

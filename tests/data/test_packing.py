"""Padding-free packing: the same loss and gradients as padded batches, and no attention across examples."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

from oloraplus.data.collate import CausalLMCollator, model_inputs
from oloraplus.data.packing import supports_packing
from oloraplus.data.tokenize import IGNORE_INDEX
from oloraplus.eval.fast_loss import response_only_loss
from tests.conftest import tiny_llama

VOCAB = 96
# Same loss and gradients up to float32 summation order: the packed row sums the same terms differently.
TOL = {"rtol": 1e-5, "atol": 1e-6}


def llama(attn: str = "sdpa") -> torch.nn.Module:
    model = tiny_llama(VOCAB, attn_implementation=attn, tie_word_embeddings=False)
    torch.manual_seed(1)  # random A and B, so both factors get gradients
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))


def gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                                            init_lora_weights=False, fan_in_fan_out=True))


MODELS = {"llama-sdpa": llama, "llama-eager": lambda: llama("eager"), "gpt2": gpt2}


def examples(seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for prompt_len, response_len in [(5, 3), (9, 7), (2, 12), (6, 1), (4, 4)]:
        ids = torch.randint(3, VOCAB, (prompt_len + response_len,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt_len + ids[prompt_len:]})
    return rows


def loss_and_grads(model, loss_fn):
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("pack_length", [64, 24])  # one row for all; several rows with padding tails
def test_packed_batch_has_the_padded_batchs_loss_and_gradients(name, pack_length):
    model = MODELS[name]().train()
    rows = examples()
    padded = CausalLMCollator(pad_token_id=0)(rows)
    packed = CausalLMCollator(pad_token_id=0, packing=True, pack_length=pack_length)(rows)
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # fewer positions computed
    ref, ref_grads = loss_and_grads(model, lambda: response_only_loss(model, padded))
    loss, grads = loss_and_grads(model, lambda: response_only_loss(model, packed))
    torch.testing.assert_close(loss, ref, **TOL)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], **TOL, msg=n)
    # the model's own loss (the Trainer's fallback path) on the packed batch, too
    own, own_grads = loss_and_grads(model, lambda: model(**model_inputs(packed)).loss)
    torch.testing.assert_close(own, ref, **TOL)
    for n in ref_grads:
        torch.testing.assert_close(own_grads[n], ref_grads[n], **TOL, msg=n)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_no_example_attends_across_a_boundary(name):
    """Change every token of one example: the logits of the others in the same row do not move."""
    model = MODELS[name]().eval()
    rows = examples()
    changed = [dict(r) for r in rows]
    changed[1] = {"input_ids": [(t * 7 + 1) % VOCAB for t in rows[1]["input_ids"]], "labels": rows[1]["labels"]}
    collate = CausalLMCollator(pad_token_id=0, packing=True, pack_length=64)
    a, b = collate(rows), collate(changed)
    assert a["input_ids"].shape[0] == 1  # all five examples share one row
    with torch.no_grad():
        la, lb = (model(**{k: v for k, v in model_inputs(x).items() if k != "labels"}).logits[0] for x in (a, b))
    # the row holds the examples longest first (first-fit decreasing): find example 1's span
    lengths = [len(r["input_ids"]) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: -lengths[i])
    start = sum(lengths[i] for i in order[:order.index(1)])
    span = slice(start, start + lengths[1])
    assert not torch.allclose(la[span], lb[span])  # the changed example itself did change
    others = torch.ones(la.shape[0], dtype=torch.bool)
    others[span] = False
    torch.testing.assert_close(la[others], lb[others], rtol=0, atol=1e-6)


class IgnoresPositionIds(torch.nn.Module):
    """A model with its own attention code: it drops position_ids, so packed rows attend across examples."""

    def __init__(self):
        super().__init__()
        self.inner = llama()

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, **kwargs):
        return self.inner(input_ids=input_ids)


def test_the_packing_probe_accepts_shared_masking_models_and_refuses_others():
    assert all(supports_packing(make()) for make in MODELS.values())
    assert not supports_packing(IgnoresPositionIds())
    model = llama().train()
    assert supports_packing(model) and model.training  # the probe restores the training mode
    # bf16 (the GPU default): packed and separate logits differ by rounding, far less than attending across
    assert supports_packing(llama().to(torch.bfloat16)) and supports_packing(llama("eager").to(torch.bfloat16))
    assert not supports_packing(IgnoresPositionIds().to(torch.bfloat16))


@pytest.mark.parametrize("packing", [False, True])
def test_host_positions_give_the_exact_masks_loss_and_gradients(packing):
    """The GPU path (rows × K positions from the collator, no sync) against the CPU path (exact boolean mask)."""
    model = llama().train()
    batch = CausalLMCollator(pad_token_id=0, packing=packing, pack_length=24)(examples(3))
    ref, ref_grads = loss_and_grads(model, lambda: response_only_loss(model, batch, exact=True))
    loss, grads = loss_and_grads(model, lambda: response_only_loss(model, batch, exact=False))
    torch.testing.assert_close(loss, ref, **TOL)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], **TOL, msg=n)

"""response_only_loss against the model's own loss (transformers' ForCausalLMLoss): value and gradients."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from oloraplus.data.collate import CausalLMCollator, next_token_targets
from oloraplus.data.tokenize import IGNORE_INDEX
from oloraplus.errors import ModelError
from oloraplus.eval.fast_loss import response_only_loss, supports_response_only_loss
from oloraplus.train.trainer import RatioTrainer
from tests.conftest import tiny_llama

VOCAB = 128


def tiny_gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    no_dropout = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # two forwards must match
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64, **no_dropout))


def with_lora(model: torch.nn.Module, targets: list[str]) -> torch.nn.Module:
    """Random A and B (init_lora_weights=False), so both factors get non-zero gradients."""
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False,
                        fan_in_fan_out="c_attn" in targets)
    return get_peft_model(model, config)


MODELS = {
    "llama": lambda: with_lora(tiny_llama(VOCAB), ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]),
    "gpt2": lambda: with_lora(tiny_gpt2(), ["c_attn", "c_proj", "c_fc"]),
}


def prompt_masked_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths; the last row's final token is a label (the shift must drop it)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for prompt_len, response_len in [(5, 3), (9, 7), (2, 12), (6, 1)]:
        ids = torch.randint(3, VOCAB, (prompt_len + response_len,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt_len + ids[prompt_len:]})
    return CausalLMCollator(pad_token_id=0)(rows)


def loss_and_grads(model, loss_fn) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("num_items", [None, 57, "tensor"])
def test_same_loss_and_gradients_as_the_model_loss(arch, num_items):
    model = MODELS[arch]()
    batch = prompt_masked_batch()
    if num_items == "tensor":  # the Trainer's count over several accumulated micro-batches
        num_items = torch.tensor(3 * int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()))
    extra = {} if num_items is None else {"num_items_in_batch": num_items}
    ref_loss, ref_grads = loss_and_grads(model, lambda: model(**batch, **extra).loss)
    loss, grads = loss_and_grads(model, lambda: response_only_loss(model, batch, num_items))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    assert ref_grads.keys() == grads.keys() and any("lora_A" in n for n in grads)
    for name in ref_grads:
        assert ref_grads[name].abs().max() > 0, name
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_mean_loss_is_the_token_weighted_nll_computed_by_hand():
    model = MODELS["llama"]()
    batch = prompt_masked_batch(seed=3)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        log_probs = torch.log_softmax(logits, -1)
        nll = [-log_probs[b, t, batch["labels"][b, t + 1]] for b in range(log_probs.shape[0])
               for t in range(log_probs.shape[1] - 1) if batch["labels"][b, t + 1] != IGNORE_INDEX]
        loss = response_only_loss(model, batch)
    torch.testing.assert_close(loss, torch.stack(nll).mean())


def test_the_output_head_sees_only_the_scored_positions():
    model = MODELS["llama"]()
    batch = prompt_masked_batch()
    rows_seen: list[int] = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, out: rows_seen.append(args[0].reshape(-1, 32).shape[0]))
    try:
        response_only_loss(model, batch)
        model(**batch)
    finally:
        handle.remove()
    n_scored = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert rows_seen == [n_scored, batch["input_ids"].numel()]
    assert n_scored < batch["input_ids"].numel() / 2


def test_shift_labels_are_used_as_given():
    model = MODELS["gpt2"]()
    batch = prompt_masked_batch()
    shift_labels = next_token_targets(batch["labels"])
    shift_labels[:, :4] = IGNORE_INDEX  # differs from the shift of `labels`: only the given targets may count
    inputs = dict(batch, shift_labels=shift_labels)
    with torch.no_grad():
        loss, ref = response_only_loss(model, inputs), model(**inputs).loss
        plain = model(**batch).loss
    torch.testing.assert_close(loss, ref)
    assert abs(float(ref - plain)) > 1e-3


def test_next_token_targets_shift_left_and_end_with_ignore():
    labels = torch.tensor([[-100, 5, 6, 7], [-100, -100, 9, -100]])
    expected = torch.tensor([[5, 6, 7, -100], [-100, 9, -100, -100]])
    assert torch.equal(next_token_targets(labels), expected)


def test_missing_labels_is_an_error():
    with pytest.raises(ValueError, match="labels"):
        response_only_loss(MODELS["llama"](), {"input_ids": torch.ones((1, 3), dtype=torch.long)})


class FullLogitsLM(torch.nn.Module):
    """A model that accepts `logits_to_keep` but ignores it (as some remote-code models do)."""

    def __init__(self):
        super().__init__()
        self.inner = tiny_llama(VOCAB)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, **kwargs):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


class NoLogitsToKeepLM(FullLogitsLM):
    """An older-style model whose forward has no `logits_to_keep` at all."""

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_a_model_that_cannot_mask_its_head_is_detected_and_refused():
    assert supports_response_only_loss(MODELS["llama"]()) and supports_response_only_loss(MODELS["gpt2"]())
    assert not supports_response_only_loss(FullLogitsLM())
    assert not supports_response_only_loss(NoLogitsToKeepLM())
    with pytest.raises(ModelError, match="standard loss"):
        response_only_loss(FullLogitsLM(), prompt_masked_batch())
    model = MODELS["llama"]().train()
    assert supports_response_only_loss(model) and model.training  # the probe restores the training mode


def test_ratio_trainer_trains_as_with_the_models_own_loss_under_gradient_accumulation(tmp_path):
    """RatioTrainer's compute_loss hook against Trainer's: same losses and adapter weights after 2 steps."""
    g = torch.Generator().manual_seed(5)
    rows = []
    for i in range(8):
        ids = torch.randint(3, VOCAB, (6 + 3 * i,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (2 + i) + ids[2 + i:]})
    trained = {}
    for fast in (False, True):
        model = MODELS["llama"]()
        args = TrainingArguments(output_dir=str(tmp_path / str(fast)), per_device_train_batch_size=2,
                                 gradient_accumulation_steps=2, max_steps=2, learning_rate=1e-2, report_to=[],
                                 use_cpu=True, save_strategy="no", logging_steps=1, seed=0,
                                 remove_unused_columns=False, disable_tqdm=True)
        trainer = RatioTrainer(model=model, args=args, train_dataset=rows, response_only=fast,
                               data_collator=CausalLMCollator(pad_token_id=0))
        assert trainer.response_only is fast
        trainer.train()
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        trained[fast] = ({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}, losses)
    (ref, ref_losses), (fast, fast_losses) = trained[False], trained[True]
    assert fast_losses == pytest.approx(ref_losses, rel=1e-5) and len(ref_losses) == 2
    for name in ref:
        torch.testing.assert_close(fast[name], ref[name], rtol=1e-5, atol=1e-5, msg=name)


def test_ratio_trainer_falls_back_to_the_standard_loss_for_a_model_that_cannot_mask_its_head(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no")
    model = FullLogitsLM()
    assert RatioTrainer(model=model, args=args).response_only is False

import pytest
import torch
from tokenizers import processors

from oloraplus.eval.generate import generate_batched, generate_one_by_one

PROMPTS = [
    "the cat sat on the mat",
    "who",
    "tell me about the big red dog in the park and the moon",
    "what is it",
    "a dog ran",
    "where is the small blue sun and where was the moon",
]


def greedy_without_cache(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> str:
    """Independent reference: full forward pass per step, argmax, stop at EOS, no generate(), no cache."""
    ids = list(prompt_ids)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            if next_id == tokenizer.eos_token_id:
                break
            ids.append(next_id)
            new.append(next_id)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.mark.parametrize("batch_size", [1, 2, 4, 16])
def test_batched_equals_one_by_one(model, tokenizer, batch_size):
    batched = generate_batched(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=batch_size)
    assert batched == generate_one_by_one(model, tokenizer, PROMPTS, max_new_tokens=8)


def test_batched_equals_greedy_loop_without_cache(model, tokenizer):
    expected = [greedy_without_cache(model, tokenizer, tokenizer(p)["input_ids"], 8) for p in PROMPTS]
    assert generate_batched(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=3) == expected
    assert len({len(text.split()) for text in expected}) > 1  # some stop at EOS, some run to the limit


def test_restores_tokenizer_and_model_state(model, tokenizer):
    tokenizer.padding_side = "right"
    tokenizer.pad_token = None
    model.train()
    out = generate_batched(model, tokenizer, PROMPTS, max_new_tokens=4, batch_size=3)
    assert tokenizer.padding_side == "right" and tokenizer.pad_token is None and model.training
    tokenizer.pad_token = "<pad>"
    assert out == generate_one_by_one(model, tokenizer, PROMPTS, max_new_tokens=4)


def test_stops_at_any_eos_of_the_generation_config(model, tokenizer):
    prompt = PROMPTS[2]
    ids = tokenizer(prompt)["input_ids"]
    free = tokenizer(greedy_without_cache(model, tokenizer, ids, 8))["input_ids"]
    # a second end token: the first generated token not seen before position k >= 1
    k = next((i for i in range(1, len(free)) if free[i] not in free[:i]), 0)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, free[k]]
    out = generate_batched(model, tokenizer, [prompt, PROMPTS[0]], max_new_tokens=8)
    assert out[0] == tokenizer.decode(free[:k]).strip()
    assert out == generate_one_by_one(model, tokenizer, [prompt, PROMPTS[0]], max_new_tokens=8)


def test_special_tokens_added_only_without_chat_template(model, tokenizer):
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tokenizer.bos_token_id)]
    )
    prompt = PROMPTS[3]
    plain = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with_bos = greedy_without_cache(model, tokenizer, [tokenizer.bos_token_id] + plain, 8)
    without_bos = greedy_without_cache(model, tokenizer, plain, 8)
    assert with_bos != without_bos  # otherwise this test could not tell the two apart
    assert generate_batched(model, tokenizer, [prompt, PROMPTS[0]], max_new_tokens=8)[0] == with_bos
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert generate_batched(model, tokenizer, [prompt, PROMPTS[0]], max_new_tokens=8)[0] == without_bos
    assert generate_one_by_one(model, tokenizer, [prompt], max_new_tokens=8) == [without_bos]


def test_empty_prompt_list_and_bad_arguments(model, tokenizer):
    assert generate_batched(model, tokenizer, [], max_new_tokens=4) == []
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_batched(model, tokenizer, PROMPTS, max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size"):
        generate_batched(model, tokenizer, PROMPTS, batch_size=0)

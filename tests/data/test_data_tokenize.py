"""encode_examples: prompt masked, replies kept; checked with the raw tokenizer on hand-written text."""

from __future__ import annotations

import pytest

from oloraplus.data.example import Example
from oloraplus.data.tokenize import IGNORE_INDEX, encode_examples
from oloraplus.errors import DataError

HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
SINGLE = Example((("user", "Say hi."), ("assistant", "Return the sum.")))
MULTI = Example((("user", "2+3?"), ("assistant", "call add"), ("tool", "5"), ("assistant", "It is 5.")))
BOS = 1  # "<s>", see data_helpers.SPECIALS


def reference(core, prompt_text: str, response_text: str, bos: bool) -> tuple[list[int], list[int]]:
    prompt = ([BOS] if bos else []) + core.encode(prompt_text).ids
    response = core.encode(response_text).ids
    return prompt, response


def test_without_template_prompt_masked_with_bos(plain_tok):
    ds, stats = encode_examples([SINGLE], plain_tok.hf, max_length=512)
    prompt, response = reference(plain_tok.core, HEADER + "### Instruction:\nSay hi.\n\n### Response:\n",
                                 "Return the sum.</s>", bos=True)
    row = ds[0]
    assert row["input_ids"] == prompt + response
    assert row["labels"] == [IGNORE_INDEX] * len(prompt) + response
    assert row["length"] == len(prompt) + len(response)
    assert plain_tok.hf.decode(response) == "Return the sum.</s>"
    assert (stats.total, stats.truncated, stats.dropped) == (1, 0, 0)


def test_with_template_no_extra_bos_and_tool_results_masked(chat_tok):
    ds, _ = encode_examples([MULTI], chat_tok.hf, max_length=512)
    prompt_text = "<|im_start|>user\n2+3?<|im_end|>\n<|im_start|>assistant\n"
    between = "\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n"
    prompt, first = reference(chat_tok.core, prompt_text, "call add<|im_end|>", bos=False)
    middle, last = reference(chat_tok.core, between, "It is 5.<|im_end|>", bos=False)
    assert ds[0]["input_ids"] == prompt + first + middle + last
    # both assistant turns are targets (see test_data_turns.py); the tool result is context
    assert ds[0]["labels"] == [IGNORE_INDEX] * len(prompt) + first + [IGNORE_INDEX] * len(middle) + last


def test_truncation_and_drop_counts(plain_tok):
    prompt, response = reference(plain_tok.core, HEADER + "### Instruction:\nSay hi.\n\n### Response:\n",
                                 "Return the sum.</s>", bos=True)
    long_example = Example((("user", "Say hi. " * 30), ("assistant", "x")))
    max_length = len(prompt) + 2
    ds, stats = encode_examples([SINGLE, long_example, SINGLE], plain_tok.hf, max_length=max_length)
    assert (stats.total, stats.truncated, stats.dropped) == (3, 2, 1)
    assert len(ds) == 2
    for row in ds:
        assert row["input_ids"] == (prompt + response)[:max_length]
        assert row["labels"] == [IGNORE_INDEX] * len(prompt) + response[:2]
        assert row["length"] == max_length


def test_prompt_exactly_filling_max_length_is_dropped(plain_tok):
    prompt, _ = reference(plain_tok.core, HEADER + "### Instruction:\nSay hi.\n\n### Response:\n", "", bos=True)
    with pytest.raises(DataError) as info:
        encode_examples([SINGLE, SINGLE], plain_tok.hf, max_length=len(prompt))
    message = str(info.value)
    assert message.startswith(f"--max-length {len(prompt)}: every one of the 2 examples was dropped")
    assert f"prompt lengths {len(prompt)}..{len(prompt)} tokens" in message and "\n" not in message


def test_columns_and_empty_input(plain_tok):
    ds, stats = encode_examples([], plain_tok.hf, max_length=64)
    assert len(ds) == 0 and ds.column_names == ["input_ids", "labels", "length"]
    assert (stats.total, stats.truncated, stats.dropped) == (0, 0, 0)
    ds, _ = encode_examples([SINGLE], plain_tok.hf, max_length=64)
    assert {name: str(f) for name, f in ds.features.items()} == {
        "input_ids": "List(Value('int32'))", "labels": "List(Value('int32'))", "length": "Value('int32')"}

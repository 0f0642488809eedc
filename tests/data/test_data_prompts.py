"""render_prompt / render_response: chat template when present, else the Alpaca template, text checked literally."""

from __future__ import annotations

import pytest
from data_helpers import STRICT, make_tokenizer

from oloraplus.data.example import Example
from oloraplus.data.prompts import render_prompt, render_response
from oloraplus.errors import DataError

HEADER = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
SINGLE = Example((("user", "Say hi."), ("assistant", "hi")))
WITH_INPUT = Example((("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5")), input="2 and 3")
MULTI = Example((("system", "Be brief."), ("user", "2+3?"), ("assistant", "call add"), ("tool", "5"),
                 ("assistant", "It is 5.")))


def test_alpaca_without_input(plain_tok):
    assert render_prompt(plain_tok.hf, SINGLE) == HEADER + "### Instruction:\nSay hi.\n\n### Response:\n"


def test_alpaca_with_input(plain_tok):
    assert render_prompt(plain_tok.hf, WITH_INPUT) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n")


def test_alpaca_instruction_with_blank_line_is_not_split(plain_tok):
    example = Example((("user", "First paragraph.\n\nSecond paragraph."), ("assistant", "ok")))
    assert render_prompt(plain_tok.hf, example) == (
        HEADER + "### Instruction:\nFirst paragraph.\n\nSecond paragraph.\n\n### Response:\n")


def test_multi_turn_without_template(plain_tok):
    assert render_prompt(plain_tok.hf, MULTI) == (
        HEADER + "### System:\nBe brief.\n\n### User:\n2+3?\n\n### Assistant:\ncall add</s>\n\n"
        "### Tool:\n5\n\n### Assistant:\n")


def test_chat_template(chat_tok):
    assert render_prompt(chat_tok.hf, WITH_INPUT) == (
        "<|im_start|>user\nAdd the numbers.\n\n2 and 3<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt(chat_tok.hf, MULTI) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+3?<|im_end|>\n"
        "<|im_start|>assistant\ncall add<|im_end|>\n<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n")


def test_template_that_rejects_a_role_is_a_data_error():
    tok = make_tokenizer(STRICT).hf
    assert render_prompt(tok, SINGLE) == "[user] Say hi.\n[assistant] "
    with pytest.raises(DataError, match=r"rejects a conversation with roles system/user/.*: Conversation roles"):
        render_prompt(tok, MULTI)


def test_response_ends_with_eos(plain_tok, chat_tok):
    assert render_response(plain_tok.hf, SINGLE) == "hi</s>"
    assert render_response(chat_tok.hf, MULTI) == "It is 5.<|im_end|>"

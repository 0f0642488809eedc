"""A reply cut by --max-new-tokens inside a multi-byte character ends without a broken character (U+FFFD), both in
the returned text and in what `generate --prompt` streams; a U+FFFD the model wrote whole is kept.

Byte-level tokenizers spell a Chinese character as 2-3 byte tokens: the test tokenizer (trained on English, so every
CJK byte is its own token) and SmolLM2's (whose merges split characters differently).
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout

import pytest
import torch

from oloraplus.eval.chat import complete_text_streamer
from oloraplus.eval.generate import decode_new, trim_cut_character
from tests.conftest import build_tokenizer, requires_smollm2

REPLY = "你好，世界。我们 🙂 ok"


def _expected(text: str, ids: list[int], tokenizer) -> str:
    """Independent of the bytes: REPLY holds no U+FFFD, so a prefix's decode may only end in the cut's own."""
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert "\ufffd" not in decoded.rstrip("\ufffd")
    return decoded.rstrip("\ufffd").strip()


def _streamed(tokenizer, ids: list[int]) -> str:
    """What `generate --prompt` prints: a prompt put first (skipped), then one token at a time."""
    streamer = complete_text_streamer(tokenizer)
    out = io.StringIO()
    with redirect_stdout(out):
        streamer.put(torch.tensor([tokenizer("hi", add_special_tokens=False)["input_ids"]]))
        for token in ids:
            streamer.put(torch.tensor([token]))
        streamer.end()
    return out.getvalue()


def _check_every_cut(tokenizer) -> int:
    ids = tokenizer(REPLY, add_special_tokens=False)["input_ids"]
    cut_inside = 0
    for n in range(1, len(ids) + 1):
        text = decode_new(tokenizer, torch.tensor(ids[:n]), eos_ids=[])
        assert not text.endswith("\ufffd") and REPLY.startswith(text), (n, text)
        assert text == _expected(REPLY, ids[:n], tokenizer)
        assert _streamed(tokenizer, ids[:n]).strip() == text
        cut_inside += tokenizer.decode(ids[:n]).endswith("\ufffd")
    return cut_inside


def test_every_cut_of_a_chinese_reply_ends_in_a_whole_character():
    tokenizer = build_tokenizer()
    assert _check_every_cut(tokenizer) >= 10  # most cuts fall inside a character: the test exercises the trim


@requires_smollm2
@pytest.mark.smollm2
def test_every_cut_with_smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    assert _check_every_cut(AutoTokenizer.from_pretrained(smollm2_dir)) >= 5


def test_a_replacement_character_the_model_wrote_is_kept():
    tokenizer = build_tokenizer()
    whole = tokenizer("ok \ufffd", add_special_tokens=False)["input_ids"]
    assert decode_new(tokenizer, torch.tensor(whole), eos_ids=[]) == "ok \ufffd"
    cut = tokenizer("\ufffd你", add_special_tokens=False)["input_ids"][:-1]  # the real one, then a cut 你
    assert tokenizer.decode(cut) == "\ufffd\ufffd"
    assert decode_new(tokenizer, torch.tensor(cut), eos_ids=[]) == "\ufffd"
    assert _streamed(tokenizer, cut) == "\ufffd\n"


def test_byte_fallback_tokens_count_as_bytes():
    """SentencePiece's <0xNN> tokens (Llama 2, Mistral): a cut after <0xE4> is pending, one after a whole
    character is not."""

    class ByteFallback:
        all_special_ids: list[int] = []
        pieces = {0: "▁hi", 1: "<0xE4>", 2: "<0xBD>", 3: "<0xA0>"}

        def convert_ids_to_tokens(self, ids):
            return [self.pieces[i] for i in ids]

    tokenizer = ByteFallback()
    assert trim_cut_character(tokenizer, [0, 1, 2], "hi\ufffd") == "hi"
    assert trim_cut_character(tokenizer, [0, 1, 2, 3, 1, 2, 3], "hi你\ufffd") == "hi你\ufffd"  # complete: kept

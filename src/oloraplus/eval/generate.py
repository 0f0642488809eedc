"""Greedy generation of responses for already templated prompts.

`generate_batched` is the fast path used by evaluation: left-padded batches (a decoder-only model
continues from the last position, so every prompt must end there), prompts sorted by length so
that a batch carries little padding, KV cache on. `generate_one_by_one` runs the same decoding
one prompt at a time with no padding at all; it is the reference the batched path must match.
`generation_eval` scores the generations against the references (BLEU/ROUGE) for `train --eval-generate`
and `oloraplus eval --generate`.

A byte-level tokenizer spells a Chinese character or an emoji as 2-4 byte tokens; a reply cut by the token limit
between them decodes to a trailing U+FFFD. `trim_cut_character` drops it (and only it: a U+FFFD the model wrote
whole stays), by decoding the last tokens' bytes as UTF-8 and asking whether a character is still pending.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from oloraplus.console import track
from oloraplus.data.prompts import render_prompt
from oloraplus.io import atomic_write_text


def needs_special_tokens(tokenizer) -> bool:
    """A chat template already wrote BOS and friends into the prompt string; do not add them twice."""
    return not getattr(tokenizer, "chat_template", None)


def eos_token_ids(model, tokenizer) -> list[int]:
    """Stop on any end token the model or the tokenizer knows (chat models often have several)."""
    ids: list[int] = []
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if value is None:
            continue
        for token_id in value if isinstance(value, (list, tuple)) else [value]:
            if int(token_id) not in ids:
                ids.append(int(token_id))
    return ids


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _left_padding(tokenizer) -> Iterator[None]:
    """Left padding (and a pad token, EOS if none) only for the duration of generation."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    if pad is None and tokenizer.eos_token is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token, so prompts cannot be batched")
    tokenizer.padding_side = "left"
    if pad is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte tokens (Llama 2, Mistral, Gemma)
_MAX_PENDING_BYTES = 3  # a UTF-8 character is at most 4 bytes, so at most 3 can wait for the rest


@functools.lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character -> byte (SmolLM2, Llama 3, Qwen spell tokens in it)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def _is_byte_level(tokenizer) -> bool:
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    return type(decoder).__name__ == "ByteLevel" or hasattr(tokenizer, "byte_decoder")  # fast, or slow GPT-2


def token_bytes(tokenizer, token: str) -> bytes:
    """The bytes a token stands for: a byte-fallback token, a byte-level BPE token, else its text's UTF-8."""
    match = _BYTE_FALLBACK.fullmatch(token)
    if match:
        return bytes([int(match[1], 16)])
    alphabet = _byte_level_alphabet() if _is_byte_level(tokenizer) else {}
    if alphabet and all(char in alphabet for char in token):
        return bytes(alphabet[char] for char in token)
    return token.encode("utf-8")


def trim_cut_character(tokenizer, ids: Sequence[int], text: str) -> str:
    """`text` (decoded from `ids`) without the U+FFFD of a multi-byte character whose last bytes were never
    generated. A U+FFFD is dropped only when the bytes of the last tokens end in an incomplete UTF-8 sequence."""
    if not text.endswith("\ufffd"):
        return text
    special = set(tokenizer.all_special_ids)
    tail = [i for i in ids if i not in special][-(_MAX_PENDING_BYTES + 1):]  # every token holds >= 1 byte
    data = b"".join(token_bytes(tokenizer, token) for token in tokenizer.convert_ids_to_tokens(tail))
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    decoder.decode(data, final=False)
    pending, _ = decoder.getstate()
    return text[:-1] if pending else text


def decode_new(tokenizer, new_ids: torch.Tensor, eos_ids: list[int]) -> str:
    """Cut at the first end token (pad may not be special), then decode without special tokens and without a
    character the token limit cut in half."""
    tokens = new_ids.tolist()
    for i, token_id in enumerate(tokens):
        if token_id in eos_ids:
            tokens = tokens[:i]
            break
    return trim_cut_character(tokenizer, tokens, tokenizer.decode(tokens, skip_special_tokens=True)).strip()


def _greedy(model, tokenizer, encoded: dict, max_new_tokens: int, eos_ids: list[int]) -> torch.Tensor:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_ids or [0])[0]
    return model.generate(
        **encoded,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids or None,
        pad_token_id=pad_id,
    )


def _check_args(prompts: list[str], max_new_tokens: int, batch_size: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if any(not isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be strings (already rendered with the chat template)")


def generate_batched(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 128, batch_size: int = 16
) -> list[str]:
    """Greedy responses for `prompts`, in their order, decoded without the prompt and stripped."""
    _check_args(prompts, max_new_tokens, batch_size)
    add_special = needs_special_tokens(tokenizer)
    eos_ids = eos_token_ids(model, tokenizer)
    device = _model_device(model)
    lengths = [len(tokenizer(p, add_special_tokens=add_special)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # longest first: OOM shows early
    outputs: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with _left_padding(tokenizer), torch.inference_mode():
            starts = range(0, len(order), batch_size)
            for start in track(starts, len(starts), f"generating {len(prompts)} responses"):
                batch = order[start : start + batch_size]
                encoded = tokenizer(
                    [prompts[i] for i in batch],
                    return_tensors="pt",
                    padding=True,
                    add_special_tokens=add_special,
                ).to(device)
                generated = _greedy(model, tokenizer, encoded, max_new_tokens, eos_ids)
                prompt_len = encoded["input_ids"].shape[1]  # left padding: every prompt ends here
                for row, i in enumerate(batch):
                    outputs[i] = decode_new(tokenizer, generated[row, prompt_len:], eos_ids)
    finally:
        model.train(was_training)
    return outputs


def generate_one_by_one(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 128, batch_size: int = 1
) -> list[str]:
    """The slow reference: one unpadded prompt per `generate` call. `batch_size` is ignored."""
    _check_args(prompts, max_new_tokens, max(batch_size, 1))
    add_special = needs_special_tokens(tokenizer)
    eos_ids = eos_token_ids(model, tokenizer)
    device = _model_device(model)
    outputs = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for prompt in prompts:
                encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=add_special).to(device)
                generated = _greedy(model, tokenizer, encoded, max_new_tokens, eos_ids)
                outputs.append(decode_new(tokenizer, generated[0, encoded["input_ids"].shape[1] :], eos_ids))
    finally:
        model.train(was_training)
    return outputs


def generation_eval(model, tokenizer, examples: Sequence, n: int, max_new_tokens: int, batch_size: int,
                    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Greedy-generate for the first n eval examples; corpus BLEU, ROUGE-1/2/L and per-example rows."""
    from oloraplus.eval.textmetrics import generation_metrics, per_example_scores  # sacrebleu: only when asked

    chosen = list(examples)[:n]
    prompts = [render_prompt(tokenizer, ex) for ex in chosen]
    references = [ex.response for ex in chosen]
    generations = generate_batched(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    metrics = generation_metrics(generations, references)
    scores = per_example_scores(generations, references)
    rows = [{"index": i, "prompt": p, "reference": r, "generation": g, **s}
            for i, (p, r, g, s) in enumerate(zip(prompts, references, generations, scores))]
    return {**metrics, "generated_examples": len(chosen)}, rows


def write_generations(path: str | Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))

"""Tokenise examples with the loss on response tokens only (prompt tokens are labelled -100)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import datasets

from oloraplus.data.formats import Example
from oloraplus.data.prompts import has_chat_template, render_prompt, render_response
from oloraplus.errors import DataError

IGNORE_INDEX = -100


@dataclass
class EncodeStats:
    total: int
    truncated: int  # cut at max_length, some response tokens kept
    dropped: int  # no response token left after truncation


def encode_one(tokenizer, example: Example, max_length: int) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated). Prompt and response are tokenised apart so the mask is exact."""
    prompt_ids = tokenizer(render_prompt(tokenizer, example), add_special_tokens=not has_chat_template(tokenizer))[
        "input_ids"
    ]
    response_ids = tokenizer(render_response(tokenizer, example), add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + response_ids)[:max_length]
    return input_ids, labels, len(prompt_ids) + len(response_ids) > max_length


def encode_examples(
    examples: Sequence[Example], tokenizer, max_length: int
) -> tuple[datasets.Dataset, EncodeStats]:
    rows: dict[str, list] = {"input_ids": [], "labels": [], "length": []}
    truncated = dropped = 0
    prompt_lengths = []
    for example in examples:
        input_ids, labels, was_truncated = encode_one(tokenizer, example, max_length)
        if all(label == IGNORE_INDEX for label in labels):
            dropped += 1
            prompt_lengths.append(sum(1 for label in labels if label == IGNORE_INDEX))
            continue
        truncated += was_truncated
        rows["input_ids"].append(input_ids)
        rows["labels"].append(labels)
        rows["length"].append(len(input_ids))
    if examples and not rows["input_ids"]:
        raise DataError(
            f"--max-length {max_length}: every one of the {len(examples)} examples is longer than that "
            "(no response token survives truncation); raise --max-length"
        )
    return datasets.Dataset.from_dict(rows), EncodeStats(total=len(examples), truncated=truncated, dropped=dropped)

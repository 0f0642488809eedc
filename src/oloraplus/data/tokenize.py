"""Tokenise examples with the loss on response tokens only (prompt tokens are labelled -100)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import datasets

from oloraplus.data.example import Example
from oloraplus.data.prompts import has_chat_template, render_prompt, render_response
from oloraplus.errors import DataError

IGNORE_INDEX = -100  # the label torch's cross-entropy (and so every HF causal LM) skips
FEATURES = datasets.Features({
    "input_ids": datasets.List(datasets.Value("int32")),
    "labels": datasets.List(datasets.Value("int32")),
    "length": datasets.Value("int32"),  # for the Trainer's group_by_length sampler
})


@dataclass
class EncodeStats:
    total: int
    truncated: int  # cut at max_length, some response tokens kept
    dropped: int  # the prompt alone filled max_length: no response token left, so not used


def encode_examples(
    examples: Sequence[Example], tokenizer, max_length: int
) -> tuple[datasets.Dataset, EncodeStats]:
    """Prompt and response are tokenised apart and concatenated, so the mask is exact at the seam.

    The prompt gets the tokenizer's special tokens (BOS) only without a chat template: a template
    already writes them into its text.
    """
    prompts = [render_prompt(tokenizer, ex) for ex in examples]
    responses = [render_response(tokenizer, ex) for ex in examples]
    prompt_ids = tokenizer(prompts, add_special_tokens=not has_chat_template(tokenizer))["input_ids"] if prompts else []
    response_ids = tokenizer(responses, add_special_tokens=False)["input_ids"] if responses else []
    rows: dict[str, list] = {"input_ids": [], "labels": [], "length": []}
    truncated = dropped = 0
    for prompt, response in zip(prompt_ids, response_ids):
        if len(prompt) >= max_length or not response:
            dropped += 1
            continue
        input_ids = (prompt + response)[:max_length]
        truncated += len(prompt) + len(response) > max_length
        rows["input_ids"].append(input_ids)
        rows["labels"].append(([IGNORE_INDEX] * len(prompt) + response)[:max_length])
        rows["length"].append(len(input_ids))
    if examples and not rows["input_ids"]:
        lengths = [len(p) for p in prompt_ids]
        raise DataError(f"--max-length {max_length}: every one of the {len(examples)} examples was dropped, "
                        f"its prompt alone fills it (prompt lengths {min(lengths)}..{max(lengths)} tokens); "
                        "raise --max-length")
    dataset = datasets.Dataset.from_dict(rows, features=FEATURES)
    return dataset, EncodeStats(total=len(examples), truncated=truncated, dropped=dropped)

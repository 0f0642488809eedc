"""Tokenise examples with the loss on the assistant turns only (every other token is labelled -100).

Each (text, trained) segment of `data.turns` is tokenised apart and the ids concatenated, so the mask is
exact at every seam. Examples longer than `max_length` are cut from the right: the trained tokens that
remain keep their loss (a turn cut in the middle keeps its first part); a record with no trained token
left is dropped; kept records that lost a whole trained turn are counted (`turns_lost`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import datasets

from oloraplus.data.example import Example
from oloraplus.data.prompts import has_chat_template
from oloraplus.data.turns import segments
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
    truncated: int  # cut at max_length, some trained tokens kept
    dropped: int  # no trained token within max_length (the prompt alone filled it), so not used
    turns_lost: int = 0  # kept, but at least one whole trained turn lay beyond max_length
    last_turn_only: int = 0  # the chat template does not render turn by turn: only the last reply trained


def encode_examples(
    examples: Sequence[Example], tokenizer, max_length: int, train_turns: str = "all"
) -> tuple[datasets.Dataset, EncodeStats]:
    """Rows of input_ids, labels (-100 outside trained turns) and length, at most `max_length` tokens each.

    The first segment gets the tokenizer's special tokens (BOS) only without a chat template: a template
    already writes them into its text.
    """
    parts = [segments(tokenizer, ex, train_turns) for ex in examples]
    firsts = [p.parts[0][0] for p in parts]
    rest = [text for p in parts for text, _ in p.parts[1:]]
    first_ids = tokenizer(firsts, add_special_tokens=not has_chat_template(tokenizer))["input_ids"] if firsts else []
    rest_ids = iter(tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else [])
    rows: dict[str, list] = {"input_ids": [], "labels": [], "length": []}
    stats = EncodeStats(total=len(examples), truncated=0, dropped=0)
    prompt_lengths = []
    for seg, first in zip(parts, first_ids):
        ids: list[int] = []
        labels: list[int] = []
        starts = []  # where each trained, non-empty segment starts
        for k, (_, trained) in enumerate(seg.parts):
            tokens = first if k == 0 else next(rest_ids)
            if trained and tokens:
                starts.append(len(ids))
            ids += tokens
            labels += tokens if trained else [IGNORE_INDEX] * len(tokens)
        stats.last_turn_only += not seg.turn_by_turn
        prompt_lengths.append(starts[0] if starts else len(ids))
        if not starts or starts[0] >= max_length:
            stats.dropped += 1
            continue
        stats.truncated += len(ids) > max_length
        stats.turns_lost += starts[-1] >= max_length
        rows["input_ids"].append(ids[:max_length])
        rows["labels"].append(labels[:max_length])
        rows["length"].append(min(len(ids), max_length))
    if examples and not rows["input_ids"]:
        raise DataError(f"--max-length {max_length}: every one of the {len(examples)} examples was dropped, "
                        f"its prompt alone fills it (prompt lengths {min(prompt_lengths)}..{max(prompt_lengths)} "
                        "tokens); raise --max-length")
    return datasets.Dataset.from_dict(rows, features=FEATURES), stats

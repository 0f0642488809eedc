"""Dynamic padding: each batch is padded to its own longest row, not to --max-length.

Padding every row to a fixed 512 spends about two thirds of the compute on pad tokens with
Alpaca-like data (mean 171 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from oloraplus.data.tokenize import IGNORE_INDEX
from oloraplus.errors import ModelError


@dataclass
class CausalLMCollator:
    """Right-pads `input_ids` with pad_token_id and `labels` with -100; attention_mask marks real tokens.

    The mask comes from row lengths, not from comparing ids with pad_token_id: when pad is eos,
    the eos that ends each response is a real, trained token.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None  # e.g. 8 for tensor cores on GPU

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(row["input_ids"]) for row in rows)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            labels[i, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def ensure_pad_token(tokenizer) -> None:
    """Batching needs a pad id; causal LMs often ship without one, and eos is the usual stand-in."""
    if tokenizer.pad_token_id is not None:
        return
    if tokenizer.eos_token is None:
        raise ModelError("the tokenizer has neither a pad nor an eos token, so batches cannot be padded")
    tokenizer.pad_token = tokenizer.eos_token

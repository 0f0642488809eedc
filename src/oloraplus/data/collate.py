"""Dynamic padding: each batch is padded to its own longest row, not to --max-length.

Padding to a fixed 512 wastes about two thirds of the compute on Alpaca-like data (mean 171 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from oloraplus.data.tokenize import IGNORE_INDEX


@dataclass
class CausalLMCollator:
    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = (longest + m - 1) // m * m
        input_ids = torch.full((len(rows), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = torch.as_tensor(row["input_ids"])
            labels[i, :n] = torch.as_tensor(row["labels"])
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def ensure_pad_token(tokenizer) -> None:
    """Batching needs a pad id; causal LMs often ship without one, and eos is the usual stand-in."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

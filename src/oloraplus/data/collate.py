"""Batches without wasted positions: dynamic padding, or padding-free packing.

Padding every row to a fixed 512 spends about two thirds of the compute on pad tokens with
Alpaca-like data (mean 171 tokens). `CausalLMCollator` pads each batch only to its own longest
row; with `packing=True` it goes further and concatenates the batch's examples into rows of at most
`pack_length` tokens (as few rows as fit, evenly filled), with `position_ids` restarting at 0 for
every example, no attention mask and no KV cache.
transformers reads restarting position ids as packed sequences and builds a block-diagonal causal
mask (`masking_utils.find_packed_sequence_indices`), so no example attends to another and each
sees the positions it would see alone: the same loss and gradients as the padded batch (tested).

Every batch also carries, computed here on the CPU, what the training step would otherwise ask
the GPU for (each a host sync there):
- `scored`: for every row, the positions whose next token is trained and those tokens
  (`eval.fast_loss`), padded to one width with target -100;
- `real_tokens`: the number of non-padding tokens, for throughput.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from oloraplus.data.tokenize import IGNORE_INDEX

SCORED = "scored"  # batch key: {"index": (rows, K) long, "targets": (rows, K) long, "count": int}
REAL_TOKENS = "real_tokens"  # batch key: int
EXTRA_KEYS = (SCORED, REAL_TOKENS)  # what a model call must not receive


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """(rows, seq) target of each position: labels shifted left by one, -100 at the last position.

    Position t predicts token t+1, exactly as transformers' ForCausalLMLoss pads and shifts its labels.
    """
    return torch.nn.functional.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)


def scored_positions(targets: torch.Tensor) -> dict[str, Any]:
    """Positions t with a trained target (`next_token_targets`), per row, padded to the widest row.

    Rows with fewer positions are padded with position 0 and target -100, which the loss ignores;
    the width is known on the host, so the GPU never has to report how many positions there are.
    """
    keep = targets != IGNORE_INDEX
    counts = keep.sum(dim=1)
    width = max(int(counts.max()) if counts.numel() else 0, 1)
    index = torch.zeros((targets.shape[0], width), dtype=torch.long)
    kept = torch.full((targets.shape[0], width), IGNORE_INDEX, dtype=torch.long)
    for row in range(targets.shape[0]):
        positions = keep[row].nonzero().flatten()
        index[row, : positions.numel()] = positions
        kept[row, : positions.numel()] = targets[row, positions]
    return {"index": index, "targets": kept, "count": int(counts.sum())}


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Example indices per row: as few rows as fit `capacity` tokens each, filled evenly.

    Rows are padded to the longest, so what matters is that they come out equally long: with R rows
    (from ceil(total / capacity) up, until every row fits) each example, longest first, goes to the
    least filled row (LPT scheduling). Four Alpaca examples of 552 tokens make two rows of ~276, not
    one of 498 and one of 54. An example longer than `capacity` gets a row of its own.
    """
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda j: (-lengths[j], j))
    n_rows = max(1, math.ceil(sum(lengths) / capacity))
    while True:
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        heap = [(0, r) for r in range(n_rows)]  # (tokens in the row, row index)
        for i in order:
            load, r = heapq.heappop(heap)
            rows[r].append(i)
            heapq.heappush(heap, (load + lengths[i], r))
        longest = max(load for load, r in heap if len(rows[r]) > 1) if any(len(r) > 1 for r in rows) else 0
        if longest <= capacity or n_rows >= len(lengths):
            return [row for row in rows if row]
        n_rows += 1


def _examples(items: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of every example; an item made by `data.budget` holds several, split by `lengths`."""
    out = []
    for item in items:
        ids, labels = list(item["input_ids"]), list(item["labels"])
        bounds = item.get("lengths") or [len(ids)]
        start = 0
        for n in bounds:
            out.append((ids[start:start + n], labels[start:start + n]))
            start += n
    return out


@dataclass
class CausalLMCollator:
    """Right-pads `input_ids` with pad_token_id and `labels` with -100; attention_mask marks real tokens.

    The mask comes from row lengths, not from comparing ids with pad_token_id: when pad is eos,
    the eos that ends each response is a real, trained token. With `packing`, see the module doc.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None  # e.g. 8 for tensor cores on GPU
    packing: bool = False
    pack_length: int | None = None  # tokens per packed row (default: the longest example of the batch)

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        examples = _examples(items)
        batch = self._packed(examples) if self.packing else self._padded(examples)
        batch[SCORED] = scored_positions(next_token_targets(batch["labels"]))
        batch[REAL_TOKENS] = sum(len(ids) for ids, _ in examples)
        return batch

    def _width(self, longest: int) -> int:
        m = self.pad_to_multiple_of
        return (longest + m - 1) // m * m if m else longest

    def _padded(self, examples: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        longest = self._width(max(len(ids) for ids, _ in examples))
        input_ids = torch.full((len(examples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for i, (ids, lab) in enumerate(examples):
            n = len(ids)
            input_ids[i, :n] = torch.as_tensor(ids, dtype=torch.long)
            labels[i, :n] = torch.as_tensor(lab, dtype=torch.long)
            attention_mask[i, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _packed(self, examples: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        lengths = [len(ids) for ids, _ in examples]
        rows = pack_rows(lengths, self.pack_length or max(lengths))
        width = self._width(max(sum(lengths[i] for i in row) for row in rows))
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                ids, lab = examples[i]
                n = len(ids)
                input_ids[r, start:start + n] = torch.as_tensor(ids, dtype=torch.long)
                labels[r, start:start + n] = torch.as_tensor(lab, dtype=torch.long)
                labels[r, start] = IGNORE_INDEX  # nothing before an example predicts its first token
                position_ids[r, start:start + n] = torch.arange(n)
                start += n
            # the row's padding tail is a sequence of its own (positions restart), attended by nothing else
            position_ids[r, start:] = torch.arange(width - start)
        # use_cache=False: transformers reads position ids as packed only without a KV cache, which a
        # causal LM otherwise creates even in training (and which training never reads).
        return {"input_ids": input_ids, "position_ids": position_ids, "labels": labels, "use_cache": False}


def model_inputs(batch: dict[str, Any], device: torch.device | str | None = None) -> dict[str, Any]:
    """The batch without oloraplus's host-side extras, as a model's forward accepts it; its tensors on `device`."""
    return {k: v.to(device) if device is not None and torch.is_tensor(v) else v
            for k, v in batch.items() if k not in EXTRA_KEYS}

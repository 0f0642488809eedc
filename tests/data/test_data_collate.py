"""CausalLMCollator: pads to the batch's longest row, masks padding, and leaves the loss unchanged."""

from __future__ import annotations

import pytest
import torch
from data_helpers import make_tokenizer

from oloraplus.data.collate import (REAL_TOKENS, SCORED, CausalLMCollator, model_inputs, next_token_targets,
                                    pack_rows, scored_positions)
from oloraplus.data.example import Example
from oloraplus.data.tokenize import IGNORE_INDEX, encode_examples
from oloraplus.errors import ModelError
from oloraplus.models import ensure_pad_token
from tests.conftest import tiny_llama

ROWS = [
    {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "length": 3},
    {"input_ids": [5, 6, 7, 8, 9], "labels": [-100, -100, 7, 8, 9], "length": 5},
    {"input_ids": [5, 6], "labels": [-100, 6], "length": 2},
]


def test_pads_to_longest_row_not_max_length():
    batch = CausalLMCollator(pad_token_id=0)(ROWS)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [5, 6, 7, 8, 9], [5, 6, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, -100], [-100, -100, 7, 8, 9], [-100, 6, -100, -100, -100]]
    assert all(batch[k].dtype == torch.long for k in ("input_ids", "attention_mask", "labels"))
    assert batch[REAL_TOKENS] == 10


def test_pad_to_multiple_of():
    batch = CausalLMCollator(pad_token_id=0, pad_to_multiple_of=4)(ROWS)
    assert batch["input_ids"].shape == (3, 8) and batch["attention_mask"][1].tolist() == [1] * 5 + [0] * 3


def test_pad_equal_to_eos_keeps_the_trained_eos():
    """With pad == eos the mask must come from lengths: the response's own eos stays a real token."""
    batch = CausalLMCollator(pad_token_id=9)(ROWS[1:])  # row 0 ends with id 9
    assert batch["attention_mask"][0].tolist() == [1] * 5 and batch["labels"][0, -1] == 9


def test_padded_batch_loss_equals_per_row_reference(chat_tok):
    examples = [Example((("user", "Say hi."), ("assistant", "Return the sum."))),
                Example((("user", "Explain what the function does and why."), ("assistant", "It adds."))),
                Example((("user", "2+3?"), ("assistant", "The answer is 42 and 5.")))]
    ds, _ = encode_examples(examples, chat_tok.hf, max_length=256)
    model = tiny_llama(len(chat_tok.hf), tie_word_embeddings=False).eval()
    rows = [ds[i] for i in range(len(ds))]
    with torch.no_grad():
        loss = model(**model_inputs(CausalLMCollator(pad_token_id=chat_tok.hf.pad_token_id)(rows))).loss
        total, count = 0.0, 0
        for row in rows:  # each row alone, no padding: the reference
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1]
            targets = torch.tensor(row["labels"][1:])
            total += torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
            count += int((targets != IGNORE_INDEX).sum())
    assert len({len(r["input_ids"]) for r in rows}) > 1  # padding really happened
    torch.testing.assert_close(loss, total / count, rtol=1e-5, atol=1e-6)


def test_ensure_pad_token():
    tok = make_tokenizer(pad=False).hf
    assert tok.pad_token_id is None
    ensure_pad_token(tok)
    assert tok.pad_token == "</s>" and tok.pad_token_id == tok.eos_token_id

    tok = make_tokenizer().hf
    ensure_pad_token(tok)
    assert tok.pad_token == "<pad>"


def test_no_pad_and_no_eos_is_a_model_error():
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=make_tokenizer().core)
    with pytest.raises(ModelError, match="neither a pad nor an eos token"):
        ensure_pad_token(bare)


def test_scored_positions_are_the_shifted_labels_per_row_padded_with_ignore():
    labels = torch.tensor([[-100, 6, 7, -100, -100], [-100, -100, 7, 8, 9], [-100, 6, -100, -100, -100]])
    scored = scored_positions(next_token_targets(labels))
    # row 0: positions 0, 1 predict 6, 7; row 1: 1, 2, 3 predict 7, 8, 9; row 2: 0 predicts 6
    assert scored["index"].tolist() == [[0, 1, 0], [1, 2, 3], [0, 0, 0]]
    assert scored["targets"].tolist() == [[6, 7, -100], [7, 8, 9], [6, -100, -100]]
    assert scored["count"] == 6


def test_pack_rows_fills_as_few_rows_as_fit_evenly():
    lengths = [5, 2, 7, 3, 1, 4]
    rows = pack_rows(lengths, capacity=8)
    assert sorted(i for row in rows for i in row) == list(range(6))
    assert [sum(lengths[i] for i in row) for row in rows] == [8, 7, 7]  # ceil(22 / 8) = 3 rows, evenly filled
    assert rows == [[2, 4], [0, 1], [5, 3]]  # longest first, each to the least filled row
    # 552 tokens in rows of 512: two rows of about half, not one full row and one nearly empty
    assert [sum([248, 150, 100, 54][i] for i in row) for row in pack_rows([248, 150, 100, 54], 512)] == [302, 250]
    assert pack_rows([9, 3], capacity=8) == [[0], [1]]  # too long for a row: a row of its own
    assert pack_rows([500, 500, 30], capacity=512) == [[0], [1], [2]]  # two rows would not fit: three
    assert pack_rows([], capacity=8) == []


def test_packed_batch_concatenates_examples_with_restarting_positions():
    batch = CausalLMCollator(pad_token_id=0, packing=True, pack_length=8)(ROWS)
    # lengths 3, 5, 2 (10 tokens) -> two rows of 8, evenly: [5] and [3, 2]
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 5, 6]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    # each example's first label is masked: nothing before it in the row may predict it
    assert batch["labels"].tolist() == [[-100, -100, 7, 8, 9], [-100, 6, 7, -100, 6]]
    tail = CausalLMCollator(pad_token_id=0, packing=True, pack_length=8)(ROWS[:1] + ROWS[2:])
    # [3] and [2] fit one row: no padding; a padding tail restarts its positions (a sequence of its own)
    assert tail["input_ids"].tolist() == [[5, 6, 7, 5, 6]] and tail["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    padded_tail = CausalLMCollator(pad_token_id=0, packing=True, pack_length=5)(ROWS[:2])  # rows [5] and [3]
    assert padded_tail["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]]
    assert padded_tail["position_ids"].tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert padded_tail["labels"][1].tolist() == [-100, 6, 7, -100, -100]
    assert "attention_mask" not in batch and batch["use_cache"] is False
    assert batch[REAL_TOKENS] == 10
    assert batch[SCORED]["count"] == 6  # the same trained tokens as the padded batch


def test_token_budget_items_are_split_back_into_their_examples():
    group = {"input_ids": [5, 6, 7, 5, 6], "labels": [-100, 6, 7, -100, 6], "lengths": [3, 2]}
    padded = CausalLMCollator(pad_token_id=0)([group])
    assert padded["input_ids"].tolist() == [[5, 6, 7], [5, 6, 0]]
    assert padded["labels"].tolist() == [[-100, 6, 7], [-100, 6, -100]]


# Every label trained, first token included (pretraining-style rows): nothing masks an example's start but packing.
UNMASKED = [
    {"input_ids": [5, 6, 7], "labels": [5, 6, 7]},
    {"input_ids": [8, 9], "labels": [8, 9]},
    {"input_ids": [10, 11, 12, 13], "labels": [10, 11, 12, 13]},
]


def test_each_packed_examples_first_label_is_masked_whatever_the_row_before_it():
    """In a packed row the token before an example is the previous example's last one: it must not be trained to
    predict this example's first token, which alone (or padded) nothing predicts."""
    packed = CausalLMCollator(pad_token_id=0, packing=True, pack_length=64)(UNMASKED)
    assert packed["input_ids"].shape[0] == 1  # all three in one row
    row, labels, positions = packed["input_ids"][0].tolist(), packed["labels"][0].tolist(), packed["position_ids"][0]
    starts = positions.eq(0).nonzero().flatten().tolist()
    assert len(starts) == 3
    for start in starts:
        assert labels[start] == IGNORE_INDEX
    assert sorted(t for t in labels if t != IGNORE_INDEX) == sorted(t for ex in UNMASKED for t in ex["input_ids"][1:])
    targets = next_token_targets(packed["labels"])[0].tolist()
    for start in starts[1:]:  # the last token of the example before predicts nothing
        assert targets[start - 1] == IGNORE_INDEX and row[start - 1] != IGNORE_INDEX
    # the same trained (context, token) pairs as the examples padded one per row
    padded = CausalLMCollator(pad_token_id=0)(UNMASKED)
    assert packed[SCORED]["count"] == padded[SCORED]["count"] == sum(len(ex["input_ids"]) - 1 for ex in UNMASKED)


@pytest.mark.parametrize("packing", [False, True])
@pytest.mark.parametrize("longest, width", [(1, 4), (3, 4), (4, 4), (5, 8), (7, 8), (8, 8), (9, 12)])
def test_pad_to_multiple_of_is_the_smallest_multiple_at_or_above_the_longest_row(packing, longest, width):
    rows = [{"input_ids": list(range(1, longest + 1)), "labels": list(range(1, longest + 1))},
            {"input_ids": [1], "labels": [1]}]
    batch = CausalLMCollator(pad_token_id=0, pad_to_multiple_of=4, packing=packing)(rows)
    assert batch["input_ids"].shape[1] == width
    assert batch["input_ids"][0].tolist() == list(range(1, longest + 1)) + [0] * (width - longest)

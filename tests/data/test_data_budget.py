"""--tokens-per-batch: groups filled to a token budget, every example exactly once, reproducible."""

from __future__ import annotations

import datasets
import pytest

from oloraplus.data.budget import token_budget_dataset, token_budget_groups
from oloraplus.data.collate import CausalLMCollator
from oloraplus.errors import ConfigError

LENGTHS = [5, 9, 3, 12, 7, 4, 30, 2, 8, 6]


def test_groups_cover_every_example_once_within_the_budget():
    groups = token_budget_groups(LENGTHS, tokens=16, seed=0)
    assert sorted(i for g in groups for i in g) == list(range(len(LENGTHS)))
    for g in groups:
        assert sum(LENGTHS[i] for i in g) <= 16 or len(g) == 1  # only a lone long example exceeds it
    assert [g for g in groups if sum(LENGTHS[i] for i in g) > 16] == [[6]]  # the 30-token example
    # greedy: the next example did not fit in the previous group
    for before, after in zip(groups, groups[1:]):
        assert sum(LENGTHS[i] for i in before) + LENGTHS[after[0]] > 16


def test_groups_are_seeded():
    assert token_budget_groups(LENGTHS, 16, seed=1) == token_budget_groups(LENGTHS, 16, seed=1)
    assert token_budget_groups(LENGTHS, 16, seed=1) != token_budget_groups(LENGTHS, 16, seed=2)


def test_budget_must_be_positive():
    with pytest.raises(ConfigError, match="--tokens-per-batch"):
        token_budget_groups(LENGTHS, 0, seed=0)


def test_dataset_items_hold_their_examples_and_collate_back():
    rows = {"input_ids": [[i + 1] * n for i, n in enumerate(LENGTHS)],
            "labels": [[-100] + [i + 1] * (n - 1) for i, n in enumerate(LENGTHS)], "length": LENGTHS}
    ds = datasets.Dataset.from_dict(rows)
    packed = token_budget_dataset(ds, tokens=16, seed=0)
    groups = token_budget_groups(LENGTHS, 16, seed=0)
    assert len(packed) == len(groups)
    for item, group in zip(packed, groups):
        assert item["lengths"] == [LENGTHS[i] for i in group] and item["length"] == sum(item["lengths"])
        batch = CausalLMCollator(pad_token_id=0, packing=True, pack_length=16)([item])
        assert batch["real_tokens"] == item["length"]
        assert sorted(batch["input_ids"][batch["input_ids"] != 0].tolist()) == sorted(
            t for i in group for t in rows["input_ids"][i])

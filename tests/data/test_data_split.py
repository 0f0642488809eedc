"""split_examples: deterministic from the seed, disjoint, sized as documented."""

from __future__ import annotations

import random

import pytest

from oloraplus.data.split import split_examples, split_sizes
from oloraplus.errors import ConfigError, DataError

DATA = [f"ex{i}" for i in range(100)]


def test_same_seed_same_split_and_eval_comes_first():
    train, evals = split_examples(DATA, train_size=30, eval_size=10, seed=7)
    assert (train, evals) == split_examples(DATA, train_size=30, eval_size=10, seed=7)
    # independent reference: the documented recipe, written out
    order = list(DATA)
    random.Random(7).shuffle(order)
    assert evals == order[:10] and train == order[10:40]


def test_different_seeds_differ_and_sides_are_disjoint():
    a = split_examples(DATA, 30, 10, seed=1)
    b = split_examples(DATA, 30, 10, seed=2)
    assert a != b
    for train, evals in (a, b):
        assert len(train) == 30 and len(evals) == 10 and not set(train) & set(evals)


def test_eval_does_not_depend_on_train_size():
    """Eval is drawn first, so asking for more training data never changes the eval set."""
    assert split_examples(DATA, 20, 10, seed=3)[1] == split_examples(DATA, 90, 10, seed=3)[1]


@pytest.mark.parametrize(("n", "train", "eval_", "expected"), [
    (100, 30, 10, (30, 10)),
    (40, 30, 10, (30, 10)),  # exactly enough
    (30, 30, 10, (20, 10)),  # short: eval min(10, 30 // 3) = 10, train the rest
    (12, 30, 10, (8, 4)),  # eval a third
    (2, 30, 10, (1, 1)),  # eval at least 1
    (5, 2, 10, (2, 1)),  # train still capped at train_size
    (5, 30, 0, (5, 0)),  # no eval asked for
])
def test_sizes_with_little_data(n, train, eval_, expected):
    assert split_sizes(n, train, eval_) == expected
    got_train, got_eval = split_examples(list(range(n)), train, eval_, seed=0)
    assert (len(got_train), len(got_eval)) == expected


def test_too_little_data_or_bad_sizes():
    with pytest.raises(DataError, match="only 1 example"):
        split_examples(["only"], 10, 5, seed=0)
    with pytest.raises(ConfigError, match="^--train-size: must be >= 1, got 0$"):
        split_examples(DATA, 0, 5, seed=0)
    with pytest.raises(ConfigError, match="^--eval-size: must be >= 0, got -1$"):
        split_examples(DATA, 5, -1, seed=0)


# --- three splits: train, validation (--val-size), test (--eval-size) ---

from oloraplus.data.split import split_three  # noqa: E402


def test_three_splits_are_disjoint_and_follow_the_documented_recipe():
    train, val, test = split_three(DATA, train_size=30, eval_size=10, val_size=15, seed=5)
    order = list(DATA)
    random.Random(5).shuffle(order)  # independent reference: test the head, validation the tail, train after test
    assert test == order[:10] and val == order[-15:] and train == order[10:40]
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))


@pytest.mark.parametrize("eval_sizes", [(10, 20), (5, 40), (1, 50)])
def test_validation_and_test_are_stable_under_a_changed_eval_size(eval_sizes):
    small, large = (split_three(DATA, 30, size, 15, seed=11) for size in eval_sizes)
    assert small.validation == large.validation  # choosing on validation is unaffected
    assert large.test[:len(small.test)] == small.test  # more test examples only add to the test set
    for splits in (small, large):
        assert not set(splits.train) & set(splits.validation) and not set(splits.test) & set(splits.validation)


def test_no_validation_is_the_old_two_way_split():
    """--val-size 0 must give old runs exactly the data they trained and were scored on."""
    for seed in range(5):
        train, val, test = split_three(DATA, 30, 10, 0, seed)
        assert val == [] and (train, test) == split_examples(DATA, 30, 10, seed)


def test_validation_with_little_data_keeps_every_split_non_empty():
    train, val, test = split_three(list(range(8)), 30, 10, 10, seed=0)
    assert (len(train), len(val), len(test)) == (4, 2, 2)
    with pytest.raises(ConfigError, match="^--val-size: must be >= 0, got -2$"):
        split_three(DATA, 5, 5, -2, seed=0)
    with pytest.raises(DataError, match="validate on 1"):
        split_three(["a", "b"], 5, 5, 5, seed=0)

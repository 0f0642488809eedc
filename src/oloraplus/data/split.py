"""Deterministic train/validation/test split: the same seed gives the same split on every machine.

One seeded permutation of the examples: the test split (`--eval-size`, the reported numbers) is its head,
the validation split (`--val-size`, where settings are chosen) its tail, and train follows the test split.
So a larger `--eval-size` only adds test examples (the smaller test set is a prefix of the larger one) and
never moves the validation split, and the three never share an example. With `--val-size 0` the split is
exactly the two-way split of earlier versions (test first, then train), so old runs reproduce their data.
"""

from __future__ import annotations

import random
from typing import NamedTuple, Sequence, TypeVar

from oloraplus.errors import ConfigError, DataError

T = TypeVar("T")


class Splits(NamedTuple):
    train: list
    validation: list
    test: list


def split_sizes(n: int, train_size: int, eval_size: int) -> tuple[int, int]:
    """(n_train, n_eval) for n examples.

    Enough data: exactly the sizes asked for. Too little: eval keeps min(eval_size, max(1, n // 3))
    (a third, so a small file still trains on most of itself) and train gets the rest, capped at
    train_size. Neither side is empty when both were asked for and n >= 2.
    """
    if n >= train_size + eval_size:
        return train_size, eval_size
    n_eval = min(eval_size, max(1, n // 3))
    return min(train_size, n - n_eval), n_eval


def validation_size(n: int, train_size: int, eval_size: int, val_size: int) -> int:
    """Validation examples out of n: all asked for when everything fits, else min(val_size, max(1, n // 4)).

    It depends on n and the sizes asked for, never on which examples: the tail of the permutation is stable.
    """
    if val_size <= 0:
        return 0
    if n >= train_size + eval_size + val_size:
        return val_size
    return min(val_size, max(1, n // 4))


def split_three(examples: Sequence[T], train_size: int, eval_size: int, val_size: int, seed: int) -> Splits:
    """(train, validation, test): shuffle with `random.Random(seed)`; test is the head, validation the tail."""
    if train_size < 1:
        raise ConfigError(f"--train-size: must be >= 1, got {train_size}")
    if eval_size < 0:
        raise ConfigError(f"--eval-size: must be >= 0, got {eval_size}")
    if val_size < 0:
        raise ConfigError(f"--val-size: must be >= 0, got {val_size}")
    n = len(examples)
    n_val = validation_size(n, train_size, eval_size, val_size)
    n_train, n_eval = split_sizes(n - n_val, train_size, eval_size)
    if n_train < 1 or (val_size and n_val < 1):
        need = 1 + min(eval_size, 1) + min(val_size, 1)
        validate = f" and validate on {min(val_size, 1)}" if val_size else ""
        raise DataError(f"only {n} example(s): need at least {need} to train on one and evaluate on "
                        f"{min(eval_size, 1)}{validate}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test_idx, train_idx = order[:n_eval], order[n_eval:n_eval + n_train]
    val_idx = order[n - n_val:] if n_val else []
    return Splits([examples[i] for i in train_idx], [examples[i] for i in val_idx], [examples[i] for i in test_idx])


def split_examples(examples: Sequence[T], train_size: int, eval_size: int, seed: int) -> tuple[list[T], list[T]]:
    """(train, eval): shuffle with `random.Random(seed)`, take eval first, then train (see split_sizes)."""
    train, _, test = split_three(examples, train_size, eval_size, 0, seed)
    return train, test

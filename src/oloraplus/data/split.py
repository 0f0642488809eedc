"""Deterministic train/eval split: the same seed gives the same split on every machine."""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

from oloraplus.errors import ConfigError, DataError

T = TypeVar("T")


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


def split_examples(examples: Sequence[T], train_size: int, eval_size: int, seed: int) -> tuple[list[T], list[T]]:
    """(train, eval): shuffle with `random.Random(seed)`, take eval first, then train (see split_sizes)."""
    if train_size < 1:
        raise ConfigError(f"--train-size: must be >= 1, got {train_size}")
    if eval_size < 0:
        raise ConfigError(f"--eval-size: must be >= 0, got {eval_size}")
    n_train, n_eval = split_sizes(len(examples), train_size, eval_size)
    if n_train < 1:
        raise DataError(f"only {len(examples)} example(s): need at least {1 + min(eval_size, 1)} "
                        f"to train on one and evaluate on {min(eval_size, 1)}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    eval_idx, train_idx = order[:n_eval], order[n_eval:n_eval + n_train]
    return [examples[i] for i in train_idx], [examples[i] for i in eval_idx]

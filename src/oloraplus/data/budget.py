"""`--tokens-per-batch`: batches filled to a token budget instead of a fixed number of examples.

With a fixed batch of B examples a step processes anywhere from B short to B long examples; on a GPU
the short steps leave it idle. Here the training examples are shuffled once (seeded) and cut into
consecutive groups of at most `tokens` real tokens; each group is one dataset item, so the Trainer
draws one group per step (`per_device_train_batch_size=1`) and shuffles the groups every epoch.
The collator then packs a group's examples into rows (`data.collate`). This is how torchtune's
packed datasets batch; an example longer than the budget forms a group of its own.
"""

from __future__ import annotations

import random

import datasets

from oloraplus.errors import ConfigError

FEATURES = datasets.Features({
    "input_ids": datasets.List(datasets.Value("int32")),
    "labels": datasets.List(datasets.Value("int32")),
    "lengths": datasets.List(datasets.Value("int32")),  # the group's examples, in order
    "length": datasets.Value("int32"),
})


def token_budget_groups(lengths: list[int], tokens: int, seed: int) -> list[list[int]]:
    """Example indices of each group: a seeded shuffle cut greedily where the next example would exceed `tokens`."""
    if tokens < 1:
        raise ConfigError(f"--tokens-per-batch: must be > 0, got {tokens}")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    groups: list[list[int]] = []
    used = 0
    for i in order:
        if groups and used + lengths[i] <= tokens:
            groups[-1].append(i)
            used += lengths[i]
        else:
            groups.append([i])
            used = lengths[i]
    return groups


def token_budget_dataset(dataset: datasets.Dataset, tokens: int, seed: int) -> datasets.Dataset:
    """One item per group of `token_budget_groups`, the examples' ids and labels concatenated."""
    groups = token_budget_groups([int(n) for n in dataset["length"]], tokens, seed)
    ids, labels = dataset["input_ids"], dataset["labels"]
    rows: dict[str, list] = {"input_ids": [], "labels": [], "lengths": [], "length": []}
    for group in groups:
        rows["input_ids"].append([t for i in group for t in ids[i]])
        rows["labels"].append([t for i in group for t in labels[i]])
        rows["lengths"].append([len(ids[i]) for i in group])
        rows["length"].append(sum(len(ids[i]) for i in group))
    return datasets.Dataset.from_dict(rows, features=FEATURES)

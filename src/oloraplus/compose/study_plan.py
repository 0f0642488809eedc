"""What a compose study trains: one run per domain and the merged-data run(s), with the merged data laid out
so the recipe's own seeded split gives back exactly the union of the domains' splits."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from oloraplus.compose.study_spec import MERGED, StudySpec, label, sums
from oloraplus.config import TrainConfig, build_config
from oloraplus.data.formats import Example, load_examples
from oloraplus.data.split import split_examples
from oloraplus.errors import ConfigError, DataError
from oloraplus import rundir


@dataclass(frozen=True)
class Training:
    name: str  # run directory under DIR/runs
    domains: tuple[str, ...]  # the domains it trained on
    config: TrainConfig


def arrange_for_split(train: list, held: list, seed: int) -> list:
    """A list that `split_examples(it, len(train), len(held), seed)` splits back into (train, held), in order."""
    order = list(range(len(train) + len(held)))
    random.Random(seed).shuffle(order)  # the permutation split_examples draws
    arranged: list = [None] * len(order)
    for position, item in zip(order, held + train):  # eval takes order[:n_eval], train the rest
        arranged[position] = item
    return arranged


def _record(example: Example, alpaca: bool) -> dict[str, Any]:
    if not alpaca:
        return {"messages": [{"role": role, "content": text, **({"loss_weight": 0} if i in example.no_loss else {})}
                             for i, (role, text) in enumerate(example.messages)]}
    user = example.messages[0][1]
    instruction = user[: -len("\n\n" + example.input)] if example.input else user
    return {"instruction": instruction, "input": example.input, "output": example.response}


def merged_jsonl(examples: Sequence[Example]) -> str:
    """Alpaca records when every example is one user turn (keeps `input`), else chat `messages` records."""
    alpaca = all([role for role, _ in ex.messages] == ["user", "assistant"] for ex in examples)
    return "".join(json.dumps(_record(ex, alpaca), ensure_ascii=False) + "\n" for ex in examples)


def check_merged_file(path: Path, train: list, held: list, seed: int, tokenizer) -> None:
    """The merged run must see each example exactly as its domain run does: same prompt, same response."""
    from oloraplus.data.prompts import render_prompt

    got_train, got_held = split_examples(load_examples(str(path)), len(train), len(held), seed)
    for i, (got, want) in enumerate(zip(got_train + got_held, train + held)):
        if got.response != want.response or render_prompt(tokenizer, got) != render_prompt(tokenizer, want):
            raise DataError(f"{path}: merged example {i} renders differently from its domain's record "
                            "(an Alpaca 'input' mixed with multi-turn data needs a model with a chat template)")


def merged_split(splits: dict[str, tuple[list, list]], domains: Sequence[str], seed: int) -> tuple[list, list]:
    """The merged data: the domains' train splits concatenated and shuffled, and their held-out sets."""
    train = [ex for name in domains for ex in splits[name][0]]
    random.Random(seed).shuffle(train)
    return train, [ex for name in domains for ex in splits[name][1]]


def plan_trainings(spec: StudySpec, splits: dict[str, tuple[list, list]], output: Path
                   ) -> tuple[list[Training], dict[str, str]]:
    """One run per domain and the merged run(s); also {merged data path: JSONL text} to write."""
    seed = build_config(TrainConfig, spec.base, spec.source).seed
    runs, files = [], {}

    def config(values: dict[str, Any], name: str) -> TrainConfig:
        values = {**spec.base, **values, "output": str(output / "runs" / name), "overwrite": True}
        try:
            return build_config(TrainConfig, values, spec.source).validate()
        except ConfigError as exc:
            raise ConfigError(f"{spec.source}: run {name}: {exc}") from None

    for d in spec.domains:
        runs.append(Training(d.name, (d.name,), config(
            {"data": d.data, "train_size": d.train_size, "eval_size": d.eval_size}, d.name)))
    subsets = [tuple(spec.names)] + ([s for s in sums(spec.names) if len(s) < len(spec.names)]
                                     if spec.baseline == "per_sum" else [])
    for subset in subsets:
        train, held = merged_split(splits, subset, seed)
        text = merged_jsonl(arrange_for_split(train, held, seed))
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        path = output.resolve() / "data" / f"{MERGED}-{digest}.jsonl"  # content-addressed: new data, new config
        files[str(path)] = text
        name = MERGED if len(subset) == len(spec.names) else f"{MERGED}-{label(subset)}"
        runs.append(Training(name, subset, config(
            {**spec.merged, "data": str(path), "train_size": len(train), "eval_size": len(held)}, name)))
    return runs, files


def is_finished(run: Training) -> bool:
    """True when the run directory holds this exact run; ConfigError when it holds a different one."""
    relocated = ("data",) if run.name.startswith(MERGED) else ()  # named by its digest (see rundir.is_finished)
    return rundir.is_finished(Path(run.config.output), run.config, what="compose-study", relocated=relocated)

"""Everything a run needs before its adapter: the data read, split and encoded, and the model it is encoded for.

Shared by `train` and `eval` (which rebuilds a finished run's eval split from its recorded config): both get
the same split from the same config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from oloraplus import models
from oloraplus.config import TrainConfig
from oloraplus.console import say
from oloraplus.data.formats import load_examples
from oloraplus.data.split import split_examples
from oloraplus.data.tokenize import encode_examples

if TYPE_CHECKING:
    import torch


@dataclass
class Prepared:
    """Model, tokenizer and encoded data, ready for an adapter."""

    loaded: models.LoadedModel
    eval_examples: list  # the eval split's Examples: `--eval-generate` renders their prompts
    train_dataset: Any
    eval_dataset: Any
    data_stats: dict
    fingerprint: str


def prepare(cfg: TrainConfig, device: str | torch.device | None = None) -> Prepared:
    """Everything before the adapter; bad model or data fails here, before any file is written.

    `device`: where the model loads (`models.load_model`; default the GPU when there is one).
    """
    examples = load_examples(cfg.data)  # cheap: a bad file fails before the model loads
    say(f"loading {cfg.model} ...")
    loaded = models.load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, device=device, quantize=cfg.quantize)
    train_ex, eval_ex = split_examples(examples, cfg.train_size, cfg.eval_examples(), cfg.seed)
    train_ds, train_stats = encode_examples(train_ex, loaded.tokenizer, cfg.max_length)
    eval_ds, eval_stats = encode_examples(eval_ex, loaded.tokenizer, cfg.max_length)
    stats = {
        "examples_available": len(examples),
        "train_examples": len(train_ds),
        "eval_examples": len(eval_ds),
        "train_truncated": train_stats.truncated,
        "train_dropped": train_stats.dropped,
        "eval_truncated": eval_stats.truncated,
        "eval_dropped": eval_stats.dropped,
        "train_tokens_per_epoch": int(sum(train_ds["length"])),
    }
    return Prepared(loaded, eval_ex, train_ds, eval_ds, stats, models.base_fingerprint(loaded.model))

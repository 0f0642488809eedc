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
from oloraplus.data.placeholders import placeholder_replies, placeholder_warning
from oloraplus.data.plaintext import encode_documents, is_plain_text, refuse_generation
from oloraplus.data.split import split_three
from oloraplus.data.tokenize import encode_examples
from oloraplus.errors import ConfigError

if TYPE_CHECKING:
    import torch


@dataclass
class Prepared:
    """Model, tokenizer and encoded data, ready for an adapter."""

    loaded: models.LoadedModel
    eval_examples: list  # the eval split's Examples (or Documents): `--eval-generate` renders their prompts
    train_dataset: Any
    eval_dataset: Any
    data_stats: dict
    fingerprint: str
    val_dataset: Any = None  # the validation split (--val-size), None without one


def model_positions(config: Any) -> int | None:
    """max_position_embeddings of a model config (of its text model, for a multimodal one), when it has one."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    positions = getattr(text_config, "max_position_embeddings", None)
    return positions if isinstance(positions, int) else None


def check_max_length(config: Any, max_length: int, model: str) -> None:
    """--max-length beyond the model's positions would train on positions it never learned (or crash)."""
    positions = model_positions(config)
    if positions is not None and max_length > positions:
        raise ConfigError(f"--max-length {max_length}: above the {positions:,} positions of --model {model} "
                          f"(max_position_embeddings); use --max-length {positions} or less")


def prepare(cfg: TrainConfig, device: str | torch.device | None = None, *, training: bool = True,
            generate_flag: str = "--eval-generate", eval_all: bool = False) -> Prepared:
    """Everything before the adapter; bad model or data fails here, before any file is written.

    `device`: where the model loads (`models.load_model`; default the GPU when there is one).
    `training`: warn about what training would learn (placeholders); `eval` passes False.
    `generate_flag`: the flag that asked for `cfg.eval_generate` generations, named if the data cannot have them.
    `eval_all`: every example is eval data, in file order (`eval --data F --eval-size all`).
    """
    examples = load_examples(cfg.data)  # cheap: a bad file fails before the model loads
    plain = is_plain_text(examples)
    if plain and cfg.eval_generate:
        refuse_generation(cfg.data, generate_flag)
    check_max_length(models.model_config(cfg.model, cfg.trust_remote_code), cfg.max_length, cfg.model)
    placeholders, first = (0, None) if plain else placeholder_replies(examples, cfg.train_turns)
    warning = placeholder_warning(placeholders, first)
    if training and warning:
        say(warning)
    say(f"loading {cfg.model} ...")
    loaded = models.load_model(cfg.model, trust_remote_code=cfg.trust_remote_code, device=device, quantize=cfg.quantize)
    if eval_all:  # nothing is trained: the one train example only keeps the statistics below well-defined
        train_ex, val_ex, eval_ex = list(examples[:1]), [], list(examples)
    else:
        train_ex, val_ex, eval_ex = split_three(examples, cfg.train_size, cfg.eval_examples(), cfg.val_size,
                                                cfg.data_seed())
    encode = ((lambda split: encode_documents(split, loaded.tokenizer, cfg.max_length)) if plain else
              (lambda split: encode_examples(split, loaded.tokenizer, cfg.max_length, cfg.train_turns)))
    (train_ds, train_stats), (eval_ds, eval_stats) = encode(train_ex), encode(eval_ex)
    val_ds, val_stats = encode(val_ex) if val_ex else (None, None)
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
    if val_stats is not None:
        stats.update(val_examples=len(val_ds), val_truncated=val_stats.truncated, val_dropped=val_stats.dropped)
    if plain:  # rows of packed text, not examples: the documents they came from
        stats.update(plain_text=True, train_documents=len(train_ex), eval_documents=len(eval_ex))
    else:
        stats.update(train_turns_lost=train_stats.turns_lost, eval_turns_lost=eval_stats.turns_lost,
                     last_turn_only=train_stats.last_turn_only + eval_stats.last_turn_only,
                     placeholder_replies=placeholders)
    return Prepared(loaded, eval_ex, train_ds, eval_ds, stats, models.base_fingerprint(loaded.model), val_ds)

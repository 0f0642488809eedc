"""The λ optimizer and the base-relative adapter for any `transformers.Trainer` subclass: HF's, TRL's or yours.

Extend by subclassing, not by wrapping: `RatioOptimizerMixin` overrides the two documented hooks a LoRA+/OLoRA+
trainer needs, `create_optimizer` (A at η, B at λη; so it also works where `Trainer(optimizers=...)` is refused,
e.g. under FSDP) and `save_model` (the adapter that loads onto the untouched base). λ is a real field of the
arguments dataclass (`OLoRAPlusTrainingArguments.ratio`), so `HfArgumentParser` and `hyperparameter_search` see it:
the search sets only keys that are fields of the args. `oloraplus train`'s own `RatioTrainer` uses the same mixin.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from oloraplus.api import save_adapter
from oloraplus.config import TrainConfig, check_ratio
from oloraplus.errors import ConfigError, MissingExtraError
from oloraplus.optim.ratio import build_optimizer
from oloraplus.train import fsdp


def ratio_field() -> Any:
    """The `ratio` (λ) field of an arguments dataclass: TrainConfig's default and help, one definition."""
    config_field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "ratio")
    return dataclasses.field(default=config_field.default, metadata={"help": config_field.metadata["help"]})


class RatioOptimizerMixin:
    """Put it before the Trainer class in the bases: `class MyTrainer(RatioOptimizerMixin, Trainer)`.

    λ is `args.ratio` when the arguments have that field (OLoRAPlusTrainingArguments, OLoRAPlusSFTConfig; a
    hyperparameter search sets it per trial), else the trainer's own `ratio` attribute (`RatioTrainer`).
    """

    def lora_plus_ratio(self) -> float:
        ratio = getattr(self.args, "ratio", getattr(self, "ratio", None))
        if ratio is None:
            raise ConfigError(f"--ratio: {type(self.args).__name__} has no 'ratio' field for λ; "
                              "use OLoRAPlusTrainingArguments or OLoRAPlusSFTConfig")
        return check_ratio(ratio)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = build_optimizer(
                self.model if model is None else model, self.args.learning_rate, self.lora_plus_ratio(),
                self.args.weight_decay, betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon,
            )
        return self.optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The adapter for the untouched base (OLoRA/PiSSA: base-relative rank 2r) and the tokenizer.

        Checkpoints (`_internal_call`) keep Trainer's raw factors: a resume loads them onto the shifted base.
        """
        if _internal_call:
            return super().save_model(output_dir, _internal_call)
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        gathered = fsdp.gathered_adapter(model) if fsdp.is_sharded(model) else None  # a collective: every rank
        if self.args.should_save:
            save_adapter(model, output_dir, state_dict=gathered)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
        self.accelerator.wait_for_everyone()

    def hyperparameter_search(self, *args: Any, backend: Any = None, **kwargs: Any) -> Any:
        """Trainer's search; without the optuna extra, one line naming it instead of transformers' long error."""
        if (backend is None or str(getattr(backend, "value", backend)) == "optuna") and \
                importlib.util.find_spec("optuna") is None:
            raise MissingExtraError("hyperparameter_search (optuna backend)", "optuna")
        return super().hyperparameter_search(*args, backend=backend, **kwargs)


@dataclass
class RatioArguments:
    """λ as a field of an arguments dataclass: put it before TrainingArguments (or TRL's SFTConfig) in the bases."""

    ratio: float = ratio_field()

    def __post_init__(self) -> None:
        self.ratio = check_ratio(self.ratio)
        super().__post_init__()


@dataclass
class OLoRAPlusTrainingArguments(RatioArguments, TrainingArguments):
    """TrainingArguments plus λ (`ratio`): B factors learn at λ × learning_rate."""


class OLoRAPlusTrainer(RatioOptimizerMixin, Trainer):
    """`transformers.Trainer` with the λ optimizer and the base-relative `save_model`; pass OLoRAPlusTrainingArguments
    and a model from `oloraplus.add_adapter` (or `model_init=` returning one, for `hyperparameter_search`)."""

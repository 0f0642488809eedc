"""OLoRA+ in TRL's `SFTTrainer` (the [trl] extra): packing, completion-only and assistant-only loss stay TRL's.

`OLoRAPlusSFTConfig` is TRL's `SFTConfig` with λ as a real field (`ratio`), so `hyperparameter_search` and
`TrlParser` see it; `OLoRAPlusSFTTrainer` builds the λ optimizer in `create_optimizer` and saves the base-relative
adapter in `save_model` (`RatioOptimizerMixin`). Attach the adapter yourself (`oloraplus.add_adapter`) and pass
the PeftModel, not a `peft_config`: TRL would attach a plain LoRA. TRL's trainer takes no `model_init`; this one
does, so `hyperparameter_search` can build a fresh adapter per trial.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch

from oloraplus.errors import ConfigError, MissingExtraError
from oloraplus.train.mixin import RatioArguments, RatioOptimizerMixin

try:
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.utils import add_fused_lm_head
except ModuleNotFoundError as exc:
    if exc.name is None or exc.name.split(".")[0] != "trl":
        raise
    raise MissingExtraError("OLoRAPlusSFTTrainer (TRL)", "trl") from None

# What SFTTrainer.__init__ asks of the fused LM head it adds to its model (trl 1.16): the loss and its
# entropy / token-accuracy metrics. A model built per trial by `model_init` needs the same head.
FUSED_HEAD_OUTPUTS = ("log_probs", "entropy", "is_top1")


@dataclass
class OLoRAPlusSFTConfig(RatioArguments, SFTConfig):
    """SFTConfig plus λ (`ratio`): B factors learn at λ × learning_rate."""


ModelInit = Callable[..., torch.nn.Module]


class OLoRAPlusSFTTrainer(RatioOptimizerMixin, SFTTrainer):
    """TRL's SFTTrainer with the λ optimizer and the base-relative `save_model`.

    `model`: a PeftModel from `oloraplus.add_adapter`; or `model_init` (no argument, or the optuna trial) returning
    one, which `train()` calls again for every run and every trial of `hyperparameter_search`.
    """

    def __init__(self, model: torch.nn.Module | None = None, args: OLoRAPlusSFTConfig | None = None, *rest: Any,
                 model_init: ModelInit | None = None, **kwargs: Any):
        if not isinstance(args, OLoRAPlusSFTConfig):
            raise ConfigError(f"args: OLoRAPlusSFTTrainer needs an OLoRAPlusSFTConfig (λ is its 'ratio' field), "
                              f"got {type(args).__name__}")
        if model is None:
            if model_init is None:
                raise ConfigError("OLoRAPlusSFTTrainer: pass model= (from oloraplus.add_adapter) or model_init=")
            model = _call(model_init, None)
        super().__init__(model, args, *rest, **kwargs)
        self.model_init = model_init  # set after Trainer.__init__, which refuses a model and a model_init together

    def call_model_init(self, trial: Any = None) -> torch.nn.Module:
        """A fresh model per trial, with the fused LM head SFTTrainer.__init__ gave the first one."""
        model = super().call_model_init(trial)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        add_fused_lm_head(base, outputs=FUSED_HEAD_OUTPUTS)
        return model


def _call(model_init: ModelInit, trial: Any) -> torch.nn.Module:
    return model_init(trial) if inspect.signature(model_init).parameters else model_init()

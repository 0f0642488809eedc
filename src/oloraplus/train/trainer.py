"""`transformers.Trainer` with the λ optimizer: the loop, accumulation, schedulers, DDP and logging stay HF's."""

from __future__ import annotations

import math

import torch
from transformers import Trainer

from oloraplus.errors import OloraError
from oloraplus.optim.ratio import ratio_param_groups


class NonFiniteLossError(OloraError):
    """Training diverged: the message names the step; the last good checkpoint is kept."""


class RatioTrainer(Trainer):
    """Trainer whose optimizer puts every A factor at η and every B factor at λη (LoRA+/OLoRA+)."""

    def __init__(self, *args, ratio: float = 1.0, **kwargs):
        self.ratio = ratio
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups, _ = ratio_param_groups(opt_model, self.args.learning_rate, self.ratio, self.args.weight_decay)
            self.optimizer = torch.optim.AdamW(
                groups,
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not math.isfinite(loss.item()):
            step = self.state.global_step + 1
            raise NonFiniteLossError(
                f"training stopped at step {step}: loss is {loss.item()} (try a lower --lr or --ratio); "
                "the last good checkpoint is kept"
            )
        return loss

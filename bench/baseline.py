"""The OLoRA+ paper's implementation, re-created as the reference that `oloraplus` is benchmarked against.

What the paper's recipe does, and so what this file does:
- PEFT's own OLoRA init, `LoraConfig(init_lora_weights="olora")`: a full QR of every adapted weight,
  B = Q_r, A = R_r, base W − s·B·A (PEFT `LoraLayer.olora_init`);
- torch AdamW with two parameter groups: every `lora_A` at η, every `lora_B` at λη (LoRA+ ratio λ),
  handed to the transformers `Trainer` (which adds its linear schedule);
- every row padded to a fixed `max_length` (512) by transformers' `DataCollatorForSeq2Seq`
  (`padding="max_length"`, labels padded with -100), sampled in random order.

Everything else is held equal to `oloraplus` so that only the implementation differs: the same model,
data file, train/eval examples (oloraplus.data's seeded split), prompt rendering and prompt masking
(oloraplus.data.tokenize), target layers (every linear layer in the blocks), r, α, η, λ, steps, seed,
and the final eval (oloraplus.eval.loss.evaluate_loss, token-weighted, on the same eval rows).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments, set_seed

from oloraplus import models
from oloraplus.adapters.targets import resolve_target_modules
from oloraplus.data.collate import CausalLMCollator
from oloraplus.data.formats import load_examples
from oloraplus.data.split import split_examples
from oloraplus.data.tokenize import IGNORE_INDEX, encode_examples
from oloraplus.eval.loss import evaluate_loss


@dataclass
class RunSetup:
    """One training run of the benchmark; both implementations get the same values."""

    data: str
    model: str = "smollm2-135m"
    steps: int = 12
    batch_size: int = 4
    eval_size: int = 32
    max_length: int = 512
    rank: int = 32
    alpha: float = 16.0
    lr: float = 3e-4
    ratio: float = 4.0
    seed: int = 42

    @property
    def train_size(self) -> int:
        """One epoch of exactly `steps` full batches: both runs train on every example once."""
        return self.steps * self.batch_size


def paper_optimizer(model: torch.nn.Module, lr: float, ratio: float) -> torch.optim.AdamW:
    """AdamW, A factors at η and B factors at λη (LoRA+ η_B = λ η_A); no other parameter trains."""
    a = [p for n, p in model.named_parameters() if p.requires_grad and "lora_A" in n]
    b = [p for n, p in model.named_parameters() if p.requires_grad and "lora_B" in n]
    return torch.optim.AdamW([{"params": a, "lr": lr}, {"params": b, "lr": lr * ratio}], lr=lr, weight_decay=0.0)


def paper_collator(tokenizer, max_length: int) -> DataCollatorForSeq2Seq:
    """Every row right-padded to `max_length`: input_ids with the pad id, labels with -100."""
    tokenizer.padding_side = "right"  # training rows start at position 0, as the model's position ids assume
    return DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=max_length,
                                  label_pad_token_id=IGNORE_INDEX, return_tensors="pt")


def run_baseline(setup: RunSetup, output_dir: Path) -> dict[str, Any]:
    """Train the paper's way; returns the metrics `oloraplus.train.recipe.train` reports, under the same names."""
    set_seed(setup.seed)
    t0 = time.perf_counter()
    examples = load_examples(setup.data)
    loaded = models.load_model(setup.model)
    tokenizer = loaded.tokenizer
    train_ex, eval_ex = split_examples(examples, setup.train_size, setup.eval_size, setup.seed)
    train_ds, _ = encode_examples(train_ex, tokenizer, setup.max_length)
    eval_ds, _ = encode_examples(eval_ex, tokenizer, setup.max_length)
    load_s = time.perf_counter() - t0

    set_seed(setup.seed)
    config = LoraConfig(task_type="CAUSAL_LM", r=setup.rank, lora_alpha=setup.alpha, lora_dropout=0.0,
                        target_modules=resolve_target_modules(loaded.model, None), init_lora_weights="olora")
    model = get_peft_model(loaded.model, config)
    collator = paper_collator(tokenizer, setup.max_length)
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=setup.batch_size, max_steps=setup.steps,
        learning_rate=setup.lr, lr_scheduler_type="linear", weight_decay=0.0, logging_steps=max(1, setup.steps // 4),
        save_strategy="no", eval_strategy="no", report_to=[], seed=setup.seed, data_seed=setup.seed,
        remove_unused_columns=False, include_num_input_tokens_seen="non_padding", use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),  # as oloraplus's train() on a GPU
        dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_ds.remove_columns("length"),
                      data_collator=collator, optimizers=(paper_optimizer(model, setup.lr, setup.ratio), None))
    result = trainer.train()
    final_eval = evaluate_loss(model, eval_ds, CausalLMCollator(pad_token_id=tokenizer.pad_token_id),
                               batch_size=setup.batch_size)
    state, runtime = trainer.state, result.metrics["train_runtime"]
    return {
        "steps": state.global_step,
        "train_loss": result.training_loss,  # the mean over the run, as oloraplus reports it
        **final_eval,
        "train_tokens": int(state.num_input_tokens_seen),
        "processed_tokens": state.global_step * setup.batch_size * setup.max_length,
        "train_runtime_s": runtime,
        "tokens_per_s": state.num_input_tokens_seen / max(runtime, 1e-9),
        "seconds_per_step": runtime / max(state.global_step, 1),
        "load_s": load_s,
        "train_lengths": [int(n) for n in train_ds["length"]],
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }

"""`RatioOptimizerMixin` in a plain transformers `Trainer` (OLoRAPlusTrainer): λ from the arguments dataclass,
the base-relative `save_model`, and `hyperparameter_search` over λ and η with optuna."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM, TrainerCallback, TrainingArguments

import oloraplus
from oloraplus.errors import ConfigError, MissingExtraError
from oloraplus.train.mixin import OLoRAPlusTrainer, OLoRAPlusTrainingArguments
from tests.conftest import tiny_llama
from tests.helpers import assert_reproduces_on_untouched_base

LR, RATIO = 1e-2, 4.0


def arguments(tmp_path, **overrides) -> OLoRAPlusTrainingArguments:
    return OLoRAPlusTrainingArguments(**{
        "output_dir": str(tmp_path / "out"), "ratio": RATIO, "learning_rate": LR, "max_steps": 3,
        "per_device_train_batch_size": 2, "logging_steps": 1, "report_to": [], "use_cpu": True,
        "save_strategy": "no", "disable_tqdm": True, "seed": 0, **overrides})


def token_dataset(n: int = 8, length: int = 12) -> Dataset:
    """Fixed-length rows (the default collator stacks them); the first 4 tokens are the unscored prompt."""
    ids = [[(7 * i + j) % 100 + 3 for j in range(length)] for i in range(n)]
    return Dataset.from_dict({"input_ids": ids, "labels": [[-100] * 4 + row[4:] for row in ids]})


class RecordGroups(TrainerCallback):
    """(λ, η, {group: initial lr}) at the start of every training run (every trial of a search)."""

    def __init__(self):
        self.seen = []

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.seen.append((args.ratio, args.learning_rate, {g["name"]: g["initial_lr"] for g in optimizer.param_groups}))


def test_trainer_trains_with_b_at_lambda_eta_and_saves_for_the_untouched_base(tmp_path, one_thread):
    torch.manual_seed(0)
    model = oloraplus.add_adapter(tiny_llama(seed=2), "olora", rank=4, alpha=8)
    record = RecordGroups()
    trainer = OLoRAPlusTrainer(model=model, args=arguments(tmp_path), train_dataset=token_dataset(),
                               callbacks=[record])
    result = trainer.train()
    assert record.seen == [(RATIO, LR, pytest.approx({"A": LR, "B": RATIO * LR}))]
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert len(losses) == 3 and losses[-1] < losses[0] and result.training_loss > 0
    trainer.save_model(str(tmp_path / "adapter"))
    loaded = PeftModel.from_pretrained(tiny_llama(seed=2), tmp_path / "adapter")
    assert_reproduces_on_untouched_base(trainer.model, loaded, rank=8)


def test_hyperparameter_search_over_ratio_and_lr_with_optuna(tmp_path, tiny_llama_dir, one_thread):
    """λ is a field of the arguments, so the search sets it; every trial gets a fresh adapter and its own groups."""
    pytest.importorskip("optuna")
    record = RecordGroups()

    def model_init(trial=None):
        return oloraplus.add_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), "olora", rank=4, alpha=8)

    trainer = OLoRAPlusTrainer(model_init=model_init, args=arguments(tmp_path, max_steps=2),
                               train_dataset=token_dataset(), eval_dataset=token_dataset(4), callbacks=[record])
    best = trainer.hyperparameter_search(
        hp_space=lambda t: {"ratio": t.suggest_float("ratio", 0.5, 16, log=True),
                            "learning_rate": t.suggest_float("learning_rate", 1e-4, 1e-2, log=True)},
        n_trials=2, backend="optuna")
    assert len(record.seen) == 2 and record.seen[0][:2] != record.seen[1][:2]
    for ratio, lr, groups in record.seen:
        assert groups == pytest.approx({"A": lr, "B": ratio * lr})
    assert set(best.hyperparameters) == {"ratio", "learning_rate"} and best.objective > 0


def test_search_without_optuna_names_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else real(name, *a))
    trainer = OLoRAPlusTrainer(model_init=lambda: oloraplus.add_adapter(tiny_llama(), "lora", rank=4),
                               args=arguments(tmp_path))
    with pytest.raises(MissingExtraError) as caught:
        trainer.hyperparameter_search(n_trials=1)
    assert str(caught.value) == 'hyperparameter_search (optuna backend) needs the optuna extra: ' \
                                'pip install "oloraplus[optuna]"'


def test_plain_training_arguments_have_no_ratio(tmp_path):
    """A mixin trainer given HF's own arguments cannot know λ: one line, not a silent λ = 1."""
    model = oloraplus.add_adapter(tiny_llama(), "lora", rank=4)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ConfigError, match="TrainingArguments has no 'ratio' field"):
        OLoRAPlusTrainer(model=model, args=args).create_optimizer()


def test_hf_argument_parser_sees_ratio():
    """A real dataclass field: HfArgumentParser (and TRL's TrlParser) make it a flag."""
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(OLoRAPlusTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", "unused", "--ratio", "8", "--use_cpu", "true", "--report_to", "none"])
    assert args.ratio == 8.0

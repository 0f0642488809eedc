"""--val-size: a validation loss beside the test loss, without changing what is trained or reported."""

from __future__ import annotations

import pytest

from oloraplus.config import TrainConfig
from oloraplus.data.collate import CausalLMCollator
from oloraplus.data.prepare import prepare
from oloraplus.eval.loss import evaluate_loss
from oloraplus.train.recipe import train


def _cfg(model_dir, data, out, **kw) -> TrainConfig:
    return TrainConfig(model=str(model_dir), data=str(data), output=str(out), rank=4, alpha=8, lr=3e-3, max_steps=4,
                       batch_size=4, max_length=64, train_size=24, eval_size=12, logging_steps=2, seed=3,
                       diagnostics_steps=-1, **kw)


def test_validation_loss_is_measured_apart_and_leaves_the_test_numbers_alone(tiny_llama_dir, alpaca_file, tmp_path):
    plain = train(_cfg(tiny_llama_dir, alpaca_file, tmp_path / "plain"))
    cfg = _cfg(tiny_llama_dir, alpaca_file, tmp_path / "val", val_size=10)
    with_val = train(cfg)
    # 60 records hold 24 + 12 + 10: the same train and test examples, so the same training and test loss
    assert with_val.metrics["eval_loss"] == pytest.approx(plain.metrics["eval_loss"], abs=1e-6)
    assert "val_eval_loss" not in plain.metrics and with_val.metrics["val_examples"] == 10
    # independent reference: the returned model scored on the validation split prepare() rebuilds
    prep = prepare(cfg)
    collator = CausalLMCollator(pad_token_id=prep.loaded.tokenizer.pad_token_id)
    reference = evaluate_loss(with_val.model, prep.val_dataset, collator, batch_size=4)
    assert with_val.metrics["val_eval_loss"] == pytest.approx(reference["eval_loss"], abs=1e-6)
    assert with_val.metrics["val_eval_loss"] != pytest.approx(with_val.metrics["eval_loss"], abs=1e-6)


def test_split_seed_fixes_the_split_across_training_seeds(tiny_llama_dir, alpaca_file):
    """Selection seeds and confirmation seeds must share one split, or one seed's validation is another's test."""
    cfgs = [TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), train_size=24, eval_size=12, val_size=10, max_length=64,
                        seed=seed, split_seed=7) for seed in (1, 2)]
    a, b = (prepare(c) for c in cfgs)
    assert a.data_stats == b.data_stats
    assert [r["input_ids"] for r in a.val_dataset] == [r["input_ids"] for r in b.val_dataset]
    assert [r["input_ids"] for r in a.eval_dataset] == [r["input_ids"] for r in b.eval_dataset]

"""End-to-end training on tiny random models: outputs, loss goes down, save/reload, reproducibility."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from oloraplus.config import TrainConfig
from oloraplus.data.collate import CausalLMCollator
from oloraplus.data.prepare import prepare
from oloraplus.eval.loss import evaluate_loss
from oloraplus.train.recipe import train
from tests.helpers import TIMING_KEYS


def tiny_cfg(model_dir, data, out, **kw) -> TrainConfig:
    base = dict(model=str(model_dir), data=str(data), output=str(out), rank=4, alpha=8, lr=3e-3, max_steps=12,
                batch_size=4, max_length=64, train_size=48, eval_size=12, logging_steps=2, seed=3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("method", ["olora", "lora", "pissa", "dora"])
def test_training_reduces_eval_loss_and_writes_the_run(tiny_llama_dir, alpaca_file, tmp_path, method):
    cfg = tiny_cfg(tiny_llama_dir, alpaca_file, tmp_path / "run", method=method, ratio=4.0)
    prep = prepare(cfg)
    collator = CausalLMCollator(pad_token_id=prep.loaded.tokenizer.pad_token_id)
    before = evaluate_loss(prep.loaded.model, prep.eval_dataset, collator, batch_size=4)["eval_loss"]

    result = train(cfg)
    m = result.metrics
    assert m["eval_loss"] < before - 0.05, (before, m["eval_loss"])
    assert m["perplexity"] == pytest.approx(torch.tensor(m["eval_loss"]).exp().item(), rel=1e-6)
    assert m["steps"] == 12 and m["train_tokens"] > 0 and m["tokens_per_s"] > 0
    assert 0 < m["trainable_params"] < m["total_params"]

    out = tmp_path / "run"
    assert {p.name for p in out.iterdir()} >= {"adapter", "metrics.json", "log.jsonl", "config.yaml", "loss.png"}
    assert not (tmp_path / "run.partial").exists()
    assert json.loads((out / "metrics.json").read_text())["eval_loss"] == m["eval_loss"]
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["config"]["method"] == method and resolved["config"]["ratio"] == 4.0
    assert {"torch", "transformers", "peft"} <= set(resolved["versions"]) and "cpu_count" in resolved["hardware"]
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train_logs = [r for r in logs if "loss" in r]
    assert train_logs and all(r["lr_B"] == pytest.approx(4.0 * r["lr_A"]) for r in train_logs)
    assert all(r["grad_norm"] is not None for r in train_logs)
    assert logs[-1]["eval_loss"] == m["eval_loss"]
    diags = [r for r in logs if "diag_subspace_distance" in r]
    if method in ("olora", "pissa"):  # refinement vs exploration is logged when B_0, A_0 exist
        assert diags and 0 < diags[-1]["diag_subspace_distance"] <= 1 and diags[-1]["diag_rel_change_A"] > 0
    else:
        assert not diags


@pytest.mark.parametrize("method", ["olora", "pissa", "lora"])
def test_saved_adapter_on_untouched_base_gives_the_trained_logits(tiny_llama_dir, alpaca_file, tmp_path, method):
    result = train(tiny_cfg(tiny_llama_dir, alpaca_file, tmp_path / "run", method=method, ratio=0.25))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    ids = torch.randint(0, 300, (2, 17))
    result.model.eval()
    with torch.no_grad():
        expected = result.model(input_ids=ids).logits
        got = reloaded(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    # and the adapter really changed the model
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)(input_ids=ids).logits
    assert (plain - expected).abs().max() > 1e-3


def test_gpt2_conv1d_model_trains_and_reloads(tiny_gpt2_dir, alpaca_file, tmp_path):
    result = train(tiny_cfg(tiny_gpt2_dir, alpaca_file, tmp_path / "run", method="olora", max_length=250))
    base = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "run" / "adapter").eval()
    ids = torch.randint(0, 300, (2, 11))
    result.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, result.model(input_ids=ids).logits, atol=1e-5)


def test_same_command_and_seed_give_identical_metrics(tiny_llama_dir, alpaca_file, tmp_path):
    a = train(tiny_cfg(tiny_llama_dir, alpaca_file, tmp_path / "a", ratio=2.0)).metrics
    b = train(tiny_cfg(tiny_llama_dir, alpaca_file, tmp_path / "b", ratio=2.0)).metrics
    strip = lambda m: {k: v for k, v in m.items() if k not in TIMING_KEYS}  # noqa: E731
    assert strip(a) == strip(b)
    c = train(tiny_cfg(tiny_llama_dir, alpaca_file, tmp_path / "c", ratio=2.0, seed=4)).metrics
    assert c["eval_loss"] != a["eval_loss"]


def test_periodic_eval_feeds_the_eval_curve(tiny_llama_dir, alpaca_file, tmp_path):
    train(tiny_cfg(tiny_llama_dir, alpaca_file, tmp_path / "run", eval_steps=4))
    logs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "eval_loss" in r] == [4, 8, 12]


def test_packed_and_padded_training_learn_the_same(tiny_llama_dir, alpaca_file, tmp_path, one_thread):
    """The default (packed rows) and --no-packing draw the same batches: same losses, to float32 summation order."""
    packed = train(tiny_cfg(tiny_llama_dir, alpaca_file, tmp_path / "packed", max_steps=6)).metrics
    padded = train(tiny_cfg(tiny_llama_dir, alpaca_file, tmp_path / "padded", max_steps=6, packing=False)).metrics
    assert packed["packing"] is True and padded["packing"] is False
    assert packed["eval_loss"] == pytest.approx(padded["eval_loss"], rel=1e-5)
    assert packed["train_loss"] == pytest.approx(padded["train_loss"], rel=1e-5)
    assert packed["train_tokens"] == padded["train_tokens"]  # real tokens, counted on the host either way


def test_tokens_per_batch_trains_one_token_budget_group_per_step(tiny_llama_dir, alpaca_file, tmp_path, one_thread):
    from oloraplus.data.budget import token_budget_groups

    cfg = tiny_cfg(tiny_llama_dir, alpaca_file, tmp_path / "run", max_steps=-1, epochs=1, tokens_per_batch=120)
    prep = prepare(cfg)
    groups = token_budget_groups([int(n) for n in prep.train_dataset["length"]], 120, cfg.seed)
    m = train(cfg).metrics
    assert 1 < len(groups) < 48 and m["steps"] == len(groups)  # one group per optimizer step
    assert m["train_tokens"] == sum(prep.train_dataset["length"])  # every example once
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["config"]
    assert saved["tokens_per_batch"] == 120

"""The re-created paper baseline (bench/baseline.py) on tiny random models: padding, optimizer groups, one epoch."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from oloraplus.data.tokenize import IGNORE_INDEX
from tests.conftest import build_tokenizer, tiny_llama

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from baseline import RunSetup, paper_collator, paper_optimizer, run_baseline  # noqa: E402


def test_paper_collator_pads_every_row_to_max_length_and_masks_the_padding():
    tokenizer = build_tokenizer(chat_template=True)
    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    batch = paper_collator(tokenizer, 16)(rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, 16)
    assert batch["attention_mask"].sum(1).tolist() == [3, 2]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, 6, 7] + [IGNORE_INDEX] * 13
    assert batch["input_ids"][1, 2:].eq(tokenizer.pad_token_id).all()


def test_paper_optimizer_puts_A_at_eta_and_B_at_lambda_eta():
    model = get_peft_model(tiny_llama(400), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    groups = paper_optimizer(model, lr=1e-3, ratio=4.0).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert [g["lr"] for g in groups] == [1e-3, 4e-3]
    assert all("lora_A" in names[id(p)] for p in groups[0]["params"])
    assert all("lora_B" in names[id(p)] for p in groups[1]["params"])
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable and len(trainable) == 8


def test_run_baseline_trains_each_example_once_on_padded_rows(tiny_llama_dir, alpaca_file, tmp_path):
    setup = RunSetup(data=str(alpaca_file), model=str(tiny_llama_dir), steps=3, batch_size=4, eval_size=8,
                     max_length=48, rank=4, alpha=8)
    torch.manual_seed(0)
    m = run_baseline(setup, tmp_path)
    assert m["steps"] == 3 and len(m["train_lengths"]) == setup.train_size == 12
    assert m["train_tokens"] == sum(m["train_lengths"])  # real tokens only: each example once
    assert m["processed_tokens"] == 3 * 4 * 48 > m["train_tokens"]
    assert math.isfinite(m["eval_loss"]) and m["eval_tokens"] > 0 and m["tokens_per_s"] > 0

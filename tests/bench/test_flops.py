"""The analytic FLOP count of bench/flops.py against torch's FlopCounterMode on a tiny LoRA llama."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from flops import flop_model, matmul_rate  # noqa: E402

from tests.conftest import tiny_llama  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
R = 4


def tiny_lora_llama() -> torch.nn.Module:
    model = tiny_llama(128, num_hidden_layers=3,
                       attn_implementation="eager")  # attention as plain matmuls, which FlopCounterMode sees
    return get_peft_model(model, LoraConfig(r=R, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_counts_the_model_parameters():
    fm = flop_model(tiny_lora_llama())
    per_layer = 32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 64  # q, o; k, v (2 kv heads of 8); gate, up, down
    assert fm.n_matmul == 3 * per_layer + 128 * 32  # + the (tied) output head
    lora_per_layer = R * ((32 + 32) * 2 + (32 + 16) * 2 + 3 * (32 + 64))
    assert (fm.n_lora, fm.n_layers, fm.d_attn) == (3 * lora_per_layer, 3, 32)


@pytest.mark.parametrize("length", [5, 17])
def test_forward_flops_match_the_flop_counter(length):
    model = tiny_lora_llama()
    ids = torch.randint(0, 128, (2, length))
    with torch.no_grad():
        measured = counted(lambda: model(input_ids=ids))
    assert measured == flop_model(model).forward([length, length])


def test_training_flops_match_the_flop_counter_up_to_the_documented_first_layer_term():
    model = tiny_lora_llama()
    length = 11
    ids = torch.randint(0, 128, (2, length))
    measured = counted(lambda: model(input_ids=ids, labels=ids).loss.backward())
    # layer 0's q/k/v read the frozen embedding: autograd skips their input gradients (base and lora_A)
    first_qkv = sum(2 * length * (out * inp + R * inp) for out, inp in [(32, 32), (16, 32), (16, 32)])
    assert measured == flop_model(model).train([length, length]) - 2 * first_qkv


def test_matmul_rate_is_positive_and_its_best_is_at_least_its_median():
    rate = matmul_rate(n=64, reps=3)
    assert rate["best_flops"] >= rate["median_flops"] > 0

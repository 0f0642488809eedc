"""The λ optimizer as training builds it: `build_optimizer`, which `RatioTrainer.create_optimizer` calls."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainingArguments

from oloraplus.errors import ConfigError
from oloraplus.optim.ratio import build_optimizer, classify, group_lrs
from oloraplus.train.trainer import RatioTrainer
from tests.conftest import tiny_llama
from tests.helpers import group_names


def tiny_peft(use_dora=False):
    model = tiny_llama(64, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1,
                       tie_word_embeddings=False)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=use_dora)
    return get_peft_model(model, cfg)


@pytest.mark.parametrize("ratio", [0.25, 1.0, 16.0])
@pytest.mark.parametrize("use_dora", [False, True])
def test_every_A_at_eta_every_B_at_lambda_eta(ratio, use_dora):
    model = tiny_peft(use_dora)
    optimizer = build_optimizer(model, lr=1e-3, ratio=ratio)
    groups, names = optimizer.param_groups, group_names(model, optimizer)
    by_name = {g["name"]: g for g in groups}
    params = dict(model.named_parameters())
    expected_A = {n for n in params if ".lora_A." in n}
    expected_B = {n for n in params if ".lora_B." in n}
    assert set(names["A"]) == expected_A and len(expected_A) == 2 * 3
    assert set(names["B"]) == expected_B and len(expected_B) == 2 * 3
    assert by_name["A"]["lr"] == pytest.approx(1e-3)
    assert by_name["B"]["lr"] == pytest.approx(ratio * 1e-3)
    # nothing trainable left out, nothing frozen included
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len({id(p) for p in grouped})
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters() if p.requires_grad}
    if use_dora:
        assert names["no_decay"] and all("lora_magnitude_vector" in n for n in names["no_decay"])
        assert by_name["no_decay"]["weight_decay"] == 0.0


def test_the_trainer_trains_with_this_optimizer(tmp_path):
    """RatioTrainer.create_optimizer builds exactly this optimizer, with the TrainingArguments' lr, weight decay
    and Adam settings (and no decay on the DoRA magnitude): what every `train` run steps with."""
    model = tiny_peft(use_dora=True)
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=2e-3, weight_decay=0.1, adam_beta1=0.8,
                             adam_beta2=0.99, adam_epsilon=1e-6, report_to=[], use_cpu=True, save_strategy="no")
    trainer = RatioTrainer(model=model, args=args, ratio=4.0)
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is torch.optim.AdamW and trainer.optimizer is optimizer
    reference = build_optimizer(model, 2e-3, 4.0, 0.1, betas=(0.8, 0.99), eps=1e-6)
    assert group_names(model, optimizer) == group_names(model, reference)
    settings = ("name", "lr", "weight_decay", "betas", "eps")
    assert ([{k: g[k] for k in settings} for g in optimizer.param_groups]
            == [{k: g[k] for k in settings} for g in reference.param_groups])
    assert group_lrs(optimizer) == pytest.approx({"A": 2e-3, "B": 8e-3, "no_decay": 2e-3})
    assert {g["name"]: g["weight_decay"] for g in optimizer.param_groups} == {"A": 0.1, "B": 0.1, "no_decay": 0.0}


def test_classify_markers():
    assert classify("base_model.model.layers.0.q_proj.lora_A.default.weight") == "A"
    assert classify("x.hira_B.default") == "B"
    assert classify("x.ohora_A.default") == "A"
    assert classify("model.norm.weight") == "no_decay"
    assert classify("score.weight") == "other"


def test_scheduler_keeps_the_ratio():
    model = tiny_peft()
    opt = build_optimizer(model, lr=1e-3, ratio=4.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / 10)
    for _ in range(3):
        opt.step()
        sched.step()
    lrs = group_lrs(opt)
    assert lrs["B"] / lrs["A"] == pytest.approx(4.0)
    assert lrs["A"] == pytest.approx(1e-3 * 0.7)


def test_invalid_ratio_rejected():
    with pytest.raises(ConfigError):
        build_optimizer(tiny_peft(), lr=1e-3, ratio=float("nan"))


@pytest.mark.parametrize("ratio", [0.25, 4.0])
def test_the_dora_magnitude_stays_at_eta_where_peft_loraplus_puts_it_at_lambda_eta(ratio):
    """Our choice (optim/ratio.py docstring), checked against PEFT's own LoRA+ optimizer as the reference."""
    from peft.optimizers import create_loraplus_optimizer

    model = tiny_peft(use_dora=True)
    magnitudes = {id(p) for n, p in model.named_parameters() if "lora_magnitude_vector" in n}
    assert len(magnitudes) == 2 * 3
    ours = build_optimizer(model, lr=1e-3, ratio=ratio)
    group = next(g for g in ours.param_groups if {id(p) for p in g["params"]} & magnitudes)
    assert group["name"] == "no_decay" and {id(p) for p in group["params"]} == magnitudes
    assert group["lr"] == pytest.approx(1e-3) and group["weight_decay"] == 0.0
    peft = create_loraplus_optimizer(model, torch.optim.AdamW, lr=1e-3, loraplus_lr_ratio=ratio)
    peft_lrs = [g["lr"] for g in peft.param_groups if {id(p) for p in g["params"]} & magnitudes]
    assert peft_lrs == [pytest.approx(ratio * 1e-3)]  # the other choice, which we do not make


@pytest.mark.parametrize("ratio", [0.25, 4.0])
def test_biases_and_other_trainables_stay_at_eta_biases_without_decay(ratio):
    """Only B moves to λη: trained biases (no decay) and any other trained parameter (here a fully trained lm_head,
    with decay) keep η, whatever λ; what the public API can build, though no CLI method trains them today."""
    model = tiny_llama(64, hidden_size=16, intermediate_size=32, num_attention_heads=2, num_key_value_heads=1,
                       tie_word_embeddings=False, attention_bias=True, mlp_bias=True)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  bias="all", modules_to_save=["lm_head"]))
    lr, decay = 1e-3, 0.1
    optimizer = build_optimizer(peft_model, lr=lr, ratio=ratio, weight_decay=decay)
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert set(map(id, trainable.values())) == set(setting)
    expected = {}
    for name in trainable:
        if ".lora_A." in name:
            expected[name] = (lr, decay)
        elif ".lora_B." in name:
            expected[name] = (ratio * lr, decay)
        elif name.endswith(".bias"):
            expected[name] = (lr, 0.0)  # AdamW's decay would pull a bias to 0: never applied to biases
        else:
            assert "lm_head" in name, name
            expected[name] = (lr, decay)
    biases = [n for n in trainable if n.endswith(".bias")]
    others = [n for n in trainable if "lm_head" in n and not n.endswith(".bias")]
    assert len(biases) >= 2 * 7 and others  # q/k/v/o and gate/up/down biases of both blocks; the head weight
    got = {name: setting[id(p)] for name, p in trainable.items()}
    assert got == pytest.approx(expected)

"""HiRA through PEFT: ΔW = W0 ⊙ (B A) by hand, unchanged at init, save/reload/merge round trip."""

import pytest
import torch
from peft import PeftModel
from peft.tuners.hira import HiraLayer
from transformers.pytorch_utils import Conv1D

from oloraplus.adapters.hira import attach_hira, hira_config
from oloraplus.errors import AdapterError
from oloraplus.optim.ratio import build_optimizer
from tests.helpers import group_names


def out_by_in(module: torch.nn.Module) -> torch.Tensor:
    W = module.weight.detach()
    return W.T if isinstance(module, Conv1D) else W


def hira_layers(model) -> dict[str, HiraLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, HiraLayer)}


def perturb_(peft_model, seed: int = 0) -> None:
    """Stand-in for training: B leaves 0, A moves."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in hira_layers(peft_model).values():
            layer.hira_B["default"].copy_(0.5 * torch.randn(layer.hira_B["default"].shape, generator=g))
            layer.hira_A["default"].add_(0.1 * torch.randn(layer.hira_A["default"].shape, generator=g))


def test_config_carries_the_options():
    config = hira_config(8, ["q_proj", "v_proj"], dropout=0.1)
    assert (config.r, config.target_modules, config.hira_dropout) == (8, {"q_proj", "v_proj"}, 0.1)
    assert config.task_type == "CAUSAL_LM" and config.peft_type == "HIRA" and not config.fan_in_fan_out


@pytest.mark.parametrize("kwargs,message", [
    (dict(rank=0, target_modules=["q_proj"]), r"--rank: must be a positive integer, got 0"),
    (dict(rank=True, target_modules=["q_proj"]), r"--rank: must be a positive integer, got True"),
    (dict(rank=4, target_modules=[]), r"--target-modules \[\]: give at least one module name"),
    (dict(rank=4, target_modules=["q_proj"], dropout=1.0), r"--dropout: must be in \[0, 1\), got 1.0"),
])
def test_bad_options_are_adapter_errors(kwargs, message):
    with pytest.raises(AdapterError, match=message):
        hira_config(**kwargs)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logits_unchanged_at_init(arch, make_model, tokens):
    reference = make_model(arch)(tokens).logits
    peft_model = attach_hira(make_model(arch), rank=4)
    assert all(layer.hira_B["default"].abs().sum() == 0 for layer in hira_layers(peft_model).values())
    assert torch.equal(peft_model(tokens).logits, reference)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_delta_is_W0_hadamard_BA(arch, make_model):
    base = make_model(arch)
    originals = {n: out_by_in(m).clone() for n, m in base.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    peft_model = attach_hira(base, rank=4)
    perturb_(peft_model)
    g = torch.Generator().manual_seed(3)
    layers = hira_layers(peft_model)
    assert layers and all(layer.fan_in_fan_out == (arch == "gpt2") for layer in layers.values())
    for name, layer in layers.items():
        W0 = originals[name.removeprefix("base_model.model.")]
        BA = layer.hira_B["default"] @ layer.hira_A["default"]  # (out, in)
        bias = layer.get_base_layer().bias
        x = torch.randn(2, 5, W0.shape[1], generator=g)
        expected = x @ (W0 + W0 * BA).T + (0 if bias is None else bias)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        layer.merge()
        torch.testing.assert_close(out_by_in(layer.get_base_layer()), W0 + W0 * BA, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_save_reload_and_merge_round_trip(arch, make_model, tokens, tmp_path):
    peft_model = attach_hira(make_model(arch), rank=4)
    perturb_(peft_model)
    peft_model.requires_grad_(False)  # as when reloaded: same matmul kernels
    trained = peft_model(tokens).logits
    assert (trained - make_model(arch)(tokens).logits).abs().max() > 1e-3
    peft_model.save_pretrained(tmp_path)

    reloaded = PeftModel.from_pretrained(make_model(arch), tmp_path)
    assert torch.equal(reloaded(tokens).logits, trained)
    merged = reloaded.merge_and_unload()
    assert not hira_layers(merged)
    torch.testing.assert_close(merged(tokens).logits, trained, rtol=0, atol=1e-5)


def test_lambda_optimizer_finds_hira_factors(make_model):
    peft_model = attach_hira(make_model("llama"), rank=4, target_modules=["q_proj", "v_proj"])
    names = group_names(peft_model, build_optimizer(peft_model, lr=1e-3, ratio=2.0))
    assert len(names["A"]) == len(names["B"]) == 4 and not names["other"]
    assert all(".hira_A." in n for n in names["A"]) and all(".hira_B." in n for n in names["B"])

"""OHoRA as a PEFT method on tiny llama/gpt2: init, parameters, the layer equation, save/reload, merge."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers.pytorch_utils import Conv1D

from oloraplus.adapters.ohora import ohora_factors
from oloraplus.adapters.ohora_peft import OHoRAConfig, OHoRALinear, attach_ohora, load_ohora, ohora_layers
from oloraplus.errors import AdapterError
from oloraplus.optim.ratio import build_optimizer
from tests.helpers import group_names

TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}


def out_by_in(module: torch.nn.Module) -> torch.Tensor:
    W = module.weight.detach()
    return W.T if isinstance(module, Conv1D) else W


def perturb_(peft_model, seed: int = 0) -> None:
    """Stand-in for training: move every A and B away from their initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in ohora_layers(peft_model).values():
            for factors in (layer.ohora_A, layer.ohora_B):
                factors["default"].add_(0.3 * torch.randn(factors["default"].shape, generator=g))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("fold", [True, False])
def test_outputs_unchanged_at_init(arch, fold, make_model, tokens):
    reference = make_model(arch)(tokens).logits
    peft_model = attach_ohora(make_model(arch), TARGETS[arch], scale=1.0, fold=fold)
    logits = peft_model(tokens).logits
    if fold:  # W_res x + s·(A0 ⊗ B0ᵀ) x: equal up to rounding
        torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)
    else:  # W0 x + s·((A0 ⊗ B0ᵀ) x − (A0 ⊗ B0ᵀ) x): the same floats cancel exactly
        assert torch.equal(logits, reference)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_only_A_and_B_train_with_m_plus_n_parameters_per_layer(arch, make_model):
    base = make_model(arch)
    shapes = {name: out_by_in(m).shape for name, m in base.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    peft_model = attach_ohora(base, TARGETS[arch])
    layers = ohora_layers(peft_model)
    assert {n.removeprefix("base_model.model.") for n in layers} == {
        n for n in shapes if n.rsplit(".", 1)[-1] in TARGETS[arch]
    }
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all(".ohora_A." in n or ".ohora_B." in n for n in trainable)
    assert sum(p.numel() for p in trainable.values()) == sum(
        sum(shapes[name.removeprefix("base_model.model.")]) for name in layers
    )
    names = group_names(peft_model, build_optimizer(peft_model, lr=1e-3, ratio=4.0))  # it finds OHoRA's A and B
    assert len(names["A"]) == len(names["B"]) == len(layers) and not names["other"]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_layer_computes_the_materialised_equation(arch, scale, make_model):
    """y = W0 x + b + s·(A ⊗ Bᵀ − A0 ⊗ B0ᵀ) x with torch.kron; W_res = W0 − s·A0 ⊗ B0ᵀ; A0, B0 from the out×in W0."""
    base = make_model(arch)
    originals = {n: out_by_in(m).clone() for n, m in base.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))}
    peft_model = attach_ohora(base, TARGETS[arch], scale=scale)
    perturb_(peft_model)
    g = torch.Generator().manual_seed(2)
    for name, layer in ohora_layers(peft_model).items():
        W0 = originals[name.removeprefix("base_model.model.")]
        A0, B0 = layer.ohora_init_A["default"], layer.ohora_init_B["default"]
        init = ohora_factors(W0)
        torch.testing.assert_close(A0, init.A_high, rtol=0, atol=0)
        torch.testing.assert_close(B0, init.B_high, rtol=0, atol=0)
        K0 = torch.kron(A0, B0.T.contiguous())
        torch.testing.assert_close(out_by_in(layer.get_base_layer()), W0 - scale * K0, rtol=0, atol=1e-6)
        x = torch.randn(3, 5, W0.shape[1], generator=g)
        K = torch.kron(layer.ohora_A["default"], layer.ohora_B["default"].T.contiguous())
        bias = layer.get_base_layer().bias
        expected = x @ (W0 + scale * (K - K0)).T + (0 if bias is None else bias)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("fold", [True, False])
def test_save_then_reload_onto_untouched_base_gives_identical_logits(arch, fold, make_model, tokens, tmp_path):
    peft_model = attach_ohora(make_model(arch), TARGETS[arch], fold=fold)
    perturb_(peft_model)
    peft_model.requires_grad_(False)  # as when reloaded: matmul takes another kernel when an input needs grad
    trained = peft_model(tokens).logits
    peft_model.save_pretrained(tmp_path)

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "OHORA" and config["scale"] == 1.0
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    assert {k.rsplit(".", 1)[1] for k in keys} == {"ohora_A", "ohora_B", "ohora_init_A", "ohora_init_B"}

    for loader in (PeftModel.from_pretrained, load_ohora):
        reloaded = loader(make_model(arch), tmp_path)  # a fresh base: W0, never shifted
        logits = reloaded(tokens).logits
        if fold:
            torch.testing.assert_close(logits, trained, rtol=0, atol=1e-5)
        else:
            assert torch.equal(logits, trained)
        assert not any(p.requires_grad for p in reloaded.parameters())


def test_reloaded_adapter_can_keep_training(make_model, tokens, tmp_path):
    peft_model = attach_ohora(make_model("llama"), TARGETS["llama"])
    perturb_(peft_model)
    peft_model.save_pretrained(tmp_path)
    reloaded = load_ohora(make_model("llama"), tmp_path, is_trainable=True)
    reloaded(tokens, labels=tokens).loss.backward()
    grads = {n: p.grad for n, p in reloaded.named_parameters() if p.grad is not None}
    assert grads and all(".ohora_A." in n or ".ohora_B." in n for n in grads)
    assert all(g.abs().sum() > 0 for g in grads.values())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("fold", [True, False])
def test_merge_and_unload_gives_a_plain_model_with_identical_logits(arch, fold, make_model, tokens):
    peft_model = attach_ohora(make_model(arch), TARGETS[arch], fold=fold)
    perturb_(peft_model)
    trained = peft_model(tokens).logits
    merged = peft_model.merge_and_unload()
    assert not any(isinstance(m, OHoRALinear) for m in merged.modules())
    assert not any("ohora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(tokens).logits, trained, rtol=0, atol=1e-5)


def test_merge_unmerge_and_disable_restore_the_right_model(make_model, tokens):
    reference = make_model("gpt2")(tokens).logits
    peft_model = attach_ohora(make_model("gpt2"), TARGETS["gpt2"])
    perturb_(peft_model)
    trained = peft_model(tokens).logits
    peft_model.merge_adapter()
    torch.testing.assert_close(peft_model(tokens).logits, trained, rtol=0, atol=1e-5)
    peft_model.unmerge_adapter()
    torch.testing.assert_close(peft_model(tokens).logits, trained, rtol=0, atol=1e-5)
    with peft_model.disable_adapter():  # the folded base is W_res; disabling must give back W0
        torch.testing.assert_close(peft_model(tokens).logits, reference, rtol=0, atol=1e-5)
    assert (trained - reference).abs().max() > 1e-2


def test_unknown_target_module_is_an_adapter_error(make_model):
    with pytest.raises(AdapterError, match=r"--target-modules: 'nope' matches no linear layer"):
        attach_ohora(make_model("llama"), ["nope"])


def test_default_targets_are_every_block_linear(make_model):
    layers = ohora_layers(attach_ohora(make_model("llama"), None))
    assert {n.rsplit(".", 1)[-1] for n in layers} == set(TARGETS["llama"]) and len(layers) == 14


@pytest.mark.parametrize("scale", [0, float("nan"), True])
def test_bad_scale_is_an_adapter_error(scale):
    with pytest.raises(AdapterError, match="OHoRA scale"):
        OHoRAConfig(target_modules=["q_proj"], scale=scale)


def test_plain_get_peft_model_on_an_embedding_is_an_adapter_error_naming_the_layer(make_model):
    config = OHoRAConfig(task_type="CAUSAL_LM", target_modules=["embed_tokens"])
    with pytest.raises(AdapterError, match=r"layer 'model.embed_tokens': is a Embedding; OHoRA adapts only"):
        get_peft_model(make_model("llama"), config)


def test_load_ohora_refuses_what_is_not_an_ohora_adapter(make_model, tmp_path):
    with pytest.raises(AdapterError, match="no adapter_config.json"):
        load_ohora(make_model("llama"), tmp_path)
    lora = get_peft_model(make_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path)
    with pytest.raises(AdapterError, match=r"adapter_config.json: peft_type is LORA, not OHORA"):
        load_ohora(make_model("llama"), tmp_path)

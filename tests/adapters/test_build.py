import copy

import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from oloraplus.adapters.build import AdapterSpec, attach_adapter

METHODS = ("lora", "olora", "pissa", "dora")  # the PEFT-LoRA family; HiRA and OHoRA have their own tests
from oloraplus.errors import AdapterError


def _lora_layers(peft_model) -> dict[str, LoraLayer]:
    return {n: m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_attach_keeps_the_logits(arch, method, make_model, tokens):
    model = make_model(arch)
    with torch.no_grad():
        reference = model(tokens).logits
    original = copy.deepcopy(model.state_dict())
    peft_model, initial = attach_adapter(model, AdapterSpec(method, rank=4, alpha=8.0))
    with torch.no_grad():
        logits = peft_model(tokens).logits
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-5)
    layers = _lora_layers(peft_model)
    assert len(layers) == (8 if arch == "gpt2" else 14)
    base_changed = any(
        not torch.equal(layer.get_base_layer().weight, original[name.removeprefix("base_model.model.") + ".weight"])
        for name, layer in layers.items()
    )
    if method in ("olora", "pissa"):
        assert set(initial) == set(layers) and base_changed
        for name, layer in layers.items():
            assert torch.equal(initial[name].A, layer.lora_A["default"].weight)
            assert torch.equal(initial[name].B, layer.lora_B["default"].weight)
            assert initial[name].B.abs().sum() > 0
    else:
        assert initial == {} and not base_changed
    assert all(isinstance(layer.lora_dropout["default"], nn.Identity) for layer in layers.values())
    assert all(bool(layer.use_dora["default"]) == (method == "dora") for layer in layers.values())


def test_same_seed_gives_same_adapter_and_leaves_the_rng_stream(make_model):
    def lora_A(draws_before: int, seed: int) -> torch.Tensor:
        model = make_model("llama")
        torch.manual_seed(seed)
        torch.rand(draws_before)  # whatever ran between seeding and building must not matter
        state_before = torch.get_rng_state()
        peft_model, _ = attach_adapter(model, AdapterSpec("lora", rank=4))
        assert torch.equal(torch.get_rng_state(), state_before)  # the training stream is method-independent
        return torch.cat([m.lora_A["default"].weight.flatten() for m in _lora_layers(peft_model).values()])

    first = lora_A(0, seed=7)
    assert torch.equal(first, lora_A(5, seed=7))
    assert not torch.equal(first, lora_A(0, seed=8))


def test_unknown_method_lists_choices(make_model):
    with pytest.raises(AdapterError, match="--method 'qlora': unknown; choose one of lora, olora, pissa, dora"):
        attach_adapter(make_model("llama"), AdapterSpec("qlora"))


@pytest.mark.parametrize("rank", [0, -2])
def test_rank_must_be_positive(rank, make_model):
    with pytest.raises(AdapterError, match=f"--rank: must be a positive integer, got {rank}"):
        attach_adapter(make_model("llama"), AdapterSpec("lora", rank=rank))


@pytest.mark.parametrize("method", METHODS)
def test_rank_above_a_layer_dimension_names_the_layer(method, make_model):
    # llama k_proj is 16×32 (2 kv heads × head_dim 8): rank 20 fits q_proj (32×32) but not k_proj
    message = r"--rank 20: exceeds min\(out, in\)=16 of layer 'model.layers.0.self_attn.k_proj' \(out×in 16×32\)"
    with pytest.raises(AdapterError, match=message):
        attach_adapter(make_model("llama"), AdapterSpec(method, rank=20))


def test_rank_check_uses_conv1d_out_by_in(make_model):
    with pytest.raises(AdapterError, match=r"layer 'transformer.h.0.attn.c_attn' \(out×in 96×32\)"):
        attach_adapter(make_model("gpt2"), AdapterSpec("olora", rank=33))


def test_target_modules_that_match_nothing(make_model):
    with pytest.raises(AdapterError, match="--target-modules: 'foo' matches no linear layer; available: q_proj"):
        attach_adapter(make_model("llama"), AdapterSpec("olora", target_modules=["q_proj", "foo"]))


def test_explicit_targets_are_used(make_model):
    peft_model, initial = attach_adapter(make_model("llama"), AdapterSpec("olora", rank=4, target_modules=["v_proj"]))
    assert sorted(initial) == [f"base_model.model.model.layers.{i}.self_attn.v_proj" for i in range(2)]


@pytest.mark.parametrize("field,value,flag", [("alpha", 0.0, "--alpha"), ("dropout", 1.0, "--dropout")])
def test_alpha_and_dropout_are_checked(field, value, flag, make_model):
    spec = AdapterSpec("lora", **{field: value})
    with pytest.raises(AdapterError, match=flag):
        attach_adapter(make_model("llama"), spec)


def test_ohora_scale_is_alpha_over_rank_as_the_alpha_help_says(make_model):
    """--alpha 8 --rank 4 → s = 2: the layer equals W0 x + s·(A ⊗ Bᵀ − A0 ⊗ B0ᵀ) x materialised with torch.kron."""
    from oloraplus.adapters.ohora_peft import ohora_layers
    from oloraplus.config import TrainConfig

    help_text = next(f for f in TrainConfig.__dataclass_fields__.values() if f.name == "alpha").metadata["help"]
    assert "s = α/r" in help_text and "OHoRA too" in help_text
    base = make_model("llama")
    W0 = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    peft_model, _ = attach_adapter(base, AdapterSpec("ohora", rank=4, alpha=8.0, target_modules=["q_proj"]))
    layer = ohora_layers(peft_model)["base_model.model.model.layers.0.self_attn.q_proj"]
    with torch.no_grad():
        layer.ohora_A["default"].add_(0.5)  # stand-in for training
        A, B = layer.ohora_A["default"], layer.ohora_B["default"]
        A0, B0 = layer.ohora_init_A["default"], layer.ohora_init_B["default"]
        x = torch.randn(3, W0.shape[1], generator=torch.Generator().manual_seed(0))
        expected = x @ (W0 + 2.0 * (torch.kron(A, B.T.contiguous()) - torch.kron(A0, B0.T.contiguous()))).T
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from oloraplus.adapters.build import AdapterSpec, attach_adapter

METHODS = ("lora", "olora", "pissa", "dora")  # the PEFT-LoRA family; HiRA and OHoRA have their own tests
from oloraplus.adapters.export import load_adapter, load_metadata, save_adapter
from oloraplus.errors import AdapterError

RANK, ALPHA = 4, 8.0


def _train(peft_model, tokens: torch.Tensor, steps: int = 3) -> None:
    """A few AdamW steps on next-token loss: moves every trainable factor away from its init."""
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(steps):
        peft_model(tokens, labels=tokens).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()


def _trained(arch, method, make_model, tokens):
    model = make_model(arch)
    untouched = copy.deepcopy(model)
    peft_model, initial = attach_adapter(model, AdapterSpec(method, rank=RANK, alpha=ALPHA))
    _train(peft_model, tokens)
    return untouched, peft_model, initial


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_saved_adapter_reproduces_the_trained_model_on_the_untouched_base(arch, method, make_model, tokens, tmp_path):
    untouched, peft_model, initial = _trained(arch, method, make_model, tokens)
    with torch.no_grad():
        base_logits = untouched(tokens).logits
        trained_logits = peft_model(tokens).logits
    assert (trained_logits - base_logits).abs().max() > 1e-2  # training moved the model: the check can fail
    in_memory = {k: v.clone() for k, v in peft_model.state_dict().items()}

    save_adapter(peft_model, tmp_path / "adapter", initial, extra_metadata={"method": method, "rank": RANK})

    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "oloraplus_adapter.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".tmp")) for name in files)
    assert load_metadata(tmp_path / "adapter") == {"method": method, "rank": RANK}
    for key, value in peft_model.state_dict().items():  # saving left the in-memory model untouched
        assert torch.equal(value, in_memory[key]), key

    loaded = load_adapter(untouched, tmp_path / "adapter")
    with torch.no_grad():
        loaded_logits = loaded(tokens).logits
    torch.testing.assert_close(loaded_logits, trained_logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["olora", "pissa"])
def test_base_modifying_adapter_is_saved_as_rank_2r_lora(method, make_model, tokens, tmp_path):
    untouched, peft_model, initial = _trained("llama", method, make_model, tokens)
    save_adapter(peft_model, tmp_path, initial)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["init_lora_weights"]) == (2 * RANK, 2 * ALPHA, True)
    # the saved factors materialise ΔW = merged trained weight − original W (independent of PEFT loading)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    merged = peft_model.merge_and_unload()
    name = "model.layers.1.mlp.down_proj"
    A = saved[f"base_model.model.{name}.lora_A.weight"]
    B = saved[f"base_model.model.{name}.lora_B.weight"]
    assert A.shape == (2 * RANK, 64) and B.shape == (32, 2 * RANK)
    delta = merged.get_submodule(name).weight - untouched.get_submodule(name).weight
    torch.testing.assert_close((ALPHA / RANK) * B @ A, delta.detach(), rtol=0, atol=1e-5)


def test_base_modifying_adapter_needs_its_initial_factors(make_model, tmp_path):
    peft_model, _ = attach_adapter(make_model("llama"), AdapterSpec("olora", rank=RANK))
    with pytest.raises(AdapterError, match="needs the initial factors returned by attach_adapter"):
        save_adapter(peft_model, tmp_path, {})


def test_initial_factors_for_a_plain_lora_are_refused(make_model, tmp_path):
    peft_model, _ = attach_adapter(make_model("llama"), AdapterSpec("lora", rank=RANK))
    _, olora_initial = attach_adapter(make_model("llama"), AdapterSpec("olora", rank=RANK))
    with pytest.raises(AdapterError, match="did not modify the base"):
        save_adapter(peft_model, tmp_path, olora_initial)


def test_load_adapter_from_a_non_adapter_directory(make_model, tmp_path):
    with pytest.raises(AdapterError, match="not an adapter directory"):
        load_adapter(make_model("llama"), tmp_path)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_alpha_and_rank_patterns_keep_each_layers_scale(use_rslora, make_model, tokens, tmp_path):
    """OLoRA with per-layer α and r (and rsLoRA's s = α/√r): the export on the untouched base gives the trained
    logits. The old export doubled the α pattern under rsLoRA (×√2 is right): 0.108 off here."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    from oloraplus.adapters.olora import apply_olora_

    model = make_model("llama")
    untouched = copy.deepcopy(model)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, use_rslora=use_rslora, alpha_pattern={"v_proj": 3.0},
                        rank_pattern={"down_proj": 2}, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    layers = {n.rsplit(".", 1)[-1]: m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    scales = {name: layer.scaling["default"] for name, layer in layers.items()}
    root = (lambda r: r**0.5) if use_rslora else (lambda r: r)
    assert scales == {"q_proj": ALPHA / root(RANK), "v_proj": 3.0 / root(RANK), "down_proj": ALPHA / root(2)}
    initial = apply_olora_(peft_model)
    _train(peft_model, tokens)
    with torch.no_grad():
        trained = peft_model(tokens).logits
    save_adapter(peft_model, tmp_path, initial)
    with torch.no_grad():
        loaded = load_adapter(untouched, tmp_path)(tokens).logits
    torch.testing.assert_close(loaded, trained, rtol=0, atol=1e-5)

"""Reading adapters: factors and scales agree with PEFT's own layers; every unusable input is refused by name."""

import copy
import json

import pytest
import torch
from compose_helpers import make_adapter
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from oloraplus.adapters.adapter_dir import read_adapter
from oloraplus.errors import AdapterError


@pytest.fixture
def adapter_dir(llama, tmp_path):
    make_adapter(llama, tmp_path / "a", r=3, alpha=7, seed=1, use_rslora=True, alpha_pattern={"v_proj": 2})
    return tmp_path / "a"


def _edit_config(path, **changes):
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps(config | changes))


def test_factors_and_scales_match_peft(llama, adapter_dir):
    adapter = read_adapter(adapter_dir)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(llama.model), adapter_dir)
    layers = {n: m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    assert set(adapter.modules) == set(layers) and len(layers) == 14
    for name, factors in adapter.modules.items():
        torch.testing.assert_close(factors.A, layers[name].lora_A["default"].weight.detach(), atol=0, rtol=0)
        torch.testing.assert_close(factors.B, layers[name].lora_B["default"].weight.detach(), atol=0, rtol=0)
        assert factors.s == pytest.approx(layers[name].scaling["default"], rel=1e-12)
    assert {round(f.s, 6) for f in adapter.modules.values()} == {round(7 / 3**0.5, 6), round(2 / 3**0.5, 6)}
    assert adapter.fingerprint == llama.fingerprint and adapter.method == "lora" and adapter.name == "a"


def test_accepts_run_directory(llama, tmp_path):
    make_adapter(llama, tmp_path / "run1" / "adapter", r=2, alpha=2, seed=1)
    adapter = read_adapter(tmp_path / "run1")
    assert adapter.path == tmp_path / "run1" / "adapter" and adapter.name == "run1"


def test_refuses_missing_paths_and_files(adapter_dir, tmp_path):
    with pytest.raises(AdapterError, match=r"nowhere: not found"):
        read_adapter(tmp_path / "nowhere")
    (tmp_path / "run" / "adapter").mkdir(parents=True)
    with pytest.raises(AdapterError, match=r"run/adapter/adapter_config.json: missing"):
        read_adapter(tmp_path / "run")
    (adapter_dir / "adapter_model.safetensors").rename(adapter_dir / "moved")
    with pytest.raises(AdapterError, match=r"a/adapter_model.safetensors: missing"):
        read_adapter(adapter_dir)
    (adapter_dir / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(AdapterError, match=r"adapter_model.bin: pickle weights are not loaded"):
        read_adapter(adapter_dir)
    (adapter_dir / "adapter_config.json").unlink()
    with pytest.raises(AdapterError, match=r"a/adapter_config.json: missing \(expected an adapter directory"):
        read_adapter(adapter_dir)


def test_refuses_truncated_safetensors(adapter_dir):
    weights = adapter_dir / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors: truncated or corrupt safetensors file"):
        read_adapter(adapter_dir)


def test_refuses_garbage_safetensors(adapter_dir):
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"\x00garbage, not a tensor file" * 10)
    with pytest.raises(AdapterError, match=r"adapter_model.safetensors: truncated or corrupt safetensors file"):
        read_adapter(adapter_dir)


def test_refuses_tampered_tensors(adapter_dir):
    weights = adapter_dir / "adapter_model.safetensors"
    tensors = load_file(weights)
    lone_a = {k: v for k, v in tensors.items() if "layers.0.self_attn.q_proj.lora_B" not in k}
    save_file(lone_a, weights)
    with pytest.raises(AdapterError, match=r"layers.0.self_attn.q_proj: lora_B.weight is missing"):
        read_adapter(adapter_dir)
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    save_file(tensors | {key: torch.full_like(tensors[key], float("nan"))}, weights)
    with pytest.raises(AdapterError, match=r"non-finite values"):
        read_adapter(adapter_dir)


def test_refuses_bad_config(adapter_dir):
    (adapter_dir / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match=r"a/adapter_config.json: not valid JSON"):
        read_adapter(adapter_dir)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"peft_type": "IA3"}, r"peft_type 'IA3' is not supported, only LORA"),
        ({"use_dora": True}, r"use_dora: DoRA \(use_dora\) rescales W"),
        ({"modules_to_save": ["lm_head"]}, r"modules_to_save: modules_to_save stores full module copies"),
        ({"bias": "lora_only"}, r"bias='lora_only' trains base biases"),
        ({"init_lora_weights": "olora"}, r"init_lora_weights='olora' changed the base weight.*export .* base-relative"),
        ({"r": 5}, r"mlp.down_proj: tensors have rank 3 but adapter_config.json says r=5"),
        ({"lora_alpha": 0}, r"lora_alpha must be a positive number"),
    ],
)
def test_refuses_unsupported_config(adapter_dir, changes, message):
    _edit_config(adapter_dir, **changes)
    with pytest.raises(AdapterError, match=message):
        read_adapter(adapter_dir)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(use_dora=True), r"use_dora: DoRA"),
        (dict(targets=["embed_tokens", "q_proj"]), r"lora_embedding_A' is LoRA on an embedding layer"),
    ],
)
def test_refuses_peft_made_unsupported_adapters(llama, tmp_path, kwargs, message):
    make_adapter(llama, tmp_path / "x", r=2, alpha=2, seed=1, **kwargs)
    with pytest.raises(AdapterError, match=message):
        read_adapter(tmp_path / "x")


def test_refuses_dora_tensors_even_if_config_hides_them(llama, tmp_path):
    make_adapter(llama, tmp_path / "x", r=2, alpha=2, seed=1, use_dora=True)
    _edit_config(tmp_path / "x", use_dora=False)
    with pytest.raises(AdapterError, match=r"lora_magnitude_vector' is a DoRA magnitude vector"):
        read_adapter(tmp_path / "x")

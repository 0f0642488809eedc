"""The summed adapter, loaded by PEFT onto the untouched base, equals the base with Σ w_i ΔW_i added by hand."""

import copy
import json

import pytest
import torch
from compose_helpers import build_llama, hand_merged, logits, make_adapter
from peft import PeftModel

from oloraplus.adapters.adapter_dir import read_adapter
from oloraplus.compose.sum import sum_adapters, write_adapter
from oloraplus.errors import AdapterError


def _load_composed(base, adapter_dir):
    return PeftModel.from_pretrained(copy.deepcopy(base.model), adapter_dir).eval()


def test_llama_sum_of_three_equals_hand_merged(llama, tmp_path):
    specs = [dict(r=4, alpha=8, seed=1), dict(r=2, alpha=16, seed=2, use_rslora=True), dict(r=6, alpha=3, seed=3)]
    deltas = [make_adapter(llama, tmp_path / f"a{i}", **spec) for i, spec in enumerate(specs)]
    weights = [1.0, -0.5, 2.0]
    config, tensors = sum_adapters([tmp_path / f"a{i}" for i in range(3)], weights)
    write_adapter(config, tensors, tmp_path / "sum")

    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (12, 12, False)  # rank Σ r_i, s = 1
    composed = logits(_load_composed(llama, tmp_path / "sum"))
    expected = logits(hand_merged(llama, deltas, weights))
    assert (expected - logits(llama.model)).abs().max() > 1e-2  # the deltas matter
    torch.testing.assert_close(composed, expected, atol=1e-5, rtol=0)


def test_gpt2_conv1d_sum_equals_hand_merged(gpt2, tmp_path):
    deltas = [
        make_adapter(gpt2, tmp_path / "a", r=3, alpha=6, seed=4),
        make_adapter(gpt2, tmp_path / "b", r=5, alpha=20, seed=5),
    ]
    config, tensors = sum_adapters([tmp_path / "a", tmp_path / "b"], None)  # naive sum: weights 1
    write_adapter(config, tensors, tmp_path / "sum")

    assert config["fan_in_fan_out"] is True
    composed = logits(_load_composed(gpt2, tmp_path / "sum"))
    expected = logits(hand_merged(gpt2, deltas, [1.0, 1.0]))
    assert (expected - logits(gpt2.model)).abs().max() > 1e-2
    torch.testing.assert_close(composed, expected, atol=1e-5, rtol=0)


def test_rank_and_alpha_patterns_give_per_module_ranks(llama, tmp_path):
    deltas = [
        make_adapter(
            llama, tmp_path / "a", r=2, alpha=4, seed=6, rank_pattern={"q_proj": 6}, alpha_pattern={"v_proj": 9}
        ),
        make_adapter(llama, tmp_path / "b", r=3, alpha=5, seed=7),
    ]
    config, tensors = sum_adapters([tmp_path / "a", tmp_path / "b"], [0.7, 1.3])
    write_adapter(config, tensors, tmp_path / "sum")

    assert config["r"] == 5
    assert config["rank_pattern"] == {"model.layers.0.self_attn.q_proj": 9, "model.layers.1.self_attn.q_proj": 9}
    assert config["alpha_pattern"] == config["rank_pattern"]
    composed = logits(_load_composed(llama, tmp_path / "sum"))
    torch.testing.assert_close(composed, logits(hand_merged(llama, deltas, [0.7, 1.3])), atol=1e-5, rtol=0)


def test_write_adapter_is_atomic_and_refuses_non_empty_output(llama, tmp_path):
    make_adapter(llama, tmp_path / "a", r=2, alpha=2, seed=8)
    config, tensors = sum_adapters([tmp_path / "a"], [2.0])
    (tmp_path / "empty").mkdir()
    write_adapter(config, tensors, tmp_path / "empty", meta={"base_fingerprint": "x"})
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "oloraplus_adapter.json",
    ]
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    with pytest.raises(AdapterError, match=r"taken: already exists and is not empty"):
        write_adapter(config, tensors, tmp_path / "taken")
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temp dirs left behind


def test_refuses_different_fingerprints(llama, tmp_path):
    make_adapter(llama, tmp_path / "a", r=2, alpha=2, seed=1)
    make_adapter(llama, tmp_path / "b", r=2, alpha=2, seed=2)
    meta = json.loads((tmp_path / "b" / "oloraplus_adapter.json").read_text())
    meta["base_fingerprint"] = "0" * 32
    (tmp_path / "b" / "oloraplus_adapter.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterError, match=r"different base fingerprints .*trained on different base models"):
        sum_adapters([tmp_path / "a", tmp_path / "b"])


def test_refuses_different_target_modules(llama, tmp_path):
    make_adapter(llama, tmp_path / "a", r=2, alpha=2, seed=1, targets=["q_proj", "v_proj"])
    make_adapter(llama, tmp_path / "b", r=2, alpha=2, seed=2, targets=["q_proj"])
    with pytest.raises(AdapterError, match=r"different target modules \(.*v_proj only in .*a\)"):
        sum_adapters([tmp_path / "a", tmp_path / "b"])


def test_refuses_different_shapes(llama, tmp_path):
    wider = build_llama(intermediate_size=48)  # same module names, other mlp shapes
    make_adapter(llama, tmp_path / "a", r=2, alpha=2, seed=1, write_meta=False)
    make_adapter(wider, tmp_path / "b", r=2, alpha=2, seed=2, write_meta=False)
    message = r"different shapes for model\.layers\.0\.mlp\.down_proj \(\(32, 64\) vs \(32, 48\)\)"
    with pytest.raises(AdapterError, match=message):
        sum_adapters([tmp_path / "a", tmp_path / "b"])


def test_refuses_different_fan_in_fan_out(gpt2, tmp_path):
    make_adapter(gpt2, tmp_path / "a", r=2, alpha=2, seed=1)
    make_adapter(gpt2, tmp_path / "b", r=2, alpha=2, seed=2)
    config = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps(config | {"fan_in_fan_out": False}))
    with pytest.raises(AdapterError, match=r"different fan_in_fan_out"):
        sum_adapters([tmp_path / "a", tmp_path / "b"])


def test_refuses_bad_weights(llama, tmp_path):
    make_adapter(llama, tmp_path / "a", r=2, alpha=2, seed=1)
    adapters = [read_adapter(tmp_path / "a")] * 2
    with pytest.raises(AdapterError, match=r"3 weights for 2 adapters"):
        sum_adapters(adapters, [1.0, 1.0, 1.0])
    with pytest.raises(AdapterError, match=r"weights must be finite"):
        sum_adapters(adapters, [1.0, float("nan")])
    with pytest.raises(AdapterError, match=r"no adapters given"):
        sum_adapters([], None)

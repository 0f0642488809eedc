"""Every --method trains, saves, reloads onto the untouched base and merges with identical logits."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from oloraplus.adapters.export import load_adapter
from oloraplus.cli.main import main
from oloraplus.config import TrainConfig
from oloraplus.train.recipe import train


@pytest.mark.parametrize("method", ["ohora", "hira", "olora"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_train_reload_merge(method, arch, tiny_llama_dir, tiny_gpt2_dir, alpaca_file, tmp_path):
    model_dir = tiny_llama_dir if arch == "llama" else tiny_gpt2_dir
    cfg = TrainConfig(model=str(model_dir), data=str(alpaca_file), output=str(tmp_path / "run"), method=method,
                      rank=4, alpha=8, lr=3e-3, max_steps=4, batch_size=4, max_length=250, train_size=24,
                      eval_size=8, ratio=2.0)
    result = train(cfg)
    assert result.metrics["trainable_params"] > 0
    ids = torch.randint(0, 300, (2, 13))
    result.model.eval()
    with torch.no_grad():
        trained = result.model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        plain = base(input_ids=ids).logits
        reloaded = load_adapter(base, tmp_path / "run" / "adapter")(input_ids=ids).logits
    assert (trained - plain).abs().max() > 1e-4  # training changed the model
    assert torch.allclose(reloaded, trained, atol=1e-5), (reloaded - trained).abs().max()

    assert main(["merge", str(tmp_path / "run"), "--output", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, trained, atol=1e-4)
    assert main(["merge", str(tmp_path / "run"), "--output", str(tmp_path / "merged")]) == 2  # never overwrite


@pytest.mark.parametrize("ohora_init", ["ranked", "paper"])
def test_ohora_trains_m_plus_n_parameters_per_layer(ohora_init, tiny_llama_dir, alpaca_file, tmp_path):
    cfg = TrainConfig(model=str(tiny_llama_dir), data=str(alpaca_file), output=str(tmp_path / "run"),
                      method="ohora", max_steps=1, batch_size=2, max_length=64, train_size=8, eval_size=4,
                      ohora_init=ohora_init)
    model = train(cfg).model
    saved = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert saved["ohora_init"] == ohora_init  # --ohora-init reaches the adapter and is saved with it
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    expected = sum(m.out_features + m.in_features for name, m in base.named_modules()
                   if isinstance(m, torch.nn.Linear) and name.startswith("model.layers"))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected

"""--quantize on the tiny random Llama, loaded 4-/8-bit through `models.load_model` (bitsandbytes on the CPU).

Every method trains on a quantized base; adapters stay float32; OLoRA/PiSSA/OHoRA start from the dequantized weight
and re-quantize the residual (checked against a full QR / SVD / Kronecker product and bitsandbytes' own quantizer);
the saved adapter reproduces the trained logits on the same quantized base; `export --format merged` merges into the
unquantized base.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from oloraplus.adapters import registry
from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.adapters.export import load_adapter
from oloraplus.adapters.ohora import kron_materialised, ohora_factors
from oloraplus.adapters.olora import olora_factors_full_qr
from oloraplus.adapters.quantized import requantization_errors
from oloraplus.cli.main import main
from oloraplus.config import TrainConfig
from oloraplus.models import load_model
from oloraplus.train.recipe import train

bnb = pytest.importorskip("bitsandbytes")  # the [quantize] extra; scripts/setup.sh installs it
SHIFTING = ("olora", "pissa", "ohora")  # the methods whose init re-quantizes the base
IDS = torch.randint(3, 300, (2, 11), generator=torch.Generator().manual_seed(3))
# Reloading on the same quantized base rebuilds the trained model bit for bit (the same deterministic quantizer on
# the same float32 numbers); the only slack is the order of a rank-2r vs rank-r sum (the zeroed −B0 half).
REPRODUCE_ATOL = 1e-5


def quantized(model_dir, quantize: str = "nf4"):
    return load_model(str(model_dir), device="cpu", quantize=quantize).model


def logits(model, ids=IDS) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def run_config(model_dir, data, out, method: str, quantize: str = "nf4", **extra) -> TrainConfig:
    return TrainConfig(model=str(model_dir), data=str(data), output=str(out), method=method, quantize=quantize,
                       rank=4, alpha=8, lr=5e-3, max_steps=2, batch_size=4, max_length=64, train_size=8, eval_size=4,
                       logging_steps=1, **extra)


def dequantize(layer) -> torch.Tensor:
    """bitsandbytes' own dequantization (not PEFT's helper, which the code under test uses)."""
    return bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()


def requantized(W: torch.Tensor, like) -> torch.Tensor:
    """deq(Q(W)) in the format of the quantized parameter `like`, by bitsandbytes' functional API."""
    q, state = bnb.functional.quantize_4bit(W.contiguous(), blocksize=like.blocksize, quant_type=like.quant_type,
                                            compress_statistics=like.compress_statistics)
    return bnb.functional.dequantize_4bit(q, state).float()


@pytest.mark.parametrize("method", registry.names())
def test_every_method_trains_on_nf4_and_its_adapter_reproduces_the_trained_logits(
        method, tiny_llama_dir, alpaca_file, tmp_path):
    result = train(run_config(tiny_llama_dir, alpaca_file, tmp_path / "run", method))
    model, metrics = result.model, result.metrics
    # the 7 linear layers of each block stay 4-bit through attach and training
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 14
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)  # so is AdamW's state
    assert metrics["quantize"] == "nf4" and metrics["requant_layers"] == (14 if method in SHIFTING else 0)
    if method in SHIFTING:
        assert 0 < metrics["requant_error_mean"] <= metrics["requant_error_max"] < 0.5  # NF4 on 32-wide layers
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["config"]["quantize"] == "nf4"

    trained = logits(model)
    fresh = quantized(tiny_llama_dir)
    assert (trained - logits(fresh)).abs().max() > 1e-4  # the run changed the model
    reloaded = logits(load_adapter(fresh, tmp_path / "run" / "adapter"))
    assert torch.allclose(reloaded, trained, atol=REPRODUCE_ATOL), (reloaded - trained).abs().max()


@pytest.mark.parametrize("quantize", ["fp4", "int8"])
@pytest.mark.parametrize("method", ["lora", "olora"])
def test_fp4_and_int8_bases(method, quantize, tiny_llama_dir, alpaca_file, tmp_path):
    result = train(run_config(tiny_llama_dir, alpaca_file, tmp_path / "run", method, quantize))
    kind = bnb.nn.Linear8bitLt if quantize == "int8" else bnb.nn.Linear4bit
    assert sum(isinstance(m, kind) for m in result.model.modules()) == 14
    assert result.metrics["requant_layers"] == (14 if method == "olora" else 0)
    trained = logits(result.model)
    reloaded = logits(load_adapter(quantized(tiny_llama_dir, quantize), tmp_path / "run" / "adapter"))
    assert torch.allclose(reloaded, trained, atol=REPRODUCE_ATOL), (reloaded - trained).abs().max()


def test_olora_and_pissa_factor_the_dequantized_weight_and_requantize_the_residual(tiny_llama_dir):
    name = "base_model.model.model.layers.1.mlp.down_proj"
    for method in ("olora", "pissa"):
        model = quantized(tiny_llama_dir)
        layer = model.get_submodule(name.removeprefix("base_model.model."))
        W = dequantize(layer)  # deq(Q(W0)), (out, in)
        peft_model, initial = attach_adapter(model, AdapterSpec(method=method, rank=4, alpha=8))
        lora = peft_model.get_submodule(name)
        s = lora.scaling["default"]
        A0, B0 = initial[name]
        if method == "olora":  # B = Q_r, A = R_r of a full QR of the dequantized weight
            Q_r, R_r = olora_factors_full_qr(W, 4)
            torch.testing.assert_close(B0, Q_r, atol=1e-5, rtol=0)
            torch.testing.assert_close(A0, R_r, atol=1e-5, rtol=0)
        else:  # s·B·A = U_r S_r V_rᵀ of the dequantized weight
            U, S, Vh = torch.linalg.svd(W, full_matrices=False)
            torch.testing.assert_close(s * B0 @ A0, U[:, :4] @ torch.diag(S[:4]) @ Vh[:4], atol=1e-5, rtol=0)
        W_res = W - s * (B0 @ A0)
        expected = requantized(W_res, layer.weight)
        torch.testing.assert_close(dequantize(lora.get_base_layer()), expected, atol=0, rtol=0)
        error = float(torch.linalg.norm(expected - W_res) / torch.linalg.norm(W_res))
        assert requantization_errors(peft_model)[f"{name}.base_layer"] == pytest.approx(error)


def test_ohora_folds_its_kronecker_init_into_the_quantized_base(tiny_llama_dir):
    model = quantized(tiny_llama_dir)
    path = "model.layers.0.self_attn.o_proj"
    W = dequantize(model.get_submodule(path))
    peft_model, _ = attach_adapter(model, AdapterSpec(method="ohora", rank=4, alpha=8))
    layer = peft_model.base_model.model.get_submodule(path)
    init = ohora_factors(W)
    torch.testing.assert_close(layer.ohora_init_A["default"], init.A_high)
    torch.testing.assert_close(layer.ohora_init_B["default"], init.B_high)
    W_res = W - 2.0 * kron_materialised(init.A_high, init.B_high)  # s = α/r = 8/4
    torch.testing.assert_close(dequantize(layer.get_base_layer()), requantized(W_res, layer.get_base_layer().weight),
                               atol=0, rtol=0)


def test_plain_lora_loading_of_a_quantized_olora_adapter_misses_the_requantization_error(
        tiny_llama_dir, alpaca_file, tmp_path):
    """PEFT alone applies the rank-2r adapter to Q(W0): off by e(W_res) per layer; on the fp32 base W0 by
    e(W0) + e(W_res) (adapters/quantized.py). oloraplus' load, which re-shifts the quantized base, is exact."""
    result = train(run_config(tiny_llama_dir, alpaca_file, tmp_path / "run", "olora"))
    trained = logits(result.model)
    adapter = tmp_path / "run" / "adapter"
    exact = (logits(load_adapter(quantized(tiny_llama_dir), adapter)) - trained).abs().max()
    plain = (logits(PeftModel.from_pretrained(quantized(tiny_llama_dir), str(adapter))) - trained).abs().max()
    fp32 = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    full = (logits(PeftModel.from_pretrained(fp32, str(adapter))) - trained).abs().max()
    assert exact < REPRODUCE_ATOL < 1e-3 < min(plain, full), (exact, plain, full)


def test_export_merged_from_a_quantized_run_merges_into_the_unquantized_base(tiny_llama_dir, alpaca_file, tmp_path):
    train(run_config(tiny_llama_dir, alpaca_file, tmp_path / "run", "olora"))
    assert main(["export", str(tmp_path / "run"), "--format", "merged", "--output", str(tmp_path / "merged")]) == 0
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    base = load_file(tiny_llama_dir / "model.safetensors")
    adapter = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    s = config["lora_alpha"] / config["r"]
    key = "model.layers.0.mlp.gate_proj"
    A, B = adapter[f"base_model.model.{key}.lora_A.weight"], adapter[f"base_model.model.{key}.lora_B.weight"]
    assert merged[f"{key}.weight"].dtype == torch.float32  # a plain fp32 model, not 4-bit
    torch.testing.assert_close(merged[f"{key}.weight"], base[f"{key}.weight"] + s * B @ A, atol=1e-6, rtol=0)


def test_an_interrupted_nf4_olora_run_resumes_to_the_uninterrupted_adapter(
        tiny_llama_dir, alpaca_file, tmp_path, monkeypatch, capsys):
    """A checkpoint write fails at step 4 (disk full); --resume rebuilds the re-quantized base from the same init and
    finishes with the adapter and eval loss of a run that was never interrupted."""
    import errno
    import os

    from transformers import Trainer

    def argv(out, *extra):
        return ["train", "--model", str(tiny_llama_dir), "--data", str(alpaca_file), "--method", "olora",
                "--quantize", "nf4", "--rank", "4", "--alpha", "8", "--lr", "5e-3", "--max-steps", "6",
                "--batch-size", "4", "--max-length", "64", "--train-size", "24", "--eval-size", "4",
                "--save-steps", "2", "--seed", "3", *extra, "--output", str(out)]

    assert main(argv(tmp_path / "reference")) == 0
    save = Trainer._save_optimizer_and_scheduler

    def disk_full_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", disk_full_at_step_4)
    out = tmp_path / "run"
    assert main(argv(out)) == 2 and not out.exists()
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save)
    assert main(argv(out, "--resume")) == 0
    got, want = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (out, tmp_path / "reference"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    metrics = [json.loads((run / "metrics.json").read_text()) for run in (out, tmp_path / "reference")]
    assert metrics[0]["eval_loss"] == metrics[1]["eval_loss"]
    assert metrics[0]["requant_error_mean"] == metrics[1]["requant_error_mean"]

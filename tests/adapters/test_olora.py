import pytest
import torch
from peft.tuners.lora import LoraLayer
from transformers.pytorch_utils import Conv1D

from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.adapters.olora import olora_factors, olora_factors_full_qr
from oloraplus.errors import AdapterError

SHAPES = [((24, 24), 8), ((40, 12), 5), ((12, 40), 7), ((33, 17), 17), ((17, 33), 17), ((64, 48), 1)]


@pytest.mark.parametrize("shape,r", SHAPES)
def test_thin_qr_equals_full_qr_float64(shape, r):
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(r), dtype=torch.float64)
    Q_r, R_r = olora_factors(W, r)
    Q_ref, R_ref = olora_factors_full_qr(W, r)
    assert Q_r.shape == (shape[0], r) and R_r.shape == (r, shape[1])
    torch.testing.assert_close(Q_r, Q_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(R_r, R_ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(Q_r.T @ Q_r, torch.eye(r, dtype=W.dtype), rtol=0, atol=1e-12)
    torch.testing.assert_close(Q_r @ R_r, Q_r @ Q_r.T @ W, rtol=0, atol=1e-10)  # projection of W onto span(Q_r)
    torch.testing.assert_close((Q_r @ R_r)[:, :r], W[:, :r], rtol=0, atol=1e-10)  # first r columns exact


def test_thin_qr_equals_full_qr_float32_real_shape():
    W = torch.randn(576, 1536, generator=torch.Generator().manual_seed(0)) * 0.02
    Q_r, R_r = olora_factors(W, 32)
    Q_ref, R_ref = olora_factors_full_qr(W, 32)
    torch.testing.assert_close(Q_r, Q_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(R_r / R_ref.abs().max(), R_ref / R_ref.abs().max(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("r", [0, -1, 13])
def test_rank_outside_range_is_an_adapter_error(r):
    with pytest.raises(AdapterError, match=rf"--rank {r}: must be in 1..min\(out, in\)=12 for a 12×20 weight"):
        olora_factors(torch.zeros(12, 20), r)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_apply_olora_factors_the_out_by_in_matrix(arch, make_model):
    """B, A and the residual base against the full QR of the out×in weight (Conv1D stores in×out)."""
    model = make_model(arch)
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    r, alpha = 4, 8.0
    peft_model, initial = attach_adapter(model, AdapterSpec("olora", rank=r, alpha=alpha))
    s = alpha / r
    layers = {n: m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    assert set(initial) == set(layers) and len(layers) > 0
    for name, layer in layers.items():
        base = layer.get_base_layer()
        conv1d = isinstance(base, Conv1D)
        assert conv1d == (arch == "gpt2")
        stored = original[name.removeprefix("base_model.model.") + ".weight"].double()
        W = stored.T if conv1d else stored  # (out, in)
        Q_ref, R_ref = olora_factors_full_qr(W, r)
        B, A = layer.lora_B["default"].weight.double(), layer.lora_A["default"].weight.double()
        assert B.shape == (W.shape[0], r) and A.shape == (r, W.shape[1])
        torch.testing.assert_close(B, Q_ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(A, R_ref, rtol=0, atol=1e-5)
        W_res = W - s * Q_ref @ R_ref  # OLoRA: W' = W − s·Q_r R_r
        torch.testing.assert_close(base.weight.double(), W_res.T if conv1d else W_res, rtol=0, atol=1e-5)
        torch.testing.assert_close(initial[name].A, layer.lora_A["default"].weight, rtol=0, atol=0)
        torch.testing.assert_close(initial[name].B, layer.lora_B["default"].weight, rtol=0, atol=0)
        assert initial[name].A.data_ptr() != layer.lora_A["default"].weight.data_ptr()


def test_apply_olora_writes_back_in_the_base_dtype(make_model):
    """bf16 base: QR in float32, residual stored as bf16 (rounded once)."""
    model = make_model("llama").to(torch.bfloat16)
    stored = model.get_submodule("model.layers.0.mlp.up_proj").weight.detach().double()  # (64, 32)
    peft_model, _ = attach_adapter(model, AdapterSpec("olora", rank=4, alpha=8.0))
    base = peft_model.get_submodule("base_model.model.model.layers.0.mlp.up_proj").get_base_layer()
    assert base.weight.dtype == torch.bfloat16
    Q_ref, R_ref = olora_factors_full_qr(stored, 4)
    expected = stored - 2.0 * Q_ref @ R_ref
    torch.testing.assert_close(base.weight.double(), expected, rtol=1e-2, atol=1e-3)

"""ΔW per layer from a saved adapter, checked against the trained model's own forward pass."""

import copy

import pytest
import torch

from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.adapters.export import save_adapter
from oloraplus.eval.delta_rank import (
    block_of, delta_rank, delta_weights, kind_of, mean_over_runs, per_block, per_kind,
)
from tests.adapters.conftest import build_model

RANK, ALPHA = 4, 8.0
METHODS = [("lora", "ranked"), ("olora", "ranked"), ("pissa", "ranked"), ("dora", "ranked"), ("hira", "ranked"),
           ("ohora", "ranked"), ("ohora", "paper")]


def _perturb(peft_model) -> None:
    """Stand-in for training: move every trainable tensor (a zero-initialised B too)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))


def _forward_delta(layer: torch.nn.Module, W0: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """ΔW read off the layer's output on the identity: layer(I) = I·(W0 + ΔW)ᵀ + b."""
    eye = torch.eye(W0.shape[1])
    with torch.no_grad():
        out = layer(eye) - (0 if bias is None else bias)
        return (out - eye @ W0.T).T


@pytest.mark.parametrize("method,init", METHODS)
def test_delta_weights_match_the_trained_layers_forward(method, init, tmp_path):
    model = build_model("llama")
    untouched = copy.deepcopy(model)
    peft_model, initial = attach_adapter(model, AdapterSpec(method, rank=RANK, alpha=ALPHA, ohora_init=init))
    _perturb(peft_model)
    peft_model.eval()
    save_adapter(peft_model, tmp_path / "adapter", initial)
    originals = dict(untouched.named_modules())
    trained = dict(peft_model.named_modules())

    deltas = delta_weights(copy.deepcopy(untouched), tmp_path / "adapter")

    assert len(deltas) == 2 * 7  # two blocks × q, k, v, o, gate, up, down
    for name, delta in deltas.items():
        base = originals[name]
        reference = _forward_delta(trained[f"base_model.model.{name}"], base.weight, base.bias)
        assert delta.dtype == torch.float64
        size = float(reference.abs().max())
        assert size > 1e-5, name  # the update is not zero: the check can fail
        torch.testing.assert_close(delta.float(), reference, rtol=0, atol=1e-4 * size, msg=name)


def test_delta_rank_counts_equal_singular_values_and_ignores_rounding_noise():
    U, _ = torch.linalg.qr(torch.randn(40, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    V, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    sigma = torch.zeros(30, dtype=torch.float64)
    sigma[:3] = 2.0
    M = U[:, :30] @ torch.diag(sigma) @ V.T
    assert delta_rank(M) == pytest.approx(3.0, abs=1e-9)
    noisy = M + 1e-9 * torch.randn(M.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    assert delta_rank(noisy) == pytest.approx(3.0, abs=1e-6)
    sigma[:3] = torch.tensor([4.0, 2.0, 1.0])  # unequal: between 1 and 3
    assert 1.0 < delta_rank(U[:, :30] @ torch.diag(sigma) @ V.T) < 3.0
    assert delta_rank(torch.zeros(5, 4)) == 0.0


def test_lora_update_has_at_most_rank_r_and_a_high_rank_method_more(tmp_path):
    ranks = {}
    for method in ("lora", "hira"):
        model = build_model("llama")
        untouched = copy.deepcopy(model)
        peft_model, initial = attach_adapter(model, AdapterSpec(method, rank=RANK, alpha=ALPHA))
        _perturb(peft_model)
        save_adapter(peft_model, tmp_path / method, initial)
        ranks[method] = {n: delta_rank(d) for n, d in delta_weights(untouched, tmp_path / method).items()}
    assert all(1.0 <= r <= RANK + 1e-9 for r in ranks["lora"].values())
    assert all(r > RANK for r in ranks["hira"].values())  # W0 ⊙ BA: the Hadamard product lifts the rank


def test_layer_names_pool_by_block_and_kind():
    ranks = {"model.layers.0.self_attn.q_proj": 2.0, "model.layers.0.mlp.up_proj": 4.0,
             "model.layers.1.self_attn.q_proj": 6.0, "model.layers.10.mlp.up_proj": 8.0}
    assert block_of("model.layers.12.self_attn.q_proj") == 12 and block_of("lm_head") is None
    assert kind_of("model.layers.12.self_attn.q_proj") == "self_attn.q_proj"
    assert per_block(ranks) == {0: 3.0, 1: 6.0, 10: 8.0}
    assert per_kind(ranks) == {"self_attn.q_proj": 4.0, "mlp.up_proj": 6.0}
    assert mean_over_runs([ranks, {**ranks, "model.layers.0.self_attn.q_proj": 4.0}])[
        "model.layers.0.self_attn.q_proj"] == 3.0

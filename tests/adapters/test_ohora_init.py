"""OHoRA's default ('ranked') init never starts a layer dead: checked on the weights that kill the literal
('paper') reading, on every SmolLM2 layer, and against independent references (float64 QR, torch.kron).

Rank tolerance: a factor X has rank r_high when its float64 singular values above σ_max · max(X.shape) · ε_fp32
number r_high (numpy's matrix_rank rule for a float32 matrix; the factors are computed in float32).
"""

import numpy as np
import pytest
import torch
from torch import nn

from oloraplus.adapters.ohora import kron_materialised, ohora_factors
from oloraplus.adapters.ohora_peft import OHoRAConfig, OHoRALinear, attach_ohora, load_ohora, ohora_layers
from tests.conftest import requires_smollm2

SCALE = 0.5


def numerical_rank(X: torch.Tensor) -> int:
    s = torch.linalg.svdvals(X.detach().double())
    if s[0] == 0:
        return 0
    return int((s > s[0] * max(X.shape) * torch.finfo(torch.float32).eps).sum())


def logspace_weight() -> torch.Tensor:
    """Column norms growing 10×: |R_kk| grows with k, so the top 2·r_high indices all lie at k ≥ r_high."""
    return torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) * torch.logspace(-1, 0, 64)


def gaussian_weight() -> torch.Tensor:
    """A Gaussian weight whose next-r_high indices I2 all lie at k ≥ r_high (1 in ~20 seeds does)."""
    return torch.randn(64, 64, generator=torch.Generator().manual_seed(20))


REPRODUCTIONS = {"logspace": logspace_weight, "gaussian": gaussian_weight}


@pytest.mark.parametrize("case,dead", [("logspace", {"A", "B"}), ("gaussian", {"B"})])
def test_the_literal_reading_starts_these_weights_with_zero_factors(case, dead):
    """The reproductions: what the default init must avoid (the check that the weights really are the bad cases)."""
    init = ohora_factors(REPRODUCTIONS[case](), "paper")
    zero = {name for name, X in (("A", init.A_high), ("B", init.B_high)) if torch.count_nonzero(X) == 0}
    assert zero == dead


@pytest.mark.parametrize("case", REPRODUCTIONS)
def test_ranked_factors_equal_a_float64_qr_and_have_rank_r_high(case):
    W = REPRODUCTIONS[case]()
    init = ohora_factors(W)  # the default
    Q, R = np.linalg.qr(W.double().numpy())  # LAPACK, double precision: the independent reference
    order = np.argsort(-np.abs(np.diag(R)), kind="stable")
    r = init.r_high
    I1, I2 = order[:r], order[r : 2 * r]
    np.testing.assert_allclose(init.A_high.numpy(), Q[: 64 // r][:, I1] @ R[I1][:, I1], rtol=0, atol=1e-4)
    np.testing.assert_allclose(init.B_high.numpy(), Q[: 64 // r][:, I2] @ R[I2][:, I2], rtol=0, atol=1e-4)
    assert numerical_rank(init.A_high) == numerical_rank(init.B_high) == r == 8


def _layer(W: torch.Tensor, init: str = "ranked") -> OHoRALinear:
    base = nn.Linear(W.shape[1], W.shape[0], bias=False)
    with torch.no_grad():
        base.weight.copy_(W)
    base.requires_grad_(False)  # frozen, as get_peft_model leaves it
    return OHoRALinear(base, "default", OHoRAConfig(target_modules=["x"], scale=SCALE, ohora_init=init))


def _step_one_gradients(layer: OHoRALinear, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, layer.in_features, generator=g)
    upstream = torch.randn(6, layer.out_features, generator=g)
    (layer(x) * upstream).sum().backward()
    return layer.ohora_A["default"].grad, layer.ohora_B["default"].grad


@pytest.mark.parametrize("case", REPRODUCTIONS)
def test_both_factors_get_gradients_at_step_one_and_the_residual_is_exact(case):
    W0 = REPRODUCTIONS[case]()
    layer = _layer(W0)
    layer.fold_initial("default")  # W_res = W0 − s·A0 ⊗ B0ᵀ, as attach_ohora does
    A0, B0 = layer.ohora_init_A["default"], layer.ohora_init_B["default"]
    W_res = layer.get_base_layer().weight.detach()
    torch.testing.assert_close(W_res + SCALE * torch.kron(A0, B0.T.contiguous()), W0, rtol=0, atol=1e-6)
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 64 + 64
    gA, gB = _step_one_gradients(layer)
    assert gA.norm() > 1e-2 and gB.norm() > 1e-2  # the paper reading gives exactly 0 here (next test)


def test_the_paper_option_keeps_the_dead_gradients_it_reproduces():
    gA, gB = _step_one_gradients(_layer(logspace_weight(), "paper"))
    assert torch.count_nonzero(gA) == 0 and torch.count_nonzero(gB) == 0


@pytest.mark.parametrize("init", ["ranked", "paper"])
def test_the_init_choice_is_saved_and_loading_runs_no_qr(init, make_model, tokens, tmp_path, monkeypatch):
    from oloraplus.adapters.export import load_adapter

    calls = []
    real_qr = torch.linalg.qr

    def counting_qr(*args, **kwargs):
        calls.append(1)
        return real_qr(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "qr", counting_qr)
    peft_model = attach_ohora(make_model("llama"), None, scale=SCALE, init=init)
    assert len(calls) == len(ohora_layers(peft_model)) == 14  # the counter sees the init's QRs: it can fail
    with torch.no_grad():
        for layer in ohora_layers(peft_model).values():
            layer.ohora_A["default"].mul_(1.5)  # stand-in for training
        trained = peft_model(tokens).logits
    peft_model.save_pretrained(tmp_path)
    calls.clear()
    loaded = load_adapter(make_model("llama"), tmp_path)
    assert calls == []
    assert loaded.peft_config["default"].ohora_init == init
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, trained, rtol=0, atol=1e-5)
    assert load_ohora(make_model("llama"), tmp_path).peft_config["default"].ohora_init == init and calls == []


def test_an_unknown_init_is_an_adapter_error():
    from oloraplus.errors import AdapterError

    with pytest.raises(AdapterError, match=r"OHoRA init 'literal': choose one of ranked, paper"):
        OHoRAConfig(target_modules=["q_proj"], ohora_init="literal")
    with pytest.raises(AdapterError, match=r"--ohora-init 'literal': unknown"):
        ohora_factors(torch.randn(16, 16), "literal")


@pytest.mark.smollm2
@requires_smollm2
def test_every_smollm2_layer_starts_alive():
    """210 layers: both factors rank r_high, both gradients non-zero at step 1, W_res + s·A0 ⊗ B0ᵀ = W0 (torch.kron)."""
    from oloraplus.models import load_model

    model = load_model("smollm2-135m", device="cpu").model
    originals = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    paper_o_proj = ohora_factors(originals["model.layers.0.self_attn.o_proj"], "paper")
    assert torch.count_nonzero(paper_o_proj.B_high) == 0  # the reproduction on real weights
    peft_model = attach_ohora(model, None, scale=SCALE)
    layers = ohora_layers(peft_model)
    assert len(layers) == 30 * 7
    tokens = torch.randint(0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    peft_model(tokens, labels=tokens).loss.backward()
    trainable = 0
    for name, layer in layers.items():
        W0 = originals[name.removeprefix("base_model.model.")]
        m, n = W0.shape
        A, B = layer.ohora_A["default"], layer.ohora_B["default"]
        r = A.shape[1]
        assert numerical_rank(A) == numerical_rank(B) == r, name
        assert A.grad.norm() > 0 and B.grad.norm() > 0, name
        K0 = torch.kron(layer.ohora_init_A["default"], layer.ohora_init_B["default"].T.contiguous())
        W_res = layer.get_base_layer().weight.detach()
        torch.testing.assert_close(W_res + SCALE * K0, W0, rtol=0, atol=1e-5, msg=name)
        assert A.numel() + B.numel() == m + n
        trainable += m + n
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == trainable
    assert kron_materialised(A, B).shape == (m, n)

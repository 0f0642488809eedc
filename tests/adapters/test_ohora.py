"""OHoRA numerics against independent references: brute-force r_high, a QR with a known R, torch.kron, loops."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from oloraplus.adapters.ohora import kron_materialised, kron_matvec, ohora_factors, r_high_for
from oloraplus.errors import AdapterError

# (out, in, r_high) of SmolLM2-135M, Llama-2-7B and small/odd shapes; 7×11 and 13×17 are coprime.
SHAPES = [(576, 576, 24), (192, 576, 12), (1536, 576, 24), (576, 1536, 24), (4096, 4096, 64),
          (11008, 4096, 64), (4096, 11008, 64), (64, 32, 4), (16, 32, 4), (7, 11, 1), (13, 17, 1)]


@pytest.mark.parametrize("m,n,r", SHAPES)
def test_r_high_of_known_shapes(m, n, r):
    assert r_high_for(m, n) == r


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000))
def test_r_high_equals_brute_force(m, n):
    expected = max(k for k in range(1, min(m, n) + 1) if k * k <= min(m, n) and m % k == 0 and n % k == 0)
    assert r_high_for(m, n) == expected


def test_kron_materialised_matches_the_element_formula():
    """(A ⊗ Bᵀ)[i·r + k, j·q + l] = A[i, j] · B[l, k], written out with loops."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(3, 2, generator=g), torch.randn(5, 2, generator=g)  # p=3, q=5, r=2
    K = kron_materialised(A, B)
    assert K.shape == (6, 10)
    for i in range(3):
        for k in range(2):
            for j in range(2):
                for l in range(5):
                    assert K[i * 2 + k, j * 5 + l] == A[i, j] * B[l, k]


KRON_SHAPES = [(36, 36), (48, 12), (12, 48), (64, 32), (7, 11), (1, 5), (30, 42)]  # square, rectangular, coprime


@pytest.mark.parametrize("m,n", KRON_SHAPES)
@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
def test_kron_matvec_forward_and_gradients_equal_materialised(m, n, lead):
    r = r_high_for(m, n)
    g = torch.Generator().manual_seed(m * 100 + n)
    A = torch.randn(m // r, r, generator=g, requires_grad=True)
    B = torch.randn(n // r, r, generator=g, requires_grad=True)
    x = torch.randn(*lead, n, generator=g, requires_grad=True)
    upstream = torch.randn(*lead, m, generator=g)

    y = kron_matvec(A, B, x)
    gA, gB, gx = torch.autograd.grad((y * upstream).sum(), (A, B, x))
    y_ref = x @ torch.kron(A, B.T.contiguous()).T  # the m×n matrix, materialised
    gA_ref, gB_ref, gx_ref = torch.autograd.grad((y_ref * upstream).sum(), (A, B, x))

    assert y.shape == (*lead, m)
    for got, ref in [(y, y_ref), (gA, gA_ref), (gB, gB_ref), (gx, gx_ref)]:
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def _kron_reference(A, B, x):
    return x @ torch.kron(A, B.T.contiguous()).T


def test_gradients_of_the_factors_alone_when_the_input_needs_none():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(4, 6, generator=g, requires_grad=True)
    B = torch.randn(8, 6, generator=g, requires_grad=True)
    x = torch.randn(3, 48, generator=g)  # the first adapted layer's input: no gradient wanted
    got = torch.autograd.grad(kron_matvec(A, B, x).square().sum(), (A, B))
    ref = torch.autograd.grad(_kron_reference(A, B, x).square().sum(), (A, B))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_bf16_autocast_runs_in_bf16_and_stays_close_to_float32():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(12, 12, generator=g, requires_grad=True)
    B = torch.randn(12, 12, generator=g, requires_grad=True)
    x = torch.randn(16, 144, generator=g, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kron_matvec(A, B, x)
    assert y.dtype == torch.bfloat16
    got = torch.autograd.grad(y.float().sum(), (A, B, x))
    ref = torch.autograd.grad(_kron_reference(A, B, x).sum(), (A, B, x))
    for a, b in zip(got, ref):
        assert a.dtype == b.dtype == torch.float32  # gradients come back in each input's dtype
        assert (a - b).norm() <= 2e-2 * b.norm()


def _matrix_with_known_R(m: int, n: int, diag: list[float], seed: int) -> np.ndarray:
    """W = Q_true · R_true with |diag R_true| given: QR is unique up to signs, so |R_kk| of any QR of W is `diag`."""
    rng = np.random.default_rng(seed)
    k = min(m, n)
    Q_true, _ = np.linalg.qr(rng.standard_normal((m, k)))
    R_true = np.triu(rng.standard_normal((k, n)))
    R_true[np.arange(k), np.arange(k)] = diag
    return Q_true @ R_true


@pytest.mark.parametrize("m,n", [(36, 36), (48, 16), (16, 48), (30, 42)])
def test_selected_indices_are_the_top_abs_R_kk(m, n):
    r = r_high_for(m, n)
    k = min(m, n)
    diag = np.random.default_rng(1).permutation(np.arange(1, k + 1)) * np.where(np.arange(k) % 3 == 0, -1.0, 1.0)
    W = torch.tensor(_matrix_with_known_R(m, n, diag.tolist(), seed=m + n), dtype=torch.float32)
    init = ohora_factors(W)
    by_size = np.argsort(-np.abs(diag), kind="stable")
    assert init.r_high == r
    assert init.I1.tolist() == by_size[:r].tolist()
    assert init.I2.tolist() == by_size[r : 2 * r].tolist()


@pytest.mark.parametrize("init", ["ranked", "paper"])
@pytest.mark.parametrize("m,n", [(36, 36), (48, 16), (16, 48), (64, 32), (7, 11), (13, 17)])
def test_factors_equal_a_float64_numpy_qr(m, n, init):
    """A_high = Q1[:m/r, :]·R1, B_high = Q2[:n/r, :]·R2 from LAPACK's double-precision QR, with
    R1 = R[I1, I1] ('ranked') or R[I1, :r] ('paper'), R2 likewise."""
    W = torch.randn(m, n, generator=torch.Generator().manual_seed(m * n))
    init_ = ohora_factors(W, init)
    Q, R = np.linalg.qr(W.double().numpy())
    order = np.argsort(-np.abs(np.diag(R)), kind="stable")
    r = init_.r_high
    I1, I2 = order[:r], order[r : 2 * r]
    cols1, cols2 = (I1, I2) if init == "ranked" else (np.arange(r), np.arange(r))
    Q_padded = np.vstack([Q, np.zeros((max(0, n // r - m), Q.shape[1]))])  # wide weights: rows past m are 0
    A_ref = Q[: m // r][:, I1] @ R[I1][:, cols1]  # the sign of each Q column cancels with its R row
    B_ref = Q_padded[: n // r][:, I2] @ R[I2][:, cols2]
    assert init_.A_high.shape == (m // r, r) and init_.B_high.shape == (n // r, r)
    assert init_.A_high.numel() + init_.B_high.numel() == m + n
    assert kron_materialised(init_.A_high, init_.B_high).shape == (m, n)
    np.testing.assert_allclose(init_.A_high.numpy(), A_ref, rtol=0, atol=1e-4)
    np.testing.assert_allclose(init_.B_high.numpy(), B_ref, rtol=0, atol=1e-4)


def test_bfloat16_weight_is_factored_in_float32():
    W = torch.randn(36, 36, generator=torch.Generator().manual_seed(0))
    init = ohora_factors(W.to(torch.bfloat16))
    assert init.A_high.dtype == torch.float32
    torch.testing.assert_close(init.A_high, ohora_factors(W.to(torch.bfloat16).float()).A_high)


def test_wide_coprime_weight_starts_the_missing_rows_of_B_at_zero():
    W = torch.randn(3, 1000, generator=torch.Generator().manual_seed(0))
    init = ohora_factors(W)  # r_high = 1: B_high needs 1000 rows of Q2, which has 3
    assert init.A_high.shape == (3, 1) and init.B_high.shape == (1000, 1)
    assert init.B_high[:3].abs().sum() > 0 and init.B_high[3:].abs().sum() == 0


def test_a_weight_with_one_row_is_an_adapter_error():
    with pytest.raises(AdapterError, match=r"OHoRA: a 1×5 weight has 1 QR columns, fewer than 2·r_high=2"):
        ohora_factors(torch.randn(1, 5))

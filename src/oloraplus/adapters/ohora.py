"""OHoRA initialisation and the Kronecker product it trains (Zhang et al., EMNLP 2025).

W0 (m×n, out×in) = QR; λ_k = |R_kk| ranks the columns of Q by non-redundancy; I1 holds the top r_high
indices, I2 the next r_high (eqs. 5–7). With Q1 = Q[:, I1], Q2 = Q[:, I2] (eqs. 8–9):

    A_high = Q1[:m/r_high, :] · R1                  (m/r_high × r_high)
    B_high = Q2[:n/r_high, :] · R2                  (n/r_high × r_high)
    ΔW     = s · (A_high ⊗ B_highᵀ)                  (m × n, eq. 10)

The paper writes "Q1[m/r_high] R1[:, r_high]" without saying which rows and columns of R form R1. Two readings:

- `ranked` (default): R1 = R[I1, I1], R2 = R[I2, I2] (r_high × r_high). Q1·R1 = Q1·Q1ᵀ·W0[:, I1] is the part
  of the ranked columns of W0 that lies in the ranked directions; R1's diagonal holds exactly the λ_k of I1,
  so R1 is invertible (when those λ_k > 0) and A_high has the rank of Q1[:m/r_high] — r_high for a weight in general position
  (m/r_high ≥ r_high). Every ranked direction contributes, as eqs. 6–7 intend. (Not in general position:
  a diagonal or permuted-identity W has Q = a signed permutation, so Q1[:m/r_high] can still be zero.)
- `paper` (the literal reading, kept to reproduce earlier runs): R1 = R[I1, :r_high], R2 = R[I2, :r_high].
  R is upper triangular, so a row k ≥ r_high of R is zero in its first r_high columns: only indices of I1
  below r_high contribute, the |R_kk| ranking is mostly lost, and a factor whose indices all lie at
  k ≥ r_high is exactly 0 (a weight with growing column norms starts with A0 = B0 = 0 and no gradient).

Both read "Q1[m/r_high]" as the first m/r_high rows of Q1, the only reading that gives the Kronecker product
the shape m×n with m + n trainable entries. Q2 has m rows; when n/r_high > m (a wide weight with a small
r_high, e.g. coprime m < n) the missing rows of Q2[:n/r_high] are taken as zero, so those rows of B_high
start at 0 and train. The base keeps W_res = W0 − s·A_high ⊗ B_highᵀ, so the model starts unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from oloraplus.config import OHORA_INITS  # how R1, R2 are cut from R; see the module docstring
from oloraplus.errors import AdapterError


@dataclass(frozen=True)
class OHoRAInit:
    """The OHoRA factors of one weight: A_high ⊗ B_highᵀ is m×n."""

    r_high: int
    I1: Tensor  # (r_high,) indices of the largest |R_kk|, descending
    I2: Tensor  # (r_high,) the next r_high
    A_high: Tensor  # (m/r_high, r_high)
    B_high: Tensor  # (n/r_high, r_high)


def r_high_for(m: int, n: int) -> int:
    """The largest k ≤ min(√m, √n) dividing both m and n (1 when they are coprime)."""
    if m < 1 or n < 1:
        raise AdapterError(f"OHoRA: weight shape {m}×{n} has an empty dimension")
    g = math.gcd(m, n)
    for k in range(math.isqrt(min(m, n)), 0, -1):
        if g % k == 0:
            return k
    return 1  # unreachable: k = 1 always divides


def _first_rows(M: Tensor, k: int) -> Tensor:
    """M[:k], padded with zero rows when M has fewer than k rows."""
    return torch.cat([M[:k], M.new_zeros(max(0, k - M.shape[0]), M.shape[1])])


def ohora_factors(W0: Tensor, init: str = "ranked") -> OHoRAInit:
    """A_high, B_high of an out×in weight from its QR (in float32), with the column indices they use.

    Only the first min(m, n) columns of Q carry an R_kk, so the reduced QR holds every column we rank.
    """
    if init not in OHORA_INITS:
        raise AdapterError(f"--ohora-init {init!r}: unknown; choose one of {', '.join(OHORA_INITS)}")
    W = W0.detach().to(torch.float32)
    m, n = W.shape
    r = r_high_for(m, n)
    if 2 * r > min(m, n):
        raise AdapterError(f"OHoRA: a {m}×{n} weight has {min(m, n)} QR columns, fewer than 2·r_high={2 * r}")
    Q, R = torch.linalg.qr(W)  # eqs. (5)–(7): Q (m, k), R (k, n), k = min(m, n)
    λ = R.diagonal().abs()  # non-redundancy of each column of Q
    order = torch.argsort(λ, descending=True, stable=True)
    I1, I2 = order[:r], order[r : 2 * r]
    if init == "ranked":
        R1, R2 = R[I1][:, I1], R[I2][:, I2]  # (r_high, r_high), diagonals = the ranked λ_k
    else:
        R1, R2 = R[I1, :r], R[I2, :r]  # literal: zero for every row k ≥ r_high
    A_high = _first_rows(Q[:, I1], m // r) @ R1  # eq. (8): (m/r_high, r_high)
    B_high = _first_rows(Q[:, I2], n // r) @ R2  # eq. (9): (n/r_high, r_high)
    return OHoRAInit(r_high=r, I1=I1, I2=I2, A_high=A_high, B_high=B_high)


def kron_materialised(A: Tensor, B: Tensor) -> Tensor:
    """Reference: the m×n matrix A ⊗ Bᵀ. Costs m·n memory; used for merging and tests, never in training."""
    return torch.kron(A, B.T.contiguous())


def kron_matvec(A: Tensor, B: Tensor, x: Tensor) -> Tensor:
    """(A ⊗ Bᵀ) x for every row x (..., n) without forming the m×n product.

    With X = x reshaped row-major to (r, n/r), (A ⊗ Bᵀ) x = vec_row(A · X · B); X·B first costs
    (m + n)·r multiply-adds per row instead of 2·m·n/r, and keeps only the (r × r) product for backward.
    A batched matmul with A broadcast writes the output in place; `torch.matmul` would fold it into one
    matmul on transposed copies (~1.5× slower for the 7B shapes, same memory).
    """
    p, r = A.shape
    q = B.shape[0]
    Z = x.reshape(-1, r, q) @ B  # (T, r, r): X·B for every row
    Y = torch.bmm(A.expand(Z.shape[0], p, r), Z)  # (T, m/r, r): A·X·B
    return Y.reshape(*x.shape[:-1], p * r)

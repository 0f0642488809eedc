"""Refinement vs exploration: how far adapter factors move from their initialisation.

An OLoRA adapter starts with B_0 built from Q_r, the first r orthonormal columns of the QR of W.
If training keeps span(B_t) close to span(B_0) the adapter *refines* that subspace; if the span
turns away it *explores*. The measures below quantify that per layer:

- principal angles θ between span(B_t) and span(B_0) and the normalised chordal distance
  ‖sin θ‖₂ / √r in [0, 1] (0: same subspace, 1: orthogonal) — the primary subspace measure;
- relative Frobenius change of each factor;
- effective rank (Roy & Vetterli 2007) of the learned update ΔW = s (B_t A_t − B_0 A_0), taken from
  the factors without forming the m×n matrix.

All computations run in float64 on whatever device the inputs live on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from oloraplus.errors import AdapterError


def _basis(M: Tensor) -> Tensor:
    """Orthonormal basis Q of span(M) from the reduced QR M = Q R (M full column rank)."""
    Q, _ = torch.linalg.qr(M.detach().double(), mode="reduced")
    return Q


def _check_same_rows(U: Tensor, V: Tensor) -> None:
    if U.dim() != 2 or V.dim() != 2 or U.shape[0] != V.shape[0]:
        raise ValueError(f"need two matrices with equal row counts, got {tuple(U.shape)} and {tuple(V.shape)}")


def principal_angles(U: Tensor, V: Tensor) -> Tensor:
    """The min(k, l) principal angles (radians, ascending) between span(U), U: (m, k), and span(V), V: (m, l).

    cos θ_i are the singular values of Q_Uᵀ Q_V (Björck & Golub 1973); arccos loses accuracy
    below ~1e-8 rad, which `subspace_distance` avoids by working with sines.
    """
    _check_same_rows(U, V)
    cosines = torch.linalg.svdvals(_basis(U).T @ _basis(V)).clamp(0.0, 1.0)  # descending
    return torch.arccos(cosines)


def subspace_distance(U: Tensor, V: Tensor) -> float:
    """Chordal distance ‖sin θ‖₂ / √r between span(U) and span(V), r = min(k, l), in [0, 1].

    ‖sin θ‖₂ = ‖P_U − P_V‖_F / √2 for equal dimensions (projection-metric form). It is computed as
    ‖Q_small − Q_big Q_bigᵀ Q_small‖_F, whose singular values are the sines, so tiny angles stay
    accurate. NaN if either matrix is all zeros (e.g. LoRA's B_0 = 0 spans nothing).
    """
    _check_same_rows(U, V)
    if not torch.any(U != 0) or not torch.any(V != 0):
        return math.nan
    small, big = (U, V) if U.shape[1] <= V.shape[1] else (V, U)
    Q_s, Q_b = _basis(small), _basis(big)
    residual = Q_s - Q_b @ (Q_b.T @ Q_s)  # component of span(small) outside span(big)
    return float(torch.linalg.norm(residual) / math.sqrt(small.shape[1]))


def max_principal_angle(U: Tensor, V: Tensor) -> float:
    """The largest principal angle in radians (a worst-direction view next to the chordal distance)."""
    return float(principal_angles(U, V).max())


def relative_change(X_t: Tensor, X_0: Tensor) -> float:
    """‖X_t − X_0‖_F / ‖X_0‖_F; NaN when X_0 = 0 (a zero-initialised factor has no relative scale)."""
    X_t, X_0 = X_t.detach().double(), X_0.detach().to(X_t.device).double()
    norm_0 = torch.linalg.norm(X_0)
    if norm_0 == 0:
        return math.nan
    return float(torch.linalg.norm(X_t - X_0) / norm_0)


def entropy_rank(sigma: Tensor) -> float:
    """exp(H(p)) with p_i = σ_i / Σσ (Roy & Vetterli 2007, eq. 2-3); 0 when there is no σ > 0."""
    sigma = sigma[sigma > 0]
    if sigma.numel() == 0:
        return 0.0
    p = sigma / sigma.sum()
    return float(torch.exp(-(p * torch.log(p)).sum()))


def effective_rank(M: Tensor) -> float:
    """Effective rank of M: the exponential of the Shannon entropy of its normalised singular values.

    Between 1 and rank(M); equals k exactly for k equal non-zero singular values. 0 for M = 0.
    """
    return entropy_rank(torch.linalg.svdvals(M.detach().double()))


def delta_effective_rank(B_t: Tensor, A_t: Tensor, B_0: Tensor, A_0: Tensor, s: float) -> float:
    """Effective rank of ΔW = s (B_t A_t − B_0 A_0) from the factors.

    ΔW = s [B_t, −B_0] [A_t; A_0] = s Q_L (R_L R_Rᵀ) Q_Rᵀ with L = Q_L R_L and [A_t; A_0]ᵀ = Q_R R_R,
    so σ(ΔW) = σ(s R_L R_Rᵀ), a (2r × 2r) problem. Singular values at the rounding floor of the
    cancellation B_t A_t − B_0 A_0 are dropped, so an unchanged adapter reports 0, not noise.
    """
    device = B_t.device
    B_t, A_t = B_t.detach().double(), A_t.detach().to(device).double()
    B_0, A_0 = B_0.detach().to(device).double(), A_0.detach().to(device).double()
    L = torch.cat([B_t, -B_0], dim=1)  # (m, 2r)
    R = torch.cat([A_t, A_0], dim=0)  # (2r, n)
    m, n = L.shape[0], R.shape[1]
    if L.shape[1] >= min(m, n):  # the factor form is no smaller than the matrix itself
        sigma = torch.linalg.svdvals(s * (L @ R))
    else:
        _, R_L = torch.linalg.qr(L, mode="reduced")
        _, R_R = torch.linalg.qr(R.T, mode="reduced")
        sigma = torch.linalg.svdvals(s * (R_L @ R_R.T))
    norm = torch.linalg.norm
    scale = abs(s) * (norm(B_t) * norm(A_t) + norm(B_0) * norm(A_0))  # bounds ‖s B_t A_t‖ + ‖s B_0 A_0‖
    floor = torch.finfo(torch.float64).eps * max(m, n) * scale
    return entropy_rank(sigma[sigma > floor])


def _canonical(name: str) -> str:
    """Same key for a layer whether named from the PeftModel or from its LoraModel."""
    return name.removeprefix("base_model.").removeprefix("model.")


def _full(weight: Tensor) -> Tensor:
    """The whole matrix of a weight sharded by --fsdp (an all-gather every rank must join), else the weight."""
    from torch.distributed.tensor import DTensor

    return weight.full_tensor() if isinstance(weight, DTensor) else weight


def _lora_layers(peft_model, adapter_name: str):
    """(name, lora_B weight, lora_A weight, s) for each linear LoRA layer carrying `adapter_name`."""
    from peft.tuners.lora import LoraLayer

    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer) or adapter_name not in module.lora_A:
            continue
        B = _full(module.lora_B[adapter_name].weight)  # (out, r)
        A = _full(module.lora_A[adapter_name].weight)  # (r, in)
        if B.dim() == 2 and A.dim() == 2:
            yield name, B, A, float(module.scaling[adapter_name])


def capture_initial_factors(peft_model, adapter_name: str = "default") -> dict[str, tuple[Tensor, Tensor]]:
    """CPU copies of (B_0, A_0) for every LoRA layer; call right after the adapter is initialised."""
    return {
        name: (B.detach().cpu().clone(), A.detach().cpu().clone())
        for name, B, A, _ in _lora_layers(peft_model, adapter_name)
    }


def factors_on(initial: dict[str, tuple[Tensor, Tensor]], device: torch.device) -> dict[str, tuple[Tensor, Tensor]]:
    """The initial factors moved to `device` once, so a call on a GPU copies nothing from the host
    (one copy per factor per call was ~300 host→device copies for a 22-layer model)."""
    return {name: (B.to(device), A.to(device)) for name, (B, A) in initial.items()}


def default_batched(device: torch.device) -> bool:
    """Batch the layers of a shape on an accelerator (few launches); loop on the CPU (LAPACK is as fast)."""
    return device.type != "cpu"


def cost_probe(initial: dict[str, tuple[Tensor, Tensor]], batched: bool) -> tuple[dict, int]:
    """A small part of a diagnostics call and how many such parts the whole call has, to predict its cost.

    The unit of work is a layer when looping (cost ∝ layers) and a shape group when batched (cost ∝
    launches, a few per group). The probe is the largest unit, so probe time × units bounds the call.
    """
    if not initial:
        return {}, 0
    if not batched:
        name = max(initial, key=lambda n: initial[n][0].numel() + initial[n][1].numel())
        return {name: initial[name]}, len(initial)
    groups: dict[tuple, dict] = {}
    for name, (B, A) in initial.items():
        groups.setdefault((tuple(B.shape), tuple(A.shape)), {})[name] = (B, A)
    largest = max(groups.values(), key=lambda g: sum(B.numel() + A.numel() for B, A in g.values()))
    return largest, len(groups)


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _batched_basis(M: Tensor) -> Tensor:
    return torch.linalg.qr(M, mode="reduced")[0]


def _batched_distance(U: Tensor, V: Tensor) -> Tensor:
    """`subspace_distance` of each pair U[i], V[i] (equal shapes), NaN where either is all zeros."""
    Q_u, Q_v = _batched_basis(U), _batched_basis(V)
    residual = Q_u - Q_v @ (Q_v.mT @ Q_u)
    distance = torch.linalg.matrix_norm(residual) / math.sqrt(U.shape[-1])
    empty = (U.flatten(1) == 0).all(1) | (V.flatten(1) == 0).all(1)
    return distance.masked_fill(empty, math.nan)


def _batched_change(X_t: Tensor, X_0: Tensor) -> Tensor:
    norm_0 = torch.linalg.matrix_norm(X_0)
    return (torch.linalg.matrix_norm(X_t - X_0) / norm_0).masked_fill(norm_0 == 0, math.nan)


def _batched_delta_rank(B_t: Tensor, A_t: Tensor, B_0: Tensor, A_0: Tensor, s: Tensor) -> Tensor:
    """`delta_effective_rank` of each layer of a stack, from the factors (same 2r × 2r reduction)."""
    L = torch.cat([B_t, -B_0], dim=2)  # (layers, m, 2r)
    R = torch.cat([A_t, A_0], dim=1)  # (layers, 2r, n)
    m, n = L.shape[1], R.shape[2]
    scale = s.view(-1, 1, 1)
    if L.shape[2] >= min(m, n):
        sigma = torch.linalg.svdvals(scale * (L @ R))
    else:
        R_L = torch.linalg.qr(L, mode="reduced")[1]
        R_R = torch.linalg.qr(R.mT, mode="reduced")[1]
        sigma = torch.linalg.svdvals(scale * (R_L @ R_R.mT))
    norm = torch.linalg.matrix_norm
    bound = s.abs() * (norm(B_t) * norm(A_t) + norm(B_0) * norm(A_0))
    floor = (torch.finfo(torch.float64).eps * max(m, n) * bound).unsqueeze(1)
    kept = torch.where(sigma > floor, sigma, torch.zeros_like(sigma))
    total = kept.sum(1, keepdim=True)
    p = kept / total.clamp_min(torch.finfo(torch.float64).tiny)
    entropy = -(torch.where(p > 0, p * torch.log(p.clamp_min(torch.finfo(torch.float64).tiny)), 0.0)).sum(1)
    return torch.where(total.squeeze(1) > 0, torch.exp(entropy), torch.zeros_like(entropy))


def _per_layer(B_t: Tensor, A_t: Tensor, B_0: Tensor, A_0: Tensor, s: float) -> dict[str, float]:
    """The measures of one layer, on the CPU (LAPACK on small matrices: looping is as fast as batching)."""
    B_t, A_t = B_t.detach().cpu(), A_t.detach().cpu()
    B_0, A_0 = B_0.detach().cpu(), A_0.detach().cpu()
    return {
        "subspace_distance": subspace_distance(B_t, B_0),
        "subspace_distance_A": subspace_distance(A_t.T, A_0.T),
        "rel_change_A": relative_change(A_t, A_0),
        "rel_change_B": relative_change(B_t, B_0),
        "delta_effective_rank": delta_effective_rank(B_t, A_t, B_0, A_0, s),
    }


CHUNK_BYTES = 2**25  # float64 bytes of the factors stacked at once: bounds the call's transient device memory


def _chunks(group: list) -> list[list]:
    """A shape group split so that each stack of its factors holds at most CHUNK_BYTES in float64 (an 8B
    model's 64 gate/up layers at once would need ~2 GB of intermediates on the GPU; ~14 at a time, ~0.3 GB)."""
    per_layer = 8 * (group[0][1].numel() + group[0][2].numel())
    size = max(1, CHUNK_BYTES // per_layer)
    return [group[i:i + size] for i in range(0, len(group), size)]


MEASURES = ("subspace_distance", "subspace_distance_A", "rel_change_A", "rel_change_B", "delta_effective_rank")


def _batched(group: list, device: torch.device) -> Tensor:
    """The measures of layers of one shape, stacked and computed in float64 on `device` (a GPU: a few
    batched launches instead of hundreds of tiny ones); (len(MEASURES), layers), left on the device."""
    def stack(tensors) -> Tensor:  # one concatenation and one cast per factor, not one copy per layer
        return torch.stack([t.detach() for t in tensors]).to(device, torch.float64)

    B_t, A_t = stack(g[1] for g in group), stack(g[2] for g in group)
    B_0, A_0 = stack(g[4] for g in group), stack(g[5] for g in group)
    s = torch.tensor([g[3] for g in group], dtype=torch.float64, device=device)
    return torch.stack([
        _batched_distance(B_t, B_0),  # subspace_distance
        _batched_distance(A_t.mT, A_0.mT),  # subspace_distance_A
        _batched_change(A_t, A_0),  # rel_change_A
        _batched_change(B_t, B_0),  # rel_change_B
        _batched_delta_rank(B_t, A_t, B_0, A_0, s),  # delta_effective_rank
    ])


def adapter_diagnostics(
    peft_model, initial_factors: dict[str, tuple[Tensor, Tensor]], adapter_name: str = "default",
    batched: bool | None = None,
) -> dict[str, dict]:
    """Per-layer refinement/exploration measures against (B_0, A_0), and their mean over layers.

    Per layer: subspace_distance (chordal, span B_t vs span B_0), subspace_distance_A (row spaces
    of A), rel_change_A, rel_change_B, delta_effective_rank. NaN values (e.g. B_0 = 0 for plain
    LoRA) are skipped in the mean. `batched` (default: when the factors live on a GPU) stacks the
    layers of each shape and computes them there in float64: a model has hundreds of adapted layers
    but a handful of shapes. Both ways compute the same measures (tested to 1e-12).
    """
    initial = {_canonical(name): factors for name, factors in initial_factors.items()}
    found = [(name, B_t, A_t, s, *initial[_canonical(name)])
             for name, B_t, A_t, s in _lora_layers(peft_model, adapter_name) if _canonical(name) in initial]
    if not found:
        raise AdapterError(
            f"adapter_diagnostics: no LoRA layer of adapter '{adapter_name}' matches the "
            f"{len(initial_factors)} initial factors (capture them with capture_initial_factors)"
        )
    device = found[0][1].device
    batched = default_batched(device) if batched is None else batched
    layers: dict[str, dict[str, float]] = {}
    if batched:
        by_shape: dict[tuple, list] = {}
        for row in found:
            by_shape.setdefault((tuple(row[1].shape), tuple(row[2].shape)), []).append(row)
        groups = [chunk for group in by_shape.values() for chunk in _chunks(group)]
        values = torch.cat([_batched(group, device) for group in groups], dim=1).tolist()  # the one host read
        names = [row[0] for group in groups for row in group]
        for i, name in enumerate(names):
            layers[name] = {key: values[k][i] for k, key in enumerate(MEASURES)}
    else:
        for name, B_t, A_t, s, B_0, A_0 in found:
            layers[name] = _per_layer(B_t, A_t, B_0, A_0, s)
    layers = {row[0]: layers[row[0]] for row in found}  # the model's order, as the mean sums
    keys = next(iter(layers.values())).keys()
    mean = {key: _nanmean([row[key] for row in layers.values()]) for key in keys}
    return {"layers": layers, "mean": mean}

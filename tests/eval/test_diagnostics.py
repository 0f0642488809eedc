import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from oloraplus.errors import AdapterError
from oloraplus.eval.diagnostics import (
    adapter_diagnostics,
    capture_initial_factors,
    cost_probe,
    delta_effective_rank,
    effective_rank,
    max_principal_angle,
    principal_angles,
    relative_change,
    subspace_distance,
)
from tests.conftest import tiny_llama


def random_orthogonal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q


def rotated_pair(thetas: list[float], m: int = 9, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """U = [e_1..e_r]; V's column i turns e_i by θ_i towards e_(r+i): principal angles are exactly θ.

    Both are then rotated by one random orthogonal matrix (angles are invariant) and their columns
    mixed by random invertible matrices (spans are unchanged), so no basis is already orthonormal.
    """
    r = len(thetas)
    E = torch.eye(m, dtype=torch.float64)
    U = E[:, :r]
    V = torch.stack([math.cos(t) * E[:, i] + math.sin(t) * E[:, r + i] for i, t in enumerate(thetas)], dim=1)
    Q = random_orthogonal(m, seed)
    g = torch.Generator().manual_seed(seed + 1)
    mix_u = torch.randn(r, r, generator=g, dtype=torch.float64) + 3 * torch.eye(r, dtype=torch.float64)
    mix_v = torch.randn(r, r, generator=g, dtype=torch.float64) + 3 * torch.eye(r, dtype=torch.float64)
    return Q @ U @ mix_u, Q @ V @ mix_v


def projector(M: torch.Tensor) -> torch.Tensor:
    """P = M (MᵀM)⁻¹ Mᵀ, the orthogonal projector onto span(M), without QR."""
    return M @ torch.linalg.solve(M.T @ M, M.T)


def test_principal_angles_recover_the_construction():
    thetas = [0.3, 1.1, 0.05]
    U, V = rotated_pair(thetas)
    assert torch.allclose(principal_angles(U, V), torch.tensor(sorted(thetas), dtype=torch.float64), atol=1e-10)
    assert max_principal_angle(U, V) == pytest.approx(1.1, abs=1e-10)


def test_subspace_distance_is_normalised_chordal_distance():
    thetas = [0.3, 1.1, 0.05]
    U, V = rotated_pair(thetas)
    by_formula = math.sqrt(sum(math.sin(t) ** 2 for t in thetas) / len(thetas))
    by_projectors = float(torch.linalg.norm(projector(U) - projector(V))) / math.sqrt(2 * len(thetas))
    assert subspace_distance(U, V) == pytest.approx(by_formula, rel=1e-10)
    assert subspace_distance(U, V) == pytest.approx(by_projectors, rel=1e-10)


def test_subspace_distance_extremes_and_tiny_angles():
    U, V = rotated_pair([0.0, 0.0])
    assert subspace_distance(U, V) == pytest.approx(0.0, abs=1e-12)
    U, V = rotated_pair([math.pi / 2, math.pi / 2])
    assert subspace_distance(U, V) == pytest.approx(1.0, rel=1e-12)
    U, V = rotated_pair([1e-9, 0.0])
    assert subspace_distance(U, V) == pytest.approx(1e-9 / math.sqrt(2), rel=1e-4)


def test_subspace_distance_with_different_dimensions():
    U, _ = rotated_pair([0.4, 0.0])
    inside = U @ torch.tensor([[1.0], [-2.0]], dtype=torch.float64)  # a line inside span(U)
    assert subspace_distance(inside, U) == pytest.approx(0.0, abs=1e-12)
    assert subspace_distance(U, inside) == pytest.approx(0.0, abs=1e-12)
    # line e_1 against the plane span(e_1 cos θ + e_2 sin θ, e_3): one angle θ, normalised by √1
    E = torch.eye(9, dtype=torch.float64)
    plane = torch.stack([math.cos(0.7) * E[:, 0] + math.sin(0.7) * E[:, 1], E[:, 2]], dim=1)
    assert subspace_distance(E[:, :1], plane) == pytest.approx(math.sin(0.7), rel=1e-12)
    assert float(principal_angles(plane, E[:, :1])[0]) == pytest.approx(0.7, rel=1e-12)


def test_subspace_distance_of_zero_factor_is_nan_and_shapes_are_checked():
    assert math.isnan(subspace_distance(torch.zeros(6, 2), torch.randn(6, 2)))
    with pytest.raises(ValueError, match="row counts"):
        subspace_distance(torch.randn(6, 2), torch.randn(5, 2))


def test_relative_change():
    X_0 = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # ‖X_0‖_F = 5
    assert relative_change(X_0 + torch.tensor([[0.0, 1.0], [0.0, 0.0]]), X_0) == pytest.approx(0.2)
    assert relative_change(X_0, X_0) == 0.0
    assert math.isnan(relative_change(X_0, torch.zeros(2, 2)))


def test_effective_rank_of_equal_singular_values_is_exact():
    Q_1, Q_2 = random_orthogonal(12, 1), random_orthogonal(8, 2)
    for k in (1, 3, 8):
        S = torch.zeros(12, 8, dtype=torch.float64)
        S[range(k), range(k)] = 2.5
        assert effective_rank(Q_1 @ S @ Q_2.T) == pytest.approx(k, rel=1e-9)


def test_effective_rank_by_formula():
    M = torch.diag(torch.tensor([3.0, 1.0]))
    p = [0.75, 0.25]
    assert effective_rank(M) == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)), rel=1e-9)
    assert effective_rank(torch.zeros(4, 3)) == 0.0


def random_factors(m: int, n: int, r: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64) for shape in [(m, r), (r, n), (m, r), (r, n)]]


@pytest.mark.parametrize("m,n,r", [(40, 30, 4), (64, 16, 2), (10, 12, 6)])  # last: 2r >= min(m, n)
def test_delta_effective_rank_matches_materialised_svd(m, n, r):
    B_t, A_t, B_0, A_0 = random_factors(m, n, r, seed=m)
    s = 2.0
    expected = effective_rank(s * (B_t @ A_t - B_0 @ A_0))
    assert 1.0 < expected < 2 * r
    assert delta_effective_rank(B_t, A_t, B_0, A_0, s) == pytest.approx(expected, rel=1e-9)


def test_delta_effective_rank_of_unchanged_and_rank_one_updates():
    B_0, A_0, _, _ = random_factors(50, 40, 4, seed=5)
    assert delta_effective_rank(B_0, A_0, B_0, A_0, 0.5) == 0.0
    x, y = torch.randn(50, 1, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    assert delta_effective_rank(B_0 + x @ y.T, A_0, B_0, A_0, 0.5) == pytest.approx(1.0, abs=1e-9)
    B_t, A_t = B_0.float(), A_0.float() + 0.1  # float32 factors against float64 ones
    assert delta_effective_rank(B_t, A_t, B_0, A_0, 2.0) == pytest.approx(
        effective_rank(2.0 * (B_t.double() @ A_t.double() - B_0 @ A_0)), rel=1e-9
    )


def tiny_peft_model(init):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=init)
    return get_peft_model(tiny_llama(64, tie_word_embeddings=False), lora)


def perturb(peft_model, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.add_(0.05 * torch.randn(param.shape, generator=g))


def test_adapter_diagnostics_match_materialised_references():
    model = tiny_peft_model("olora")
    initial = capture_initial_factors(model)
    assert len(initial) == 4  # q_proj and v_proj in 2 layers
    perturb(model, seed=0)
    report = adapter_diagnostics(model, initial)
    assert set(report["layers"]) == set(initial)
    for name, (B_0, A_0) in initial.items():
        layer = model.get_submodule(name)
        B_t, A_t = layer.lora_B["default"].weight.detach(), layer.lora_A["default"].weight.detach()
        s = layer.scaling["default"]
        assert s == 2.0
        row = report["layers"][name]
        chordal = torch.linalg.norm(projector(B_t.double()) - projector(B_0.double())) / math.sqrt(2 * 4)
        assert row["subspace_distance"] == pytest.approx(float(chordal), rel=1e-6)
        assert 0.0 < row["subspace_distance"] < 1.0
        assert row["rel_change_B"] == pytest.approx(float(torch.linalg.norm(B_t - B_0) / torch.linalg.norm(B_0)))
        assert row["rel_change_A"] == pytest.approx(float(torch.linalg.norm(A_t - A_0) / torch.linalg.norm(A_0)))
        dW = s * (B_t.double() @ A_t.double() - B_0.double() @ A_0.double())  # (out, in), materialised
        assert row["delta_effective_rank"] == pytest.approx(effective_rank(dW), rel=1e-6)
    for key, mean in report["mean"].items():
        assert mean == pytest.approx(sum(row[key] for row in report["layers"].values()) / 4)


def test_adapter_diagnostics_before_training_and_with_zero_B():
    model = tiny_peft_model(True)  # plain LoRA: B_0 = 0
    initial = capture_initial_factors(model)
    report = adapter_diagnostics(model, initial)
    assert report["mean"]["delta_effective_rank"] == 0.0 and report["mean"]["rel_change_A"] == 0.0
    assert math.isnan(report["mean"]["subspace_distance"]) and math.isnan(report["mean"]["rel_change_B"])
    perturb(model, seed=1)
    assert adapter_diagnostics(model, initial)["mean"]["delta_effective_rank"] > 1.0


def test_adapter_diagnostics_accepts_names_from_the_lora_model_and_rejects_unknown_ones():
    model = tiny_peft_model("olora")
    from_inner = capture_initial_factors(model.base_model)  # names without the "base_model." prefix
    assert set(adapter_diagnostics(model, from_inner)["layers"]) == set(capture_initial_factors(model))
    with pytest.raises(AdapterError, match="no LoRA layer"):
        adapter_diagnostics(model, {"not.a.layer": (torch.zeros(2, 1), torch.zeros(1, 2))})


def test_batched_diagnostics_equal_the_per_layer_ones():
    """The GPU path (layers of a shape stacked) against the CPU path (the per-layer functions above)."""
    model = tiny_peft_model("olora")
    initial = capture_initial_factors(model)
    perturb(model, seed=2)
    per_layer = adapter_diagnostics(model, initial, batched=False)
    batched = adapter_diagnostics(model, initial, batched=True)
    assert list(batched["layers"]) == list(per_layer["layers"])
    for name, row in per_layer["layers"].items():
        for key, value in row.items():
            assert batched["layers"][name][key] == pytest.approx(value, rel=1e-12, abs=1e-12), (name, key)
    zero_B = tiny_peft_model(True)  # LoRA: B_0 = 0 gives NaN distances either way
    lora_initial = capture_initial_factors(zero_B)
    assert math.isnan(adapter_diagnostics(zero_B, lora_initial, batched=True)["mean"]["subspace_distance"])
    assert adapter_diagnostics(zero_B, lora_initial, batched=True)["mean"]["delta_effective_rank"] == 0.0


def test_cost_probe_is_the_largest_unit_of_a_call():
    initial = {"q": (torch.zeros(8, 2), torch.zeros(2, 8)), "k": (torch.zeros(4, 2), torch.zeros(2, 8)),
               "q2": (torch.zeros(8, 2), torch.zeros(2, 8)), "up": (torch.zeros(16, 2), torch.zeros(2, 8))}
    part, units = cost_probe(initial, batched=False)  # the loop: a layer is the unit
    assert list(part) == ["up"] and units == 4
    part, units = cost_probe(initial, batched=True)  # batched: a shape group (q, q2: 2 × 32 elements) is the unit
    assert sorted(part) == ["q", "q2"] and units == 3
    assert cost_probe({}, batched=True) == ({}, 0)


def test_batched_diagnostics_in_chunks_equal_the_whole_groups(monkeypatch):
    """A shape group split into stacks of one layer (a large model's memory bound) gives the same measures."""
    import oloraplus.eval.diagnostics as diagnostics

    model = tiny_peft_model("olora")
    initial = capture_initial_factors(model)
    perturb(model, seed=3)
    whole = adapter_diagnostics(model, initial, batched=True)
    monkeypatch.setattr(diagnostics, "CHUNK_BYTES", 1)
    assert len(diagnostics._chunks([("x", torch.zeros(4, 2), torch.zeros(2, 4))] * 3)) == 3
    assert adapter_diagnostics(model, initial, batched=True) == whole

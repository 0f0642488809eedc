"""Cosines taken from the factors equal cosines of the materialised deltas (by hand and PEFT's own)."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from compose_helpers import make_adapter
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from oloraplus.compose.interference import delta_cosine, delta_inner, interference, write_interference
from oloraplus.adapters.adapter_dir import Adapter, ScaledFactors, read_adapter


def _random_factors(m, n, r, s, seed):
    g = torch.Generator().manual_seed(seed)
    return ScaledFactors(A=torch.randn(r, n, generator=g), B=torch.randn(m, r, generator=g), s=s)


def _dense(f: ScaledFactors) -> torch.Tensor:
    return f.s * f.B.double() @ f.A.double()


def _adapter(name, modules):
    return Adapter(
        source=name, path=Path(name), config={}, modules=modules, fingerprint=None, base_model=None, method=None
    )


@pytest.mark.parametrize(("m", "n", "r1", "r2"), [(7, 5, 1, 3), (16, 40, 4, 4), (33, 9, 6, 2)])
def test_inner_and_cosine_match_materialised_deltas(m, n, r1, r2):
    a, b = _random_factors(m, n, r1, 0.5, seed=m), _random_factors(m, n, r2, -3.0, seed=n)
    b_shared = ScaledFactors(A=a.A + 0.1 * b.A[:1].expand_as(a.A), B=a.B, s=2.0)  # strongly correlated with a
    for x, y in [(a, b), (a, b_shared)]:
        assert delta_inner(x, y) == pytest.approx(float((_dense(x) * _dense(y)).sum()), rel=1e-10)
        expected = torch.nn.functional.cosine_similarity(_dense(x).flatten(), _dense(y).flatten(), dim=0)
        assert delta_cosine(x, y) == pytest.approx(float(expected), abs=1e-12)
    assert delta_cosine(a, b_shared) > 0.9


def test_identical_adapters_give_one(llama, tmp_path):
    make_adapter(llama, tmp_path / "a", r=3, alpha=5, seed=1)
    adapter = read_adapter(tmp_path / "a")
    result = interference([adapter, adapter])
    assert result.names == ["a#1", "a#2"]
    torch.testing.assert_close(result.overall, torch.ones(2, 2, dtype=torch.float64), atol=1e-12, rtol=0)
    for cos in result.layers.values():
        torch.testing.assert_close(cos, torch.ones(2, 2, dtype=torch.float64), atol=1e-12, rtol=0)


def test_orthogonal_column_or_row_spaces_give_zero():
    g = torch.Generator().manual_seed(0)
    Q_m, _ = torch.linalg.qr(torch.randn(12, 12, generator=g))
    Q_n, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    first = {  # layer "col": B's orthogonal; layer "row": A's orthogonal
        "col": ScaledFactors(A=torch.randn(3, 10, generator=g), B=Q_m[:, :3] * 2.0, s=1.0),
        "row": ScaledFactors(A=Q_n[:2], B=torch.randn(12, 2, generator=g), s=4.0),
    }
    second = {
        "col": ScaledFactors(A=torch.randn(4, 10, generator=g), B=Q_m[:, 3:7], s=0.5),
        "row": ScaledFactors(A=Q_n[2:5], B=torch.randn(12, 3, generator=g), s=1.0),
    }
    result = interference([_adapter("x", first), _adapter("y", second)])
    for cos in (result.layers["col"], result.layers["row"], result.overall):
        assert abs(float(cos[0, 1])) < 1e-6 and float(cos[0, 0]) == pytest.approx(1.0)


def test_zero_delta_has_zero_cosine():
    a = _random_factors(6, 5, 2, 1.0, seed=1)
    zero = ScaledFactors(A=a.A, B=torch.zeros_like(a.B), s=1.0)
    assert delta_cosine(a, zero) == 0.0 and delta_cosine(zero, zero) == 0.0


def test_gpt2_layers_match_peft_delta_weights_and_overall_is_rms(gpt2, tmp_path):
    specs = [dict(r=2, alpha=4, seed=1), dict(r=5, alpha=3, seed=2), dict(r=3, alpha=9, seed=3, use_rslora=True)]
    dense = []  # PEFT's own get_delta_weight, per module
    for i, spec in enumerate(specs):
        make_adapter(gpt2, tmp_path / f"a{i}", **spec)
        peft_model = PeftModel.from_pretrained(copy.deepcopy(gpt2.model), tmp_path / f"a{i}")
        dense.append({
            n.removeprefix("base_model.model."): m.get_delta_weight("default").double()
            for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)
        })
    result = interference([read_adapter(tmp_path / f"a{i}") for i in range(3)])

    assert set(result.layers) == set(dense[0]) and len(result.layers) == 8
    squares = torch.zeros(3, 3, dtype=torch.float64)
    for layer, cos in result.layers.items():
        flat = torch.stack([d[layer].flatten() for d in dense])
        flat = flat / flat.norm(dim=1, keepdim=True)
        torch.testing.assert_close(cos, flat @ flat.T, atol=1e-6, rtol=0)
        squares += (flat @ flat.T) ** 2
    torch.testing.assert_close(result.overall, (squares / len(result.layers)).sqrt(), atol=1e-6, rtol=0)
    assert 0.0 < float(result.overall[0, 1]) < 0.5  # independent random deltas: nearly orthogonal


def test_write_interference(tmp_path):
    a, b = _random_factors(8, 6, 2, 1.0, seed=1), _random_factors(8, 6, 3, 1.0, seed=2)
    result = interference([_adapter("math", {"l0": a, "l1": b}), _adapter("code", {"l0": b, "l1": a})])
    json_path, png_path = write_interference(result, tmp_path / "out")

    data = json.loads(json_path.read_text())
    assert data["adapters"] == ["math", "code"] and data["num_layers"] == 2
    assert data["overall_rms_cosine"][0][1] == pytest.approx(abs(delta_cosine(a, b)))
    assert data["layers"]["l1"][1][0] == pytest.approx(delta_cosine(b, a))
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 1000
    assert not math.isnan(data["overall_rms_cosine"][0][0])

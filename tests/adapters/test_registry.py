"""The method registry is the one place that declares each method: config, optimizer, export, compose-study and
the CLI read it. Checked against what the methods actually build (parameter names, shifted base, saved config)."""

import dataclasses
import subprocess
import sys

import pytest
import torch

from oloraplus.adapters import registry
from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.errors import AdapterError
from oloraplus.optim.ratio import build_optimizer
from tests.helpers import group_names


def test_every_method_has_one_record_in_its_own_module():
    """Every module in adapters/methods registers itself: the built-ins in CLI order, then the rest (eva)."""
    from oloraplus import config
    from oloraplus.compose import study_spec

    assert registry.names() == registry.method_modules() == config.METHODS == registry.BUILTIN + ("eva",)
    for name in registry.names():
        module = sys.modules[f"oloraplus.adapters.methods.{name}"]
        assert module.METHOD is registry.get(name)
    assert study_spec.COMPOSABLE == ("lora", "olora", "pissa", "eva")


def test_the_order_does_not_depend_on_which_method_module_was_imported_first(monkeypatch):
    records = {m.name: m for m in registry.methods()}
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_load_builtin", lambda: None)
    for name in ("eva", "hira", "lora", "olora", "dora", "pissa", "ohora"):
        registry.register(records[name])
    assert registry.names() == registry.BUILTIN + ("eva",)


def _calibration(tokens: torch.Tensor) -> list[dict]:
    """Two training-like batches (every token scored) for data-driven inits; the others must ignore them."""
    return [{"input_ids": t, "labels": t} for t in (tokens, tokens.roll(1, dims=1))]


@pytest.mark.parametrize("name", registry.names())
def test_each_record_states_what_its_attach_builds(name, make_model, tokens):
    """Markers name the trainable factors exactly; shifts_base: the base moved and export needs the initial factors.
    Every attach function takes the calibration batches."""
    method = registry.get(name)
    model = make_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model, initial = attach_adapter(model, AdapterSpec(name, rank=4, alpha=8.0), _calibration(tokens))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    A = [n for n in trainable if any(m in n for m in method.a_markers)]
    B = [n for n in trainable if any(m in n for m in method.b_markers)]
    assert len(A) == len(B) == 14  # 7 linears × 2 blocks
    groups = group_names(peft_model, build_optimizer(peft_model, lr=1e-3, ratio=4.0))
    assert (sorted(groups["A"]), sorted(groups["B"])) == (sorted(A), sorted(B))
    after = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p
             for n, p in peft_model.named_parameters()}
    moved = any(not torch.equal(after[n], p) for n, p in before.items() if n in after and n.endswith("proj.weight"))
    assert bool(initial) == method.shifts_base  # the initial factors export needs to undo the shift
    assert moved or not method.shifts_base  # (OHoRA also folds W_res, but its layer saves A0, B0 itself)
    init = getattr(peft_model.peft_config["default"], "init_lora_weights", True)
    assert registry.init_shifts_base(init) == method.shifts_base
    assert not (method.shifts_base and registry.init_is_base_relative(init))  # its raw factors never sum


@pytest.mark.parametrize("init, shifts, base_relative", [
    (True, False, True), (False, False, True), ("eva", False, True), ("gaussian", False, True),
    ("olora", True, False), ("pissa", True, False), ("pissa_niter_4", True, False), ("PiSSA", True, False),
    ("loftq", False, False), ("corda", False, False), (1, False, False),
])
def test_which_inits_shift_the_base_and_which_are_base_relative(init, shifts, base_relative):
    """Export rewrites what our methods shifted; compose and llama.cpp take only plain inits (PEFT's LoftQ, CorDA
    and the like moved W too, so neither of them is base-relative)."""
    assert registry.init_shifts_base(init) == shifts
    assert registry.init_is_base_relative(init) == base_relative


def test_an_unknown_method_lists_the_registered_ones():
    with pytest.raises(AdapterError, match=r"--method 'qlora': unknown; choose one of lora, olora, pissa, dora"):
        registry.get("qlora")


def test_a_registered_method_is_attached_and_grouped_through_its_record(make_model, monkeypatch):
    """A new method = one record: attach_adapter calls its function and the λ optimizer uses its markers
    (swapped here, so only a registry-reading optimizer puts lora_B at η)."""
    twin = dataclasses.replace(registry.get("lora"), name="twin", attach=f"{__name__}:attach_twin",
                               a_markers=("lora_B",), b_markers=("lora_A",))
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_load_builtin", lambda: None)
    registry.register(twin)
    peft_model, _ = attach_adapter(make_model("llama"), AdapterSpec("twin", rank=2))
    assert peft_model.twin and peft_model.peft_config["default"].r == 2
    groups = group_names(peft_model, build_optimizer(peft_model, lr=1e-3, ratio=4.0))
    assert len(groups["A"]) == len(groups["B"]) == 14
    assert all(".lora_B." in n for n in groups["A"]) and all(".lora_A." in n for n in groups["B"])
    with pytest.raises(AdapterError, match=r"--method 'lora': unknown; choose one of twin"):
        registry.get("lora")
    with pytest.raises(AdapterError, match="already registered with other facts"):
        registry.register(dataclasses.replace(twin, help="another"))


def attach_twin(model, spec, targets, calibration=None):
    from oloraplus.adapters.build import attach_lora

    peft_model, initial = attach_lora(model, spec, targets, calibration)
    peft_model.twin = True
    return peft_model, initial


def test_the_cli_help_lists_every_method_without_importing_peft():
    code = ("import sys, oloraplus.cli.main as m; print(m.DESCRIPTION); "
            "print('peft' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for method in registry.methods():
        assert f"  {method.name:<6} {method.help}" in out
    assert out.strip().endswith("False False")

"""Small helpers that tests in several folders share (fixtures live in conftest.py)."""

from __future__ import annotations

import torch

TIMING_KEYS = ("train_runtime_s", "tokens_per_s", "seconds_per_step", "load_s", "compile_s",  # this session's speed
               "diagnostics_calls", "diagnostics_s", "diagnostics_loop_share", "diagnostics_after_loop_s")
# also differ between a resumed run and an uninterrupted one (a resumed session may reuse the compiled graphs)
SESSION_KEYS = (*TIMING_KEYS, "resumed_from_step", "compile_graphs")


def group_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, list[str]]:
    """The parameter names in each named group of a λ optimizer: 'A', 'B', 'other', 'no_decay' ([] when empty)."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups: dict[str, list[str]] = {"A": [], "B": [], "other": [], "no_decay": []}
    for group in optimizer.param_groups:
        groups[group["name"]] = [names[id(p)] for p in group["params"]]
    return groups


def assert_reproduces_on_untouched_base(trained: torch.nn.Module, loaded: torch.nn.Module, rank: int) -> None:
    """A saved adapter, loaded onto a fresh copy of the base, gives the trained model's logits (to 1e-5) and has the
    expected saved rank (2r for OLoRA/PiSSA: the base-relative [At; A0], [Bt, −B0])."""
    assert loaded.peft_config[loaded.active_adapter].r == rank
    ids = torch.arange(3, 35).reshape(2, 16)
    trained.eval(), loaded.eval()
    with torch.no_grad():
        expected, got = trained(input_ids=ids).logits, loaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)

"""The automatic diagnostics schedule follows the measured cost of a call (a fake clock and fake diagnostics:
no timing is asserted), and the initial factors move to the model's device once."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from oloraplus.train import recipe
from oloraplus.train.callbacks import BUDGET, DiagnosticsCallback
from tests.train.test_step_sync import tiny_cfg

LAYERS = 100  # a probe (one layer) costs 1 % of a call, as for SmolLM2 on a CPU (1 of 210)
STEP_S = 1.0  # every training step takes one second of the fake clock


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_initial(n: int = LAYERS) -> dict:
    return {f"layer{i}": (torch.zeros(6, 2), torch.zeros(2, 5)) for i in range(n)}


def simulate(call_s: float, steps: int, logging_steps: int, tmp_path, every: int = 0) -> dict:
    """Run the callback over `steps` fake steps; a diagnostics call costs call_s, each layer call_s / LAYERS."""
    clock = FakeClock()
    parts: list[int] = []

    def measure(model, initial: dict) -> dict:
        parts.append(len(initial))
        clock.now += call_s * len(initial) / LAYERS
        return {"mean": {"subspace_distance": 0.5}}

    log = tmp_path / f"log-{call_s}-{every}.jsonl"
    cb = DiagnosticsCallback(fake_initial(), log, every=every, logging_steps=logging_steps, clock=clock,
                             measure=measure)
    model = torch.nn.Linear(2, 2)
    state = SimpleNamespace(global_step=0, max_steps=steps, is_world_process_zero=True)
    cb.on_train_begin(None, state, None, model=model)
    shares, watched = [], []
    for step in range(1, steps + 1):
        clock.now += STEP_S
        state.global_step = step
        watched.append(cb.reads_weights_at(state))  # the watch asks first; the callback must agree
        cb.on_step_end(None, state, None, model=model)
        shares.append(cb.spent / (clock.now - cb.start))
    loop_end = clock.now
    cb.on_train_end(None, state, None, model=model)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return {"steps": [r["step"] for r in records if "diag_subspace_distance" in r], "shares": shares,
            "records": records, "parts": parts, "loop_s": loop_end, "watched": watched, "cb": cb}


def test_a_cheap_diagnostic_runs_at_the_logging_cadence(tmp_path):
    run = simulate(call_s=0.001, steps=100, logging_steps=5, tmp_path=tmp_path)
    # step 1: the probe (one layer: the CPU loop's unit), then every logging step; the last after the loop
    assert run["parts"][0] == 1 and set(run["parts"][1:]) == {LAYERS}
    assert run["steps"] == [*range(5, 100, 5), 100]
    assert run["watched"][0] and [s for s, w in enumerate(run["watched"], 1) if w][1:] == list(range(5, 100, 5))
    assert max(run["shares"]) <= BUDGET


def test_an_expensive_diagnostic_runs_rarely_and_within_the_budget(tmp_path):
    run = simulate(call_s=1.0, steps=300, logging_steps=5, tmp_path=tmp_path)
    in_loop = run["steps"][:-1]
    # each second of diagnostics needs 50 s of loop (steps + diagnostics): the k-th call waits for step ≥ 49 k
    assert 4 <= len(in_loop) <= 6, in_loop
    assert all(step >= 49 * (k + 1) for k, step in enumerate(in_loop)), in_loop
    assert all(step % 5 == 0 for step in in_loop)
    assert max(run["shares"]) <= BUDGET + 1e-12
    assert run["steps"][-1] == 300  # the final state, measured after the loop
    summary = run["cb"].summary()
    assert summary["diagnostics_calls"] == len(in_loop)
    assert abs(summary["diagnostics_s"] - (1.0 / LAYERS + len(in_loop) * 1.0)) < 1e-9  # probe + calls
    assert abs(summary["diagnostics_loop_share"] - summary["diagnostics_s"] / run["loop_s"]) < 1e-12
    assert summary["diagnostics_after_loop_s"] == 1.0


def test_a_run_too_short_for_any_call_still_ends_with_the_final_state(tmp_path):
    run = simulate(call_s=1.0, steps=20, logging_steps=1, tmp_path=tmp_path)
    assert run["steps"] == [20] and run["cb"].calls == 0
    assert max(run["shares"]) <= BUDGET  # only the probe (one layer of 100: 0.01 s) ran in the loop


def test_an_explicit_schedule_runs_whatever_it_costs(tmp_path):
    run = simulate(call_s=1.0, steps=12, logging_steps=5, tmp_path=tmp_path, every=4)
    assert run["steps"] == [1, 4, 8, 12] and set(run["parts"]) == {LAYERS}
    assert run["cb"].summary()["diagnostics_calls"] == 4 and run["cb"].summary()["diagnostics_loop_share"] > BUDGET
    assert run["cb"].summary()["diagnostics_after_loop_s"] == 0.0  # the last step was measured in the loop


def test_initial_factors_move_to_the_models_device_once(tmp_path):
    cb = DiagnosticsCallback(fake_initial(2), tmp_path / "log.jsonl")
    with torch.device("meta"):  # any device other than the factors' CPU
        model = torch.nn.Linear(2, 2)
    cb.on_train_begin(None, SimpleNamespace(global_step=0), None, model=model)
    assert {t.device.type for factors in cb.initial.values() for t in factors} == {"meta"}


def test_a_real_run_logs_its_diagnostics_cost_and_final_state(tiny_llama_dir, alpaca_file, tmp_path, one_thread):
    out = tmp_path / "run"
    recipe.train(tiny_cfg(tiny_llama_dir, alpaca_file, out, max_steps=4, logging_steps=1))
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    diag = [r for r in records if "diag_subspace_distance" in r]
    assert diag and diag[-1]["step"] == 4 and 0.0 < diag[-1]["diag_subspace_distance"] < 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diagnostics_s"] > 0 and 0 < metrics["diagnostics_loop_share"] < 1  # the probe at least
    assert metrics["diagnostics_calls"] == len(diag) - 1 and metrics["diagnostics_after_loop_s"] > 0

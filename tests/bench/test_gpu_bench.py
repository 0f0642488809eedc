"""bench/gpu_bench.py plans the issue's comparisons and bench/gpu_report.py judges them right, on fake results."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from gpu_bench import FULL, QUICK, plan  # noqa: E402
from gpu_report import comparison, render  # noqa: E402

RATE = 800e12  # a measured bf16 matmul rate, FLOP/s


def run(tokens_per_s: float, runtime: float, eval_loss: float, memory_mib: float, wall: float) -> dict:
    return {"steps": 242, "tokens_per_s": tokens_per_s, "seconds_per_step": runtime / 242, "train_runtime_s": runtime,
            "model_flops": 0.3 * RATE * runtime, "peak_gpu_mib": memory_mib, "eval_loss": eval_loss, "wall_s": wall}


def fake_results() -> dict:
    return {
        "models": {"TinyLlama-1.1B": {"params": 1_100_000_000}},
        "matmul": {"best_flops": RATE, "device": "NVIDIA H200", "dtype": "torch.bfloat16", "n": 8192,
                   "torch": "2.11", "cuda": "13.0"},
        # batch 4: 3.5× the tokens/s, less memory, the same loss to bf16 rounding
        "TinyLlama-1.1B_b4_baseline": run(2400, 70.0, 10.80, 8000, 120),
        "TinyLlama-1.1B_b4_oloraplus": run(8400, 20.0, 10.81, 6000, 50),
        "TinyLlama-1.1B_b4_padded": run(5000, 34.0, 10.80, 7000, 64),
        # batch 32: only 1.5× (missed), more memory (missed), a loss that differs (missed)
        "TinyLlama-1.1B_b32_baseline": run(4000, 40.0, 10.70, 30000, 90),
        "TinyLlama-1.1B_b32_oloraplus": run(6000, 26.0, 10.90, 31000, 70),
        "SmolLM2-135M_b4_baseline": {"error": "RuntimeError: CUDA out of memory", "log": "x"},
        "SmolLM2-135M_b4_oloraplus": run(9000, 5.0, 10.9, 900, 30),
    }


def with_new_measures() -> dict:
    """fake_results plus what issue 19/20 added: steady state, fast paths, diagnostics, the big-model job."""
    results = fake_results()
    results["TinyLlama-1.1B_b4_baseline"].update(steady_seconds_per_step=0.30, steady_tokens_per_s=2500.0,
                                                 warmup_s=4.0)
    results["TinyLlama-1.1B_b4_oloraplus"].update(
        steady_seconds_per_step=0.075, steady_tokens_per_s=10000.0, warmup_s=2.5, compile_s=12.0,
        diagnostics_calls=9, diagnostics_s=0.3, diagnostics_loop_share=0.015, diagnostics_after_loop_s=0.05,
        fast_paths={"packing": True, "response_only_loss": True, "compile_modules": 22, "fused_adamw": True})
    results["TinyLlama-1.1B_b32_oloraplus"].update(diagnostics_calls=2, diagnostics_s=0.4,
                                                   diagnostics_loop_share=0.0154, diagnostics_after_loop_s=0.1)
    results["TinyLlama-1.1B_b32_nodiag"] = run(6100, 25.0, 10.90, 31000, 69)
    results["Llama-3-8B_nf4_checkpointing"] = {
        **run(3000, 30.0, 11.0, 9 * 1024, 200), "params": 7.5e9, "build_s": 8.0, "save_s": 20.0, "run_s": 90.0,
        "spec": {"shape": "Llama-3-8B", "options": {"quantize": "nf4", "tokens_per_batch": 2048}},
        "fast_paths": {"linear_4bit": 224, "gradient_checkpointing": True, "packing": True,
                       "response_only_loss": True, "compile_modules": 0, "fused_adamw": True}}
    return results


def test_report_shows_steady_state_fast_paths_diagnostics_and_the_big_model():
    text = render(with_new_measures(), "python bench/gpu_bench.py", 400.0, pending=["SmolLM2-135M_b4_padded"])
    assert "| real tokens/s, steady state (steps > 5) | 2,500 | 10,000 | n/a |" in text
    assert "| seconds per step, steady state (steps > 5) | 0.300 | 0.075 | n/a |" in text
    assert "| warm-up: the first 5 steps (s) | 4.0 | 2.5 | n/a |" in text
    assert "| compile (s, `compile_s`) | n/a | 12.0 | n/a |" in text
    assert ("| fast paths, as the run used them | (paper recipe) | packing on, response-only loss on, "
            "compile 22 modules, fused AdamW on |") in text
    assert "9 calls, 0.30 s (1.5 % of the loop)" in text
    # the loop with and without diagnostics, from the two b32 runs
    assert "train loop 26.0 s with diagnostics, 25.0 s without (+4.0 %" in text
    assert "steady state: 4.00×" in text  # 0.300 / 0.075 beside the whole-loop 3.5×
    assert "| 4-bit linear layers in the trained model | 224 |" in text
    assert "| Llama-3-8B_nf4_checkpointing: peak GPU memory ≤ 10 GiB (issue 20) | 9.00 GiB | yes |" in text
    assert "**Partial**: 1 job(s) not run yet" in text and "| SmolLM2-135M_b4_padded | not run yet |" in text


def test_plan_runs_what_the_targets_need_first_then_the_big_model_then_extras():
    jobs = plan(FULL, "/d/alpaca.json", "/m", n_train=967)
    tags = [j.tag for j in jobs]
    assert tags == ["model_TinyLlama-1.1B", "TinyLlama-1.1B_b4_baseline", "TinyLlama-1.1B_b4_oloraplus", "matmul",
                    "TinyLlama-1.1B_b32_baseline", "TinyLlama-1.1B_b32_oloraplus", "TinyLlama-1.1B_b32_nodiag",
                    "Llama-3-8B_nf4_checkpointing", "TinyLlama-1.1B_b4_padded",
                    "model_SmolLM2-135M", "SmolLM2-135M_b4_baseline", "SmolLM2-135M_b4_oloraplus"]
    spec = {j.tag: j.spec for j in jobs}
    assert spec["TinyLlama-1.1B_b4_baseline"]["setup"]["steps"] == 242  # ceil(967 / 4): one epoch
    assert spec["TinyLlama-1.1B_b32_oloraplus"]["setup"]["steps"] == 31
    assert spec["SmolLM2-135M_b4_oloraplus"]["setup"]["steps"] == FULL.short_steps
    assert spec["TinyLlama-1.1B_b4_padded"]["options"] == {"packing": False}
    # the loop with and without diagnostics: the same run, diagnostics off
    assert spec["TinyLlama-1.1B_b32_nodiag"]["options"] == {"diagnostics_steps": -1}
    assert spec["TinyLlama-1.1B_b32_nodiag"]["setup"] == spec["TinyLlama-1.1B_b32_oloraplus"]["setup"]
    # each pair trains the same model on the same setup; only the implementation differs
    for key in ("TinyLlama-1.1B_b4", "TinyLlama-1.1B_b32", "SmolLM2-135M_b4"):
        assert spec[f"{key}_baseline"]["setup"] == spec[f"{key}_oloraplus"]["setup"]
        assert spec[f"{key}_baseline"]["side"] == "baseline" and spec[f"{key}_oloraplus"]["side"] == "oloraplus"
    assert spec["matmul"] == {"n": 8192} and spec["model_TinyLlama-1.1B"]["shape"] == "TinyLlama-1.1B"
    big = spec["Llama-3-8B_nf4_checkpointing"]["options"]
    assert big["quantize"] == "nf4" and big["gradient_checkpointing"] is True
    assert big["tokens_per_batch"] == 4 * 512 and big["max_length"] == 512  # batch 4 × 512
    assert all(j.timeout_s > 0 for j in jobs)  # every job has its own timeout
    assert [j.tag for j in plan(QUICK, "/d.json", "/m", n_train=100)][:4] == [
        "model_tiny", "tiny_b2_baseline", "tiny_b2_oloraplus", "matmul"]


def test_comparison_numbers():
    c = comparison(fake_results(), "TinyLlama-1.1B_b4", RATE)
    assert c["speedup"] == 3.5 and c["memory_ratio"] == 0.75 and c["loss_equal"]
    assert abs(c["mfu"] - 0.3) < 1e-12 and abs(c["loss_delta"] - 0.01) < 1e-9 and c["process_speedup"] == 2.4
    assert not comparison(fake_results(), "TinyLlama-1.1B_b32", RATE)["loss_equal"]  # 0.2 > 2^-8 × 10.7
    assert comparison(fake_results(), "SmolLM2-135M_b4", RATE) == {}  # the baseline failed


def test_report_names_the_device_judges_each_target_and_shows_failures():
    text = render(fake_results(), "python bench/gpu_bench.py", 400.0)
    assert "Device: **NVIDIA H200**" in text and "800.0 TFLOP/s" in text
    lines = text.splitlines()

    def verdict(start: str) -> str:
        return next(line for line in lines if line.startswith(f"| {start}")).rsplit("|", 2)[-2].strip()

    assert verdict("TinyLlama-1.1B_b4: tokens/s ≥ 3× the baseline") == "yes"
    assert verdict("TinyLlama-1.1B_b32: tokens/s ≥ 2× the baseline") == "**no**"
    assert verdict("TinyLlama-1.1B_b32: MFU ≥ 25%") == "yes"  # 30 %
    assert verdict("TinyLlama-1.1B_b4: peak GPU memory") == "yes"
    assert verdict("TinyLlama-1.1B_b32: peak GPU memory") == "**no**"
    assert verdict("TinyLlama-1.1B_b32: eval loss equal") == "**no**"
    assert verdict("SmolLM2-135M_b4: both runs finished") == "**no**"
    assert "**paper recipe (`bench/baseline.py`) did not finish**: `RuntimeError: CUDA out of memory`" in text
    assert "| real (non-padding) tokens/s, whole loop | 2,400 | 8,400 | 5,000 |" in text
    assert "| MFU (model FLOPs / measured bf16 matmul rate) | 30.0 % | 30.0 % | 30.0 % |" in text
    assert "--quick" not in text and "--quick" in render(fake_results(), "cmd", 1.0, quick=True)

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


def test_plan_compares_the_paper_batch_and_batch_32_over_one_epoch():
    jobs = plan(FULL, "/d/alpaca.json", "/m", n_train=967)
    tags = [j.tag for j in jobs]
    assert tags == ["models", "matmul",
                    "TinyLlama-1.1B_b4_baseline", "TinyLlama-1.1B_b4_oloraplus", "TinyLlama-1.1B_b4_padded",
                    "TinyLlama-1.1B_b32_baseline", "TinyLlama-1.1B_b32_oloraplus",
                    "SmolLM2-135M_b4_baseline", "SmolLM2-135M_b4_oloraplus"]
    spec = {j.tag: j.spec for j in jobs}
    assert spec["TinyLlama-1.1B_b4_baseline"]["setup"]["steps"] == 242  # ceil(967 / 4): one epoch
    assert spec["TinyLlama-1.1B_b32_oloraplus"]["setup"]["steps"] == 31
    assert spec["SmolLM2-135M_b4_oloraplus"]["setup"]["steps"] == FULL.short_steps
    assert spec["TinyLlama-1.1B_b4_padded"]["options"] == {"packing": False}
    # each pair trains the same model on the same setup; only the implementation differs
    for key in ("TinyLlama-1.1B_b4", "TinyLlama-1.1B_b32", "SmolLM2-135M_b4"):
        assert spec[f"{key}_baseline"]["setup"] == spec[f"{key}_oloraplus"]["setup"]
        assert spec[f"{key}_baseline"]["side"] == "baseline" and spec[f"{key}_oloraplus"]["side"] == "oloraplus"
    assert spec["matmul"] == {"n": 8192} and spec["models"]["shapes"] == ["TinyLlama-1.1B", "SmolLM2-135M"]
    assert [j.tag for j in plan(QUICK, "/d.json", "/m", n_train=100)][2:5] == [
        "tiny_b2_baseline", "tiny_b2_oloraplus", "tiny_b2_padded"]


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
    assert "**paper recipe (`bench/baseline.py`) failed**: `RuntimeError: CUDA out of memory`" in text
    assert "| real (non-padding) tokens/s | 2,400 | 8,400 | 5,000 |" in text
    assert "| MFU (model FLOPs / measured bf16 matmul rate) | 30.0 % | 30.0 % | 30.0 % |" in text
    assert "--quick" not in text and "--quick" in render(fake_results(), "cmd", 1.0, quick=True)

"""`gpu_bench.py --quick` on the CPU: the real workers (random tiny model, both sides, the big-model job) run
end to end and report what the targets need; the numbers themselves mean nothing here."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import requires_smollm2

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from gpu_bench import main  # noqa: E402


@pytest.mark.smollm2  # builds the models with SmolLM2's tokenizer from the converted cache
@requires_smollm2
def test_quick_bench_runs_the_pair_and_the_big_model_job(alpaca_file, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "gpu_results.md"
    rc = main(["--quick", "--only", "tiny_b2_baseline,tiny_b2_oloraplus,tiny_nf4_checkpointing",
               "--data", str(alpaca_file), "--out", str(out)])
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert rc == 0, {tag: r.get("log_tail") for tag, r in results.items() if "error" in r}
    assert list(results) == ["model_tiny", "tiny_b2_baseline", "tiny_b2_oloraplus", "tiny_nf4_checkpointing"]
    base, ours, big = results["tiny_b2_baseline"], results["tiny_b2_oloraplus"], results["tiny_nf4_checkpointing"]
    assert base["steps"] == ours["steps"] == 8  # ceil(16 / 2): the quick "epoch"
    for run in (base, ours):  # steps 6-8 after the 5 warm-up steps
        assert run["steady_seconds_per_step"] > 0 and run["warmup_s"] > 0
    assert ours["fast_paths"]["packing"] is True and ours["fast_paths"]["response_only_loss"] is True
    assert ours["fast_paths"]["fused_adamw"] is False  # torch's fused AdamW is CUDA-only here
    lean_layers = ours["fast_paths"]["lean_lora"]  # every adapted layer of the tiny model; 5 of 7 have siblings
    assert lean_layers > 0 and ours["fast_paths"]["lean_shared"] == lean_layers * 5 // 7
    assert ours["fast_paths"]["packed_mask_hook"] is False  # CUDA-only by default
    assert "fast_paths" not in base and 0 <= ours["diagnostics_loop_share"] < 1
    assert 0 < ours["process_s"] <= ours["wall_s"] and 0 < base["process_s"] <= base["wall_s"]
    assert abs(ours["eval_loss"] - base["eval_loss"]) < 1e-4  # same batches, fp32
    assert big["steps"] == 7 and big["steady_steps"] == 2 and big["params"] > 0
    assert isinstance(big["fast_paths"]["linear_4bit"], int)
    report = out.read_text()
    assert "| tiny_nf4_checkpointing | done |" in report and "Partial" not in report

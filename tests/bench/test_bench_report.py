"""bench/report.py on a synthetic full-size result set: every section renders and its ratios are right."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from report import mean_train_loss, render, summary_lines, write_scaling_plot  # noqa: E402
from run_bench import FULL, plan  # noqa: E402

FM = {"n_matmul": 1000, "n_lora": 10, "n_layers": 2, "d_attn": 8}
MACHINE = {"cpu": "Test CPU", "logical_cpus": 2, "usable_cpus": 2, "torch_threads": 2, "platform": "Linux",
           "versions": {"python": "3.11", "torch": "2", "transformers": "5", "peft": "0.21", "oloraplus": "0.1"},
           "loadavg": [0.1, 0.1, 0.1], "best_flops": 100e9, "median_flops": 90e9, "n": 2048, "reps": 8}


def training(tokens_per_s: float, runtime: float, eval_loss: float) -> dict:
    return {"steps": 10, "train_loss": 1.5, "eval_loss": eval_loss, "eval_tokens": 900, "train_tokens": 2000,
            "processed_tokens": 8000, "train_runtime_s": runtime, "tokens_per_s": tokens_per_s,
            "seconds_per_step": runtime / 10, "model_flops": 50e9 * runtime, "trainable_params": 123,
            "peak_rss_mib": 1000.0, "wall_s": runtime + 10}


def synthetic() -> dict:
    setup = {"data": "/x/alpaca_en_demo.json", "steps": 10, "batch_size": 4, "eval_size": 32, "max_length": 512}
    results = {
        "machine_start": MACHINE, "machine_end": MACHINE,
        "load_cached": {"first_s": 0.8, "best_s": 0.7}, "load_cold": {"first_s": 40.0, "best_s": 40.0},
        "olora_init": {"layers": 210, "shapes": [[576, 576]], "thin_qr_s": 0.5, "full_qr_s": 5.0,
                       "attach_oloraplus_s": 1.0, "attach_peft_s": 3.0,
                       "max_abs_diff": {"A": 1e-6, "B": 1e-7, "W_res": 1e-7}, "spec": {"reps": 3}},
        "train_baseline": {**training(100.0, 20.0, 1.30), "spec": {"setup": setup}},
        "train_oloraplus": {**training(200.0, 10.0, 1.31), "spec": {"setup": setup}},
        "loss_compare": {"step_s": {"standard": 1.2, "response_only": 1.0},
                         "peak_step_mib": {"standard": 500.0, "response_only": 300.0}, "max_abs_loss_diff": 1e-7,
                         "max_abs_grad_diff": 1e-8, "real_tokens_per_step": 700, "scored_tokens_per_step": 350,
                         "spec": {"setup": setup, "batches": 3, "reps": 4}},
        "train_oloraplus_same_order": {**training(150.0, 13.0, 1.30), "spec": {"setup": setup}},
        "train_order_1": {**training(150.0, 13.0, 1.35), "spec": {"setup": setup}},
        "train_order_2": {**training(150.0, 13.0, 1.28), "spec": {"setup": setup}},
        "generation": {"prompts": 64, "max_new_tokens": 32, "one_by_one_s": 40.0, "default_batch_size": 32,
                       "batched": {"16": {"seconds": 10.0, "identical": 64}, "32": {"seconds": 8.0, "identical": 63}}},
    }
    for seq, seconds in [(128, 1.0), (256, 2.0), (512, 5.0)]:
        results[f"seq_{seq}"] = {"step_s": seconds, "peak_step_mib": seq / 2, "model_flops": 1e9 * seq,
                                 "flop_model": FM, "trainable_params": 99,
                                 "spec": {"seq": seq, "batch": 2, "rank": 32}}
    for rank, seconds in [(8, 1.0), (32, 1.5)]:
        results[f"rank_{rank}"] = {"step_s": seconds, "peak_step_mib": 10.0, "model_flops": 1e9, "flop_model": FM,
                                   "trainable_params": rank * 1000, "spec": {"seq": 256, "batch": 2, "rank": rank}}
    return results


def test_every_section_renders_with_its_ratios(tmp_path):
    plot = write_scaling_plot(synthetic(), tmp_path / "r_scaling.png")
    text = render(synthetic(), FULL, "python bench/run_bench.py", 600.0, quick=False, plot=plot)
    assert plot.stat().st_size > 1000 and "![scaling](r_scaling.png)" in text
    assert "**2.00× faster**" in text  # tokens/s 200 vs 100
    assert "| 75 % |" in text  # padding share: 1 − 2000/8000
    assert "| 50.0 % | 50.0 % |" in text  # MFU: 50 GFLOP/s of 100
    assert "**1.20× faster**" in text and "-200 MiB" in text  # response-only loss
    assert "**10.0×**" in text  # init
    assert "| `generate_batched`, batch 16 | 10.0 s | **4.0×** | 64 / 64 |" in text
    assert "| `generate_batched`, batch 32 (the default) | 8.0 s | **5.0×** | 63 / 64 |" in text
    assert "**1.50× faster**" in text and "| Δ = +0.0000 |" in text  # the same-order run: 150 vs 100 tokens/s
    assert "(1, 2; same split, init and examples) ends at eval loss 1.3500, 1.2800, against 1.3000" in text
    assert "a spread of 0.0700 over 3 orders" in text
    assert "40.0 s" in text and "Noisy machine" not in text
    ratios = [line.rsplit("|", 2)[-2].strip() for line in text.splitlines() if line.startswith(("| 128 |", "| 256 |",
                                                                                                "| 512 |"))]
    assert ratios == ["1.00", "1.00", "1.25"]  # 5 s for 4× the tokens of 1 s
    assert len(summary_lines(synthetic())) == 8 + 5  # one line per section (three for training), one per scaling row


def test_a_failed_measurement_is_reported_not_fatal():
    results = synthetic()
    results["train_oloraplus"] = {"error": "RuntimeError: boom", "spec": {}}
    text = render(results, FULL, "cmd", 1.0, quick=True, plot=None)
    assert "**train_oloraplus failed**: `RuntimeError: boom`" in text and "`--quick`" in text


def test_plan_runs_each_measurement_once_and_filters_sections():
    jobs = plan(FULL, "/data.json", {"train", "loss"})
    assert [tag for _, tag, _, _ in jobs] == ["train_baseline", "train_oloraplus", "train_oloraplus_same_order",
                                              "train_oloraplus_padded", "train_order_1", "train_order_2",
                                              "loss_compare"]
    padded = next(spec for _, tag, _, spec in jobs if tag == "train_oloraplus_padded")
    assert padded["options"] == {"packing": False}
    tags = [tag for _, tag, _, _ in plan(FULL, "/data.json", {"machine", "load", "init", "train", "loss",
                                                               "generate", "scaling"})]
    assert len(tags) == len(set(tags)) and "load_cold" in tags and tags[0] == "machine_start"


def test_sections_that_were_not_run_are_left_out():
    results = {tag: r for tag, r in synthetic().items() if tag.startswith(("machine", "loss"))}
    text = render(results, FULL, "cmd", 1.0, quick=False, plot=None)
    assert "## Response-only loss" in text and "## Machine" in text
    assert "## Model load" not in text and "## Training" not in text and "## Generation" not in text


def test_update_re_measures_some_sections_and_keeps_the_others(tmp_path):
    import json

    from run_bench import main

    out = tmp_path / "results.md"
    kept = {tag: r for tag, r in synthetic().items() if tag.startswith("train_")}
    (tmp_path / "results.json").write_text(json.dumps({**kept, "_meta": {"commands": ["python bench/run_bench.py"]}}))
    data = tmp_path / "data.json"
    data.write_text("[]")
    assert main(["--quick", "--only", "machine", "--update", "--out", str(out), "--data", str(data)]) == 0
    text = out.read_text()
    assert "## Training side by side" in text and "**2.00× faster**" in text  # kept from the earlier run
    assert "## Machine" in text and "Test CPU" not in text  # measured again, on this machine
    import torch

    cuda_line = "CUDA device:" if torch.cuda.is_available() else "CUDA: not available on this machine"
    assert cuda_line in text
    command_line = next(line for line in text.splitlines() if line.startswith("Command:"))
    assert command_line.startswith("Command: `python bench/run_bench.py`, then `python bench/run_bench.py --quick "
                                   "--only machine --update")  # both commands
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["train_baseline"] == kept["train_baseline"] and len(saved["_meta"]["commands"]) == 2


def test_mean_train_loss_is_read_under_both_names():
    """results.json from before the single definition keeps the mean as `mean_train_loss`, next to a last-step
    `train_loss`; newer runs have only `train_loss` (the mean)."""
    assert mean_train_loss({"train_loss": 2.16, "mean_train_loss": 2.04}) == 2.04
    assert mean_train_loss({"train_loss": 1.5}) == 1.5

"""gpu_results.md from gpu_bench.py's results: one table per model shape and batch, and the issue's targets."""

from __future__ import annotations

import time
from typing import Any

from oloraplus.markdown import markdown_table

Results = dict[str, dict[str, Any]]
SIDES = (("baseline", "paper recipe (`bench/baseline.py`)"), ("oloraplus", "oloraplus default (packed)"),
         ("padded", "oloraplus `--no-packing`"))
# Same batches, bf16 weights and activations: the losses agree to bf16 rounding (2^-8 relative), not exactly.
LOSS_RTOL = 2 ** -8
TARGETS = {"speedup_b4": 3.0, "speedup_b32": 2.0, "mfu_b32": 0.25}


def _ok(run: dict | None) -> bool:
    return bool(run) and "error" not in run


def _mfu(run: dict, rate: float | None) -> float | None:
    return run["model_flops"] / run["train_runtime_s"] / rate if rate and run.get("model_flops") else None


def _process(run: dict) -> float:
    """Seconds from the process start to the end of its run (imports, load, init, train, eval, export)."""
    return run.get("process_s", run["wall_s"])


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f} %"


def _table(header: list[Any], rows: list[list[Any]]) -> str:
    """gpu_results.md's tables have always had the spaced rule `| --- |`: every column left-aligned."""
    return markdown_table(header, rows, align="l" * len(header))


def groups(results: Results) -> list[str]:
    """'<shape>_b<batch>' keys in run order."""
    keys: list[str] = []
    for tag in results:
        for side, _ in SIDES:
            if tag.endswith("_" + side):
                key = tag[: -len(side) - 1]
                if key not in keys:
                    keys.append(key)
    return keys


def comparison(results: Results, key: str, rate: float | None) -> dict[str, Any]:
    """The numbers the targets are judged on, for one shape and batch (None where a run failed)."""
    base, ours = results.get(f"{key}_baseline"), results.get(f"{key}_oloraplus")
    if not (_ok(base) and _ok(ours)):
        return {}
    return {"speedup": ours["tokens_per_s"] / base["tokens_per_s"], "mfu": _mfu(ours, rate),
            "memory_ratio": (ours["peak_gpu_mib"] / base["peak_gpu_mib"]
                             if base.get("peak_gpu_mib") and ours.get("peak_gpu_mib") else None),
            "loss_delta": ours["eval_loss"] - base["eval_loss"],
            "loss_equal": abs(ours["eval_loss"] - base["eval_loss"]) <= LOSS_RTOL * abs(base["eval_loss"]),
            "process_speedup": _process(base) / _process(ours)}


def table(results: Results, key: str, rate: float | None) -> list[str]:
    runs = [(title, results[f"{key}_{side}"]) for side, title in SIDES if f"{key}_{side}" in results]
    failed = [f"> **{title} failed**: `{run['error']}`" for title, run in runs if "error" in run]
    runs = [(t, r) for t, r in runs if _ok(r)]
    rows = []

    def row(label: str, fn) -> None:
        rows.append([label, *(fn(r) for _, r in runs)])

    row("real (non-padding) tokens/s", lambda r: f"{r['tokens_per_s']:,.0f}")
    row("seconds per optimizer step", lambda r: f"{r['seconds_per_step']:.3f}")
    row("optimizer steps", lambda r: r["steps"])
    row("MFU (model FLOPs / measured bf16 matmul rate)", lambda r: _pct(_mfu(r, rate)))
    row("peak GPU memory (max_memory_allocated)", lambda r: f"{r['peak_gpu_mib'] / 1024:.2f} GiB"
        if r.get("peak_gpu_mib") else "n/a")
    row("final eval loss (token-weighted)", lambda r: f"{r['eval_loss']:.4f}")
    row("train loop (s)", lambda r: f"{r['train_runtime_s']:.1f}")
    row("whole process (s): start, imports, load, init, train, eval, export", lambda r: f"{_process(r):.1f}")
    text = _table(["", *(t for t, _ in runs)], rows)
    return [*failed, "", text] if failed else [text]


def verdicts(results: Results, rate: float | None) -> list[str]:
    keys = groups(results)
    if not keys:
        return []
    first = keys[0].rsplit("_b", 1)[0]
    rows = []

    def add(target: str, value: str, met: bool | None) -> None:
        rows.append([target, value, "n/a" if met is None else ("yes" if met else "**no**")])

    for key in keys:
        c = comparison(results, key, rate)
        if not c:
            add(f"{key}: both runs finished", "failed", False)
            continue
        batch = int(key.rsplit("_b", 1)[1])
        if key.startswith(first) and batch == 4:
            add(f"{key}: tokens/s ≥ {TARGETS['speedup_b4']:g}× the baseline", f"{c['speedup']:.2f}×",
                c["speedup"] >= TARGETS["speedup_b4"])
        elif key.startswith(first):
            add(f"{key}: tokens/s ≥ {TARGETS['speedup_b32']:g}× the baseline", f"{c['speedup']:.2f}×",
                c["speedup"] >= TARGETS["speedup_b32"])
            add(f"{key}: MFU ≥ {TARGETS['mfu_b32']:.0%}", _pct(c["mfu"]),
                None if c["mfu"] is None else c["mfu"] >= TARGETS["mfu_b32"])
        else:
            add(f"{key}: tokens/s vs the baseline", f"{c['speedup']:.2f}×", None)
        mem = c["memory_ratio"]
        add(f"{key}: peak GPU memory ≤ the baseline's", "n/a" if mem is None else f"{mem:.2f}×",
            None if mem is None else mem <= 1.0)
        add(f"{key}: eval loss equal (same batches, Δ within 2⁻⁸ relative)", f"Δ = {c['loss_delta']:+.4f}",
            c["loss_equal"])
        add(f"{key}: whole process vs the baseline's", f"{c['process_speedup']:.2f}×", None)
    return ["## Targets (issue 11)", "", _table(["target", "measured", "met"], rows)]


def render(results: Results, command: str, elapsed_s: float, *, quick: bool = False) -> str:
    rate_run = results.get("matmul", {})
    rate = rate_run.get("best_flops") if _ok(rate_run) else None
    device = rate_run.get("device", "unknown device")
    lines = ["# oloraplus vs the OLoRA+ paper's recipe on one GPU", "",
             f"Command: `{command}` · {elapsed_s / 60:.1f} min · {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "", f"Device: **{device}** · torch {rate_run.get('torch', '?')} (CUDA {rate_run.get('cuda', '?')}) · "
             f"{rate_run.get('dtype', '?')} {rate_run.get('n', '?')}³ matmul: "
             + (f"{rate / 1e12:,.1f} TFLOP/s (best of 9)" if rate else "n/a"), ""]
    if quick:
        lines += ["> **--quick**: tiny shapes and a few steps check that the pipeline runs; the numbers mean nothing.",
                  ""]
    if "error" in results.get("models", {}):
        lines += [f"> **building the models failed**: `{results['models']['error']}`", ""]
    lines += ["Random-init models of the named shapes (bf16 on a GPU, SmolLM2's 49,152-token tokenizer), "
              "`alpaca_en_demo.json`, OLoRA r = 32, α = 16, η = 3e-4, λ = 4, max length 512, "
              "each run in its own process. Both sides draw the same batches (same sampler and seed): "
              "the baseline pads every row to 512, oloraplus packs each batch's examples into rows "
              "without attention across them.", ""]
    for key in groups(results):
        shape, batch = key.rsplit("_b", 1)
        lines += [f"## {shape}, batch {batch}", "", *table(results, key, rate), ""]
    lines += verdicts(results, rate)
    return "\n".join(lines) + "\n"

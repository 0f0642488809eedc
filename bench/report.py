"""Turn the benchmark's child results into results.md, a scaling plot and a few summary lines."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from oloraplus.markdown import markdown_table

Results = dict[str, dict[str, Any]]


def _ok(results: Results, *tags: str) -> bool:
    return all(tag in results and "error" not in results[tag] for tag in tags)


def _failures(results: Results, *tags: str) -> list[str]:
    return [f"> **{tag} failed**: `{results[tag]['error']}`\n" for tag in tags if "error" in results.get(tag, {})]


def _not_run(title: str, results: Results, *tags: str) -> list[str]:
    """The section's failures under its title, or nothing when it was not run (`--only`)."""
    failures = _failures(results, *tags)
    return [title, "", *failures] if failures else []


def _num(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def _speedup(ratio: float) -> str:
    """A time or throughput ratio (>1: the second is faster), in words either way."""
    return f"**{ratio:.2f}× faster**" if ratio >= 1 else f"**{1 / ratio:.2f}× slower**"


def _table(header: list[Any], rows: list[list[Any]]) -> str:
    """results.md's tables have always had the spaced rule `| --- |`: every column left-aligned."""
    return markdown_table(header, rows, align="l" * len(header))


def matmul_rate(results: Results) -> float | None:
    """The best fp32 matmul rate seen in the run (FLOP/s): the MFU denominator."""
    rates = [results[t]["best_flops"] for t in ("machine_start", "machine_end") if _ok(results, t)]
    return max(rates) if rates else None


def mfu(flops: float, seconds: float, rate: float | None) -> str:
    return "n/a" if not rate else f"{100 * flops / seconds / rate:.1f} %"


def _rate(m: dict) -> str:
    return f"{m['best_flops'] / 1e9:.0f} / {m['median_flops'] / 1e9:.0f} GFLOP/s" if "best_flops" in m else "n/a"


def machine_section(results: Results) -> list[str]:
    if not _ok(results, "machine_start"):
        return _not_run("## Machine", results, "machine_start")
    m, end = results["machine_start"], results.get("machine_end", {})
    v = m["versions"]
    load = f"{m['loadavg'][0]:.2f}" + (f" / {end['loadavg'][0]:.2f}" if "loadavg" in end else "")
    lines = ["## Machine", "",
             _table(["CPU", "logical / usable CPUs", "torch threads", f"fp32 matmul n={m['n']}, start (best / median)",
                     "at the end", "load average (1 min), start / end"],
                    [[m["cpu"], f"{m['logical_cpus']} / {m['usable_cpus']}", m["torch_threads"], _rate(m), _rate(end),
                      load]]),
             "", f"{m['platform']} · Python {v['python']} · torch {v['torch']} · transformers {v['transformers']}"
                 f" · peft {v['peft']} · oloraplus {v['oloraplus']}", ""]
    if "cuda_device" in m:  # recorded since the bench learned to ask
        lines += [f"CUDA device: {m['cuda_device']}." if m["cuda_device"] else
                  "CUDA: not available on this machine; every number below is CPU, fp32.", ""]
    if m["loadavg"][0] > 0.5 * m["usable_cpus"]:
        lines += [f"> **Noisy machine**: the load average was {m['loadavg'][0]:.2f} on {m['usable_cpus']} CPUs "
                  "when the run started; other processes competed for the cores and every timing is inflated.", ""]
    return lines


def mean_train_loss(run: dict) -> float:
    """The mean over the run: `train_loss` now; results.json written before that kept it as `mean_train_loss`
    (its `train_loss` was the last logged step's)."""
    return run["mean_train_loss"] if "mean_train_loss" in run else run["train_loss"]


def _train_column(run: dict, rate: float | None) -> dict[str, str]:
    """The cells of one training run in the side-by-side table."""
    return {
        "tokens_per_s": _num(run["tokens_per_s"], 1), "seconds_per_step": _num(run["seconds_per_step"]),
        "train_tokens": f"{run['train_tokens']:,}", "model_flops": f"{run['model_flops'] / 1e12:.2f} TFLOP",
        "mfu": mfu(run["model_flops"], run["train_runtime_s"], rate), "rss": f"{run['peak_rss_mib']:,.0f} MiB",
        "eval_loss": f"{run['eval_loss']:.4f}", "train_loss": f"{mean_train_loss(run):.4f}",
        "params": f"{run['trainable_params']:,}", "wall": f"{run.get('process_s', run['wall_s']):.0f} s",
    }


def _versus(run: dict, base: dict) -> dict[str, str]:
    """The 'vs baseline' cells of one oloraplus run."""
    return {"tokens_per_s": _speedup(run["tokens_per_s"] / base["tokens_per_s"]),
            "seconds_per_step": f"{base['seconds_per_step'] / run['seconds_per_step']:.2f}×",
            "rss": f"{run['peak_rss_mib'] / base['peak_rss_mib']:.2f}×",
            "eval_loss": f"Δ = {run['eval_loss'] - base['eval_loss']:+.4f}",
            "wall": _speedup(base.get("process_s", base["wall_s"]) / run.get("process_s", run["wall_s"]))}


TRAIN_ROWS = (("padding", "padding"), ("tokens_per_s", "real (non-padding) tokens/s"),
              ("seconds_per_step", "seconds per optimizer step"), ("train_tokens", "real tokens trained"),
              ("pad_share", "share of computed positions that are padding"),
              ("model_flops", "model FLOPs (real tokens, formula below)"),
              ("mfu", "MFU vs the measured fp32 matmul rate"), ("rss", "peak RSS of the process"),
              ("eval_loss", "final eval loss (token-weighted)"), ("train_loss", "mean train loss"),
              ("params", "trainable parameters"),
              ("wall", "whole process: start, imports, load, init, train, eval (oloraplus: + export, plot)"))


def train_section(results: Results, rate: float | None) -> list[str]:
    tags = ("train_baseline", "train_oloraplus_same_order", "train_oloraplus")
    if not _ok(results, *tags):
        return _not_run("## Training side by side", results, *tags)
    b = results["train_baseline"]
    s = b["spec"]["setup"]
    setup = (f"SmolLM2-135M-Instruct (fp32), `{Path(s['data']).name}`, OLoRA r = 32, α = 16, η = 3e-4, λ = 4, "
             f"{s['steps']} steps × batch {s['batch_size']} = {s['steps'] * s['batch_size']} training examples "
             f"(each seen once by every run), max length {s['max_length']}, {b['eval_tokens']} eval tokens from "
             f"{s['eval_size']} held-out examples, seed 42.")
    base = {**_train_column(b, rate), "padding": f"every row to {s['max_length']}",
            "pad_share": f"{100 * (1 - b['train_tokens'] / b['processed_tokens']):.0f} %"}
    columns = [("paper baseline (`bench/baseline.py`)", base, {})]
    packed_share = "only the ends of unevenly filled packed rows"
    runs = [("train_oloraplus_same_order", "oloraplus (`train()` defaults: packed, the baseline's batch order)",
             "none: each batch's examples packed into rows of ≤ max length, no attention across examples",
             "default", packed_share),
            ("train_oloraplus_padded", "oloraplus `--no-packing`", "per batch to its longest row", "padded",
             "only up to each batch's longest row"),
            ("train_oloraplus", "oloraplus, grouped (`--group-by-length`)", "packed; rows grouped by length",
             "grouped", packed_share)]
    short = []
    for tag, title, padding, name, share in runs:
        if _ok(results, tag):
            run = results[tag]
            cells = {**_train_column(run, rate), "padding": padding, "pad_share": share}
            columns.append((title, cells, _versus(run, b)))
            short.append(name)
    header = ["", *(title for title, _, _ in columns), *(f"{name} vs baseline" for name in short)]
    rows = [[label, *(cells.get(key, "") for _, cells, _ in columns), *(vs.get(key, "") for _, _, vs in columns[1:])]
            for key, label in TRAIN_ROWS]
    notes = ["The default and `--no-packing` runs draw exactly the baseline's batches (the same random sampler and "
             "seed) and differ only in layout (packed rows, or rows padded to the batch's longest), so their losses "
             "must equal the baseline's to rounding: the check that the speed-ups do not change what is learned. "
             "The grouped run puts rows of similar length into the same batch: other batches. oloraplus's times "
             "include its refinement/exploration diagnostics (timed, at most 2 % of the loop, the final state "
             "after it) and logging; the whole "
             "process also loads, attaches, evaluates, exports the adapter and plots, where the baseline "
             "process only loads, trains and evaluates."]
    orders = sorted((t for t in results if t.startswith("train_order_") and _ok(results, t)),
                    key=lambda t: int(t.rsplit("_", 1)[1]))
    if orders and _ok(results, "train_oloraplus_same_order"):
        losses = [results["train_oloraplus_same_order"]["eval_loss"], *(results[t]["eval_loss"] for t in orders)]
        seeds = ", ".join(t.rsplit("_", 1)[1] for t in orders)
        spread = max(losses) - min(losses)
        grouped = ""
        if _ok(results, "train_oloraplus"):
            loss = results["train_oloraplus"]["eval_loss"]
            grouped = (f" The grouped run's {loss:.4f} is {abs(loss - losses[0]) / max(spread, 1e-12):.0f}× that "
                       "spread away from the default: grouping changes the optimisation, not only the order.")
        notes.append(f"How much the batch order alone moves the result: the default run repeated with other sampler "
                     f"seeds ({seeds}; same split, init and examples) ends at eval loss "
                     f"{', '.join(f'{x:.4f}' for x in losses[1:])}, against {losses[0]:.4f} with the baseline's "
                     f"order: a spread of {spread:.4f} over {len(losses)} orders.{grouped}")
    return ["## Training side by side", "", setup, "", _table(header, rows), "",
            *(line for note in notes for line in (note, ""))]


def loss_section(results: Results) -> list[str]:
    title = "## Response-only loss (`oloraplus.eval.fast_loss.response_only_loss`)"
    if not _ok(results, "loss_compare"):
        return _not_run(title, results, "loss_compare")
    r = results["loss_compare"]
    st, fast = r["step_s"]["standard"], r["step_s"]["response_only"]
    mem_st, mem_fast = r["peak_step_mib"]["standard"], r["peak_step_mib"]["response_only"]
    real, scored, spec = r["real_tokens_per_step"], r["scored_tokens_per_step"], r["spec"]
    rows = [
        ("seconds per forward + backward (median)", _num(st, 3), _num(fast, 3), _speedup(st / fast)),
        ("real tokens/s", _num(real / st, 1), _num(real / fast, 1), ""),
        ("peak memory above the loaded model", f"{_num(mem_st, 0)} MiB", f"{_num(mem_fast, 0)} MiB",
         f"{mem_fast - mem_st:+,.0f} MiB" if mem_st is not None and mem_fast is not None else ""),
    ]
    return [title, "",
            f"Forward + backward on {spec['batches']} real Alpaca batch(es) of {spec['setup']['batch_size']} "
            f"(dynamic padding; per batch {real:.0f} real tokens, of which {scored:.0f} ({100 * scored / real:.0f} %) "
            "are response tokens the loss scores), the same parameters for both, in one process; "
            f"{spec['reps']} timed pass(es) alternating the two losses after a warm-up. The optimizer step, the "
            "same for both, is left out. The output head (576 → 49,152) runs only at the scored positions.", "",
            _table(["", "standard `model(**batch).loss`", "response-only", "gain"], rows), "",
            f"Same loss and gradients on SmolLM2: max |Δ loss| = {r['max_abs_loss_diff']:.1e}, "
            f"max |Δ gradient| = {r['max_abs_grad_diff']:.1e}.", ""]


def init_section(results: Results) -> list[str]:
    if not _ok(results, "olora_init"):
        return _not_run("## OLoRA initialisation", results, "olora_init")
    r = results["olora_init"]
    d = r["max_abs_diff"]
    shapes = ", ".join(f"{a}×{b}" for a, b in r["shapes"])
    return ["## OLoRA initialisation", "",
            f"r = 32 on the {r['layers']} adapted layers of SmolLM2-135M"
            + (f" in its first {r['spec']['blocks']} blocks" if r["spec"].get("blocks") else "")
            + f" (out×in shapes {shapes}); best of {r['spec']['reps']} after a warm-up call.", "",
            _table(["", "oloraplus: thin QR of W[:, :r]", "PEFT: full QR of W", "speed-up"], [
                ["factor math (`olora_factors` vs `olora_factors_full_qr`)", f"{1e3 * r['thin_qr_s']:.0f} ms",
                 f"{1e3 * r['full_qr_s']:.0f} ms", f"**{r['full_qr_s'] / r['thin_qr_s']:.1f}×**"],
                ["attach to the model (`attach_adapter` vs `get_peft_model(init_lora_weights=\"olora\")`)",
                 f"{r['attach_oloraplus_s']:.2f} s", f"{r['attach_peft_s']:.2f} s",
                 f"{r['attach_peft_s'] / r['attach_oloraplus_s']:.1f}×"]]), "",
            f"Same factors as PEFT: max |ΔA| = {d['A']:.1e}, max |ΔB| = {d['B']:.1e}, "
            f"max |ΔW′| = {d['W_res']:.1e} over all layers.", ""]


def load_section(results: Results) -> list[str]:
    if not _ok(results, "load_cached"):
        return _not_run("## Model load", results, "load_cached")
    c = results["load_cached"]
    cold = results.get("load_cold")
    cold_cell = (f"{cold['first_s']:.1f} s" if cold and "error" not in cold
                 else f"failed: {cold['error']}" if cold else "not run (`--quick`)")
    return ["## Model load", "",
            _table(["cached `load_model('smollm2-135m')`",
                    "first load: GGUF → safetensors conversion into an empty `$OLORAPLUS_CACHE`"],
                   [[f"{c['first_s']:.2f} s (best {c['best_s']:.2f} s)", cold_cell]]), ""]


def generation_section(results: Results) -> list[str]:
    if not _ok(results, "generation"):
        return _not_run("## Generation eval", results, "generation")
    g = results["generation"]
    rows = []
    for batch, r in g["batched"].items():
        default = " (the default)" if int(batch) == g["default_batch_size"] else ""
        rows.append([f"`generate_batched`, batch {batch}{default}", f"{r['seconds']:.1f} s",
                     f"**{g['one_by_one_s'] / r['seconds']:.1f}×**", f"{r['identical']} / {g['prompts']}"])
    return ["## Generation eval", "",
            f"Greedy decoding of {g['prompts']} Alpaca prompts, at most {g['max_new_tokens']} new tokens, "
            f"OLoRA-adapted SmolLM2 (KV cache on). `generate_one_by_one`: {g['one_by_one_s']:.1f} s. Batches are "
            "left-padded and sorted by prompt length.", "",
            _table(["decoding", "time", "speed-up vs one by one", "outputs identical to one by one"], rows), "",
            "Padding changes the fp32 summation order, so a near-tie between two tokens can rarely resolve "
            "differently; any output that is not identical is such a case.", ""]


def scaling_rows(results: Results, prefix: str) -> list[dict]:
    return sorted((r for t, r in results.items() if t.startswith(prefix) and "error" not in r),
                  key=lambda r: (r["spec"]["seq"] * r["spec"]["batch"], r["spec"]["rank"]))


def attention_share(fm: dict, seq: int) -> float:
    """Share of the attention term 12·L·d_attn·ℓ² in the training FLOPs of one example of length ℓ."""
    attn = 12 * fm["n_layers"] * fm["d_attn"] * seq
    return attn / (4 * fm["n_matmul"] + 6 * fm["n_lora"] + attn)


def scaling_section(results: Results, rate: float | None) -> list[str]:
    seq, ranks = scaling_rows(results, "seq_"), scaling_rows(results, "rank_")
    failures = _failures(results, *[t for t in results if t.startswith(("seq_", "rank_"))])
    if not seq and not ranks:
        return ["## Scaling", "", *failures] if failures else []
    lines = ["## Scaling of one training step (oloraplus path)", "",
             "OLoRA adapter on every block linear, forward + backward + AdamW step, random tokens with every "
             "position scored, median of the timed steps after one warm-up. *Peak step memory* is resident "
             "memory above the loaded model at its peak during the steps.", "", *failures]
    if seq:
        base = seq[0]
        t0, n0 = base["step_s"], base["spec"]["seq"] * base["spec"]["batch"]
        rows = []
        for r in seq:
            n = r["spec"]["seq"] * r["spec"]["batch"]
            rows.append([r["spec"]["seq"], r["spec"]["batch"], _num(r["step_s"], 3), _num(1e3 * r["step_s"] / n),
                         _num(r["model_flops"] / 1e9, 0), mfu(r["model_flops"], r["step_s"], rate),
                         f"{100 * attention_share(r['flop_model'], r['spec']['seq']):.0f} %",
                         f"{_num(r['peak_step_mib'], 0)} MiB", f"{r['step_s'] / (t0 * n / n0):.2f}"])
        lines += [_table(["sequence length", "batch", "s/step", "ms per token", "model GFLOP/step", "MFU",
                          "attention share of FLOPs", "peak step memory", "time ÷ linear-in-tokens prediction"], rows),
                  ""]
    if ranks:
        t8 = ranks[0]["step_s"]
        lines.append(_table(["rank r", "trainable parameters", "s/step", "peak step memory", "time ÷ smallest rank's"],
                            [[r["spec"]["rank"], f"{r['trainable_params']:,}", _num(r["step_s"], 3),
                              f"{_num(r['peak_step_mib'], 0)} MiB", f"{r['step_s'] / t8:.2f}"] for r in ranks]))
        spec = ranks[0]["spec"]
        lines += ["", f"(rank sweep at sequence length {spec['seq']}, batch {spec['batch']})", ""]
    return lines


FORMULA = """## How the numbers are made

- Every measurement runs in its own process; *peak RSS* is that process's `ru_maxrss` (from `wait4`).
- *Real tokens/s* counts non-padding tokens only (the Trainer's `include_num_input_tokens_seen="non_padding"`,
  i.e. the attention mask), divided by the Trainer's `train_runtime`.
- *Model FLOPs* of LoRA training per example of ℓ real tokens (`bench/flops.py`; checked against
  `torch.utils.flop_counter.FlopCounterMode` in `tests/bench/test_flops.py`):
  `4·N·ℓ + 6·N_lora·ℓ + 12·L·d_attn·ℓ²` — forward 2·N·ℓ, backward 2·N·ℓ (activation gradients only:
  the frozen W needs no weight-gradient matmul), LoRA 6·N_lora·ℓ (forward, activation and weight gradients),
  attention 4·L·d_attn·ℓ² forward and twice that backward. N counts every matmul weight (block linears and
  the output head), N_lora = Σ r·(in + out). Padding is never counted, so the padded baseline's wasted work
  lowers its MFU.
- *MFU* = model FLOPs / training time / the best fp32 `torch.mm` rate (n×n by n×n, 2n³ FLOPs) measured at
  the start and the end of this run.
"""


def render(results: Results, sizes: Any, command: str, elapsed_s: float, *, quick: bool, plot: Path | None) -> str:
    rate = matmul_rate(results)
    head = ["# oloraplus vs the OLoRA+ paper's implementation", "",
            f"Command: {command} · {'quick' if quick else 'full'} sizes · {elapsed_s / 60:.1f} min · "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    if quick:
        head += ["> **`--quick`**: tiny sizes that only check that every section runs; the numbers mean nothing. "
                 "Run `python bench/run_bench.py` on a quiet machine for the real table.", ""]
    body = [*machine_section(results), *train_section(results, rate), *loss_section(results),
            *init_section(results), *load_section(results), *generation_section(results),
            *scaling_section(results, rate)]
    if plot:
        body += [f"![scaling]({plot.name})", ""]
    sizes_line = ", ".join(f"{k}={v}" for k, v in asdict(sizes).items())
    return "\n".join(head + body) + "\n" + FORMULA + f"\nSizes: {sizes_line}.\n"


def summary_lines(results: Results) -> list[str]:
    """The headline numbers, for the terminal."""
    out, rate = [], matmul_rate(results)
    if rate:
        out.append(f"fp32 matmul: {rate / 1e9:.0f} GFLOP/s (best)")
    if _ok(results, "train_baseline"):
        b = results["train_baseline"]
        out.append(f"train: baseline {b['tokens_per_s']:.1f} tok/s, {b['seconds_per_step']:.2f} s/step, "
                   f"RSS {b['peak_rss_mib']:.0f} MiB, eval {b['eval_loss']:.4f}, MFU "
                   f"{mfu(b['model_flops'], b['train_runtime_s'], rate)}")
        for tag, name in (("train_oloraplus_same_order", "oloraplus default"), ("train_oloraplus_padded", "padded"),
                          ("train_oloraplus", "grouped")):
            if not _ok(results, tag):
                continue
            o = results[tag]
            out.append(f"train, {name}: {o['tokens_per_s']:.1f} tok/s ({o['tokens_per_s'] / b['tokens_per_s']:.2f}x), "
                       f"{o['seconds_per_step']:.2f} s/step, RSS {o['peak_rss_mib']:.0f} MiB, eval "
                       f"{o['eval_loss']:.4f}, MFU {mfu(o['model_flops'], o['train_runtime_s'], rate)}, "
                       f"whole process {o.get('process_s', o['wall_s']):.0f} s "
                       f"({b.get('process_s', b['wall_s']) / o.get('process_s', o['wall_s']):.2f}x)")
    if _ok(results, "loss_compare"):
        r = results["loss_compare"]
        st, fast = r["step_s"]["standard"], r["step_s"]["response_only"]
        mem = r["peak_step_mib"]
        out.append(f"response-only loss: {st:.3f} -> {fast:.3f} s per forward+backward ({st / fast:.2f}x), memory "
                   f"{_num(mem['standard'], 0)} -> {_num(mem['response_only'], 0)} MiB, max |dloss| "
                   f"{r['max_abs_loss_diff']:.1e}, max |dgrad| {r['max_abs_grad_diff']:.1e}")
    if _ok(results, "olora_init"):
        r = results["olora_init"]
        out.append(f"olora init: thin QR {1e3 * r['thin_qr_s']:.0f} ms vs full QR {1e3 * r['full_qr_s']:.0f} ms "
                   f"({r['full_qr_s'] / r['thin_qr_s']:.1f}x); attach {r['attach_oloraplus_s']:.2f} s vs PEFT "
                   f"{r['attach_peft_s']:.2f} s; max |dA|,|dB|,|dW'| = "
                   + ", ".join(f"{v:.1e}" for v in r["max_abs_diff"].values()))
    if _ok(results, "load_cached"):
        cold = results.get("load_cold", {})
        out.append(f"model load: cached {results['load_cached']['first_s']:.2f} s"
                   + (f", first conversion {cold['first_s']:.1f} s" if "first_s" in cold else ""))
    if _ok(results, "generation"):
        g = results["generation"]
        out.append(f"generation: one-by-one {g['one_by_one_s']:.1f} s; batched " + ", ".join(
            f"batch {b}: {r['seconds']:.1f} s ({g['one_by_one_s'] / r['seconds']:.1f}x, identical {r['identical']}/"
            f"{g['prompts']})" for b, r in g["batched"].items()))
    for r in scaling_rows(results, "seq_") + scaling_rows(results, "rank_"):
        s = r["spec"]
        out.append(f"step seq={s['seq']} batch={s['batch']} r={s['rank']}: {r['step_s']:.3f} s, "
                   f"peak step memory {_num(r['peak_step_mib'], 0)} MiB")
    return out


def write_scaling_plot(results: Results, path: Path) -> Path | None:
    """Seconds per step against tokens per step and against rank, next to results.md."""
    seq, ranks = scaling_rows(results, "seq_"), scaling_rows(results, "rank_")
    if len(seq) < 2 and len(ranks) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if seq:
        x = [r["spec"]["seq"] for r in seq]
        left.plot(x, [r["step_s"] for r in seq], "o-", label="measured")
        left.plot(x, [seq[0]["step_s"] * n / x[0] for n in x], "--", label="linear in tokens")
        left.set(xlabel=f"sequence length (batch {seq[0]['spec']['batch']})", ylabel="seconds per step", xscale="log",
                 yscale="log", title="step time vs sequence length")
        left.legend()
    if ranks:
        x = [r["spec"]["rank"] for r in ranks]
        right.plot(x, [r["step_s"] for r in ranks], "o-")
        right.set(xlabel="rank r", ylabel="seconds per step", xscale="log", title="step time vs rank")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

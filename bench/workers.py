"""The measurements of the benchmark. run_bench.py runs each in its own process, so peak memory is its own.

Each worker takes a JSON-able spec and returns a JSON-able result. Step memory is the peak resident
set size during the timed steps above what was resident before them: Linux's VmHWM, reset through
/proc/self/clear_refs once the model is loaded.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import platform
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from baseline import RunSetup, run_baseline
from flops import flop_model, matmul_rate
from oloraplus import models
from oloraplus.adapters.build import AdapterSpec, attach_adapter
from oloraplus.adapters.olora import olora_factors, olora_factors_full_qr
from oloraplus.adapters.targets import resolve_target_modules, targeted_layers
from oloraplus.config import TrainConfig
from oloraplus.data.collate import CausalLMCollator
from oloraplus.data.formats import load_examples
from oloraplus.data.prompts import render_prompt
from oloraplus.data.split import split_examples
from oloraplus.data.tokenize import IGNORE_INDEX, encode_examples
from oloraplus.eval.fast_loss import response_only_loss
from oloraplus.eval.generate import generate_batched, generate_one_by_one
from oloraplus.optim.ratio import build_optimizer
from oloraplus.train.environment import package_versions
from oloraplus.train.recipe import train

Spec = dict[str, Any]


def _status_kib(key: str) -> int | None:
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def reset_peak_rss() -> int | None:
    """Start a new peak-RSS window; returns the RSS now (KiB), or None off Linux.

    Freed memory that glibc still holds would be reused without raising RSS, hiding a peak: give it back first.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_kib("VmRSS")


def peak_rss_since_reset(start_kib: int | None) -> float | None:
    """MiB of resident memory above the reset point, at its peak since the reset."""
    peak = _status_kib("VmHWM")
    return None if start_kib is None or peak is None else (peak - start_kib) / 1024


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(spec: Spec) -> dict:
    return {
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(), "versions": package_versions(),
        "loadavg": os.getloadavg(), **matmul_rate(spec["matmul_n"], spec["matmul_reps"]),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def model_load(spec: Spec) -> dict:
    """Load time of `load_model`; with spec['cold'], into an empty cache so the GGUF is converted first."""
    from transformers import AutoModelForCausalLM  # noqa: F401  (imports are not load time)

    cache = tempfile.mkdtemp(prefix="oloraplus-bench-cache-") if spec["cold"] else None
    if cache:
        os.environ["OLORAPLUS_CACHE"] = cache
    try:
        times = []
        for _ in range(spec["reps"]):
            t0 = time.perf_counter()
            models.load_model(spec["model"])
            times.append(time.perf_counter() - t0)
    finally:
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
    return {"first_s": times[0], "best_s": min(times)}


def _olora_layers(peft_model) -> dict[str, LoraLayer]:
    return {n: m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


def olora_init(spec: Spec) -> dict:
    """oloraplus's thin QR of W[:, :r] vs the full QR PEFT computes: time over every adapted shape, same factors."""
    r = spec["rank"]
    loaded = models.load_model(spec["model"])
    layers = targeted_layers(loaded.model, resolve_target_modules(loaded.model, None))
    if spec.get("blocks"):  # --quick: only the first blocks' layers
        layers = {n: m for n, m in layers.items() if any(f".{i}." in n for i in range(spec["blocks"]))}
    targets = list(layers)  # full module names: both PEFT and attach_adapter match them exactly
    weights = [m.weight.detach().float() for m in layers.values()]
    shapes = sorted({tuple(w.shape) for w in weights})

    def total_s(fn: Callable) -> float:
        fn(weights[0], r)  # first-call costs (LAPACK workspace, thread pool) are not the method's
        best = float("inf")
        for _ in range(spec["reps"]):
            t0 = time.perf_counter()
            for w in weights:
                fn(w, r)
            best = min(best, time.perf_counter() - t0)
        return best

    thin_s, full_s = total_s(olora_factors), total_s(olora_factors_full_qr)
    t0 = time.perf_counter()
    ours, _ = attach_adapter(loaded.model, AdapterSpec("olora", rank=r, alpha=spec["alpha"], target_modules=targets))
    ours_attach_s = time.perf_counter() - t0
    fresh = models.load_model(spec["model"]).model
    t0 = time.perf_counter()
    peft = get_peft_model(fresh, LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=spec["alpha"],
                                            target_modules=targets, init_lora_weights="olora"))
    peft_attach_s = time.perf_counter() - t0
    diff = {"A": 0.0, "B": 0.0, "W_res": 0.0}
    peft_layers = _olora_layers(peft)
    for name, layer in _olora_layers(ours).items():
        other = peft_layers[name]
        diff["A"] = max(diff["A"], (layer.lora_A["default"].weight - other.lora_A["default"].weight).abs().max().item())
        diff["B"] = max(diff["B"], (layer.lora_B["default"].weight - other.lora_B["default"].weight).abs().max().item())
        base, peft_base = layer.get_base_layer().weight, other.get_base_layer().weight
        diff["W_res"] = max(diff["W_res"], (base - peft_base).abs().max().item())
    return {"layers": len(weights), "shapes": [list(s) for s in shapes], "thin_qr_s": thin_s, "full_qr_s": full_s,
            "attach_oloraplus_s": ours_attach_s, "attach_peft_s": peft_attach_s, "max_abs_diff": diff}


def _train_lengths(setup: RunSetup, tokenizer) -> list[int]:
    train_ex, _ = split_examples(load_examples(setup.data), setup.train_size, setup.eval_size, setup.seed)
    dataset, _ = encode_examples(train_ex, tokenizer, setup.max_length)
    return [int(n) for n in dataset["length"]]


def flop_model_of(setup: RunSetup):
    """The FLOP model of the adapted model (the same for both implementations)."""
    loaded = models.load_model(setup.model)
    model, _ = attach_adapter(loaded.model, AdapterSpec("lora", rank=setup.rank, alpha=setup.alpha))
    return flop_model(model)


def train_baseline(spec: Spec) -> dict:
    setup = RunSetup(**spec["setup"])
    out = tempfile.mkdtemp(prefix="bench-baseline-")
    try:
        metrics = run_baseline(setup, Path(out))
        end = time.time()  # the run is over: what follows is the bench's own counting
    finally:
        shutil.rmtree(out, ignore_errors=True)
    fm = flop_model_of(setup)
    return {**metrics, "model_flops": fm.train(metrics["train_lengths"]), "end_unix": end}


def train_oloraplus(spec: Spec) -> dict:
    setup = RunSetup(**spec["setup"])
    out = Path(tempfile.mkdtemp(prefix="bench-oloraplus-")) / "run"
    cfg = TrainConfig(model=setup.model, data=setup.data, method="olora", ratio=setup.ratio, rank=setup.rank,
                      alpha=setup.alpha, lr=setup.lr, max_steps=setup.steps, batch_size=setup.batch_size,
                      max_length=setup.max_length, train_size=setup.train_size, eval_size=setup.eval_size,
                      seed=setup.seed, output=str(out),  # every other option at its default
                      group_by_length=spec.get("group_by_length", False), **spec.get("options", {}))
    if "data_seed" in spec:  # another batch order over the same split, init and examples: order noise
        from oloraplus.train import recipe

        make_arguments = recipe._training_arguments

        def reordered(cfg, run):
            arguments = make_arguments(cfg, run)
            arguments.data_seed = spec["data_seed"]  # the Trainer's sampler seed; nothing else reads it
            return arguments

        recipe._training_arguments = reordered  # this worker is its own process: nothing else sees the patch
    try:
        result = train(cfg)
        end = time.time()  # the run is over (adapter, metrics, plot written): what follows is the bench's counting
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    lengths = _train_lengths(setup, result.tokenizer)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str, type(None)))}
    return {**metrics, "train_lengths": lengths, "model_flops": flop_model(result.model).train(lengths),
            "end_unix": end}


def _adapted(model_name: str, rank: int, alpha: float):
    loaded = models.load_model(model_name)
    model, _ = attach_adapter(loaded.model, AdapterSpec("olora", rank=rank, alpha=alpha))
    return model.train(), loaded.tokenizer


def _timed_steps(model, batches: list[dict], ratio: float, reps: int) -> dict:
    """Optimizer steps (forward, backward, AdamW) over `batches`: one warm-up pass, then `reps` timed passes."""
    optimizer = build_optimizer(model, 3e-4, ratio)
    times = []
    start = reset_peak_rss()  # the warm-up pass allocates the optimizer state: part of a step's memory
    for rep in range(reps + 1):
        for batch in batches:
            t0 = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if rep:
                times.append(time.perf_counter() - t0)
    return {"step_s": statistics.median(times), "step_s_all": times, "peak_step_mib": peak_rss_since_reset(start)}


def _standard_loss(model, batch: dict):
    return model(**batch).loss


def _response_only_loss(model, batch: dict):
    return response_only_loss(model, batch)


def _forward_backward(model, batch: dict, loss_fn: Callable) -> tuple[float, float, dict]:
    """(seconds, loss, gradients) of one forward + backward; the parameters do not change."""
    t0 = time.perf_counter()
    loss = loss_fn(model, batch)
    loss.backward()
    seconds = time.perf_counter() - t0
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return seconds, loss.item(), grads


def loss_compare(spec: Spec) -> dict:
    """Standard vs response-only loss on real prompt-masked Alpaca batches, same parameters, same process.

    Forward + backward only (the optimizer step is the same for both). Timed passes alternate the two
    losses, so a change in machine load hits both alike; each loss's peak memory gets its own window.
    """
    setup = RunSetup(**spec["setup"])
    model, tokenizer = _adapted(setup.model, setup.rank, setup.alpha)
    train_ex, _ = split_examples(load_examples(setup.data), setup.train_size, setup.eval_size, setup.seed)
    dataset, _ = encode_examples(train_ex, tokenizer, setup.max_length)
    collate = CausalLMCollator(pad_token_id=tokenizer.pad_token_id)
    rows = [dataset[i] for i in range(spec["batches"] * setup.batch_size)]
    batches = [collate(rows[i:i + setup.batch_size]) for i in range(0, len(rows), setup.batch_size)]
    fns = {"standard": _standard_loss, "response_only": _response_only_loss}
    loss_diff = grad_diff = 0.0
    for batch in batches:  # warm-up, and the equality check on SmolLM2 itself
        (_, ref_loss, ref_grads), (_, loss, grads) = (_forward_backward(model, batch, fn) for fn in fns.values())
        loss_diff = max(loss_diff, abs(loss - ref_loss))
        grad_diff = max(grad_diff, max((grads[n] - g).abs().max().item() for n, g in ref_grads.items()))
    memory = {}
    for name, fn in fns.items():
        start = reset_peak_rss()
        for batch in batches:
            _forward_backward(model, batch, fn)
        memory[name] = peak_rss_since_reset(start)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(spec["reps"]):
        order = list(fns) if rep % 2 == 0 else list(fns)[::-1]
        for batch in batches:
            for name in order:
                times[name].append(_forward_backward(model, batch, fns[name])[0])
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    scored = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    return {"step_s": {n: statistics.median(t) for n, t in times.items()}, "peak_step_mib": memory,
            "max_abs_loss_diff": loss_diff, "max_abs_grad_diff": grad_diff,
            "real_tokens_per_step": real / len(batches), "scored_tokens_per_step": scored / len(batches)}


def step_scaling(spec: Spec) -> dict:
    """One training step of random tokens (every position scored) at a given batch × sequence length and rank."""
    model, _ = _adapted(spec["model"], spec["rank"], spec["alpha"])
    g = torch.Generator().manual_seed(0)
    vocab = model.get_base_model().config.vocab_size
    ids = torch.randint(0, vocab, (spec["batch"], spec["seq"]), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    result = _timed_steps(model, [batch], 4.0, spec["reps"])
    fm = flop_model(model)
    return {**result, "model_flops": fm.train([spec["seq"]] * spec["batch"]), "flop_model": dataclasses.asdict(fm),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def generation(spec: Spec) -> dict:
    """generate_batched at each batch size vs generate_one_by_one on the same Alpaca prompts (OLoRA-adapted model)."""
    setup = RunSetup(**spec["setup"])
    model, tokenizer = _adapted(setup.model, setup.rank, setup.alpha)
    examples, _ = split_examples(load_examples(setup.data), spec["prompts"], 0, setup.seed)
    prompts = [render_prompt(tokenizer, ex) for ex in examples]
    new = spec["max_new_tokens"]
    generate_batched(model, tokenizer, prompts[:2], max_new_tokens=2)  # warm-up: first-call costs are not speed
    t0 = time.perf_counter()
    single = generate_one_by_one(model, tokenizer, prompts, max_new_tokens=new)
    single_s = time.perf_counter() - t0
    batched = {}
    for batch_size in spec["batch_sizes"]:
        t0 = time.perf_counter()
        outputs = generate_batched(model, tokenizer, prompts, max_new_tokens=new, batch_size=batch_size)
        batched[str(batch_size)] = {"seconds": time.perf_counter() - t0,
                                    "identical": sum(a == b for a, b in zip(outputs, single))}
    return {"prompts": len(prompts), "max_new_tokens": new, "one_by_one_s": single_s, "batched": batched,
            "default_batch_size": spec["default_batch_size"]}


WORKERS: dict[str, Callable[[Spec], dict]] = {
    "machine": machine, "model_load": model_load, "olora_init": olora_init, "train_baseline": train_baseline,
    "train_oloraplus": train_oloraplus, "loss_compare": loss_compare, "step_scaling": step_scaling,
    "generation": generation,
}

"""The measurements of the GPU bench, each run in its own process by gpu_bench.py (`--worker NAME`).

Every training run is instrumented from the outside, the same way for both sides: `Trainer.train` is wrapped
in the worker's process so that a `StepClock` joins the run's callbacks and the trainer itself can be read
afterwards. The clock synchronises the device only at the end of the warm-up steps and at the last step, so
the steady-state seconds per step cover whole steps without adding a host sync to any other step. What the
run really did (packing, response-only loss, compile, fused AdamW, 4-bit layers, checkpointing) is read
from its metrics, its trainer and its model, never assumed from the options.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
CARRIED = BENCH.parent / ".gpu"  # what gpu_prepare.sh puts beside the repo (git-ignored)
WARMUP_STEPS = 5  # excluded from the steady state on both sides

# Model shapes, from the models' own config.json; vocab comes from the tokenizer (SmolLM2's, 49,152).
SHAPES: dict[str, dict] = {
    "TinyLlama-1.1B": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                           num_key_value_heads=4, head_dim=64, tie_word_embeddings=False,
                           max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5),
    "SmolLM2-135M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5),
    "Llama-3-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
                       max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, tie_word_embeddings=True, max_position_embeddings=1024),
}


def device():
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def tokenizer_dir() -> Path:
    """SmolLM2's tokenizer files: carried to a GPU machine in .gpu/tokenizer, else the converted model cache."""
    if (CARRIED / "tokenizer" / "tokenizer.json").is_file():
        return CARRIED / "tokenizer"
    from oloraplus import models

    return Path(models.resolve_model_path("smollm2-135m"))


def random_model(shape: str, tokenizer, dtype):
    """A random-init Llama of `shape` built directly on the device in `dtype` (no fp32 copy of an 8B model)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SHAPES[shape])
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device()):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    return model


def save_model(model, tokenizer, path: Path) -> None:
    model.save_pretrained(path, safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(path)


def model_dtype():
    import torch

    return torch.bfloat16 if device().type == "cuda" else torch.float32


def build_model(spec: dict) -> dict:
    """One random-init model (bf16 on a GPU, fp32 on a CPU) saved as an HF directory with SmolLM2's tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir())
    t0 = time.perf_counter()
    model = random_model(spec["shape"], tok, model_dtype())
    build_s = time.perf_counter() - t0
    save_model(model, tok, Path(spec["path"]))
    return {"params": sum(p.numel() for p in model.parameters()), "path": spec["path"], "build_s": build_s,
            "save_s": time.perf_counter() - t0 - build_s}


def matmul(spec: dict) -> dict:
    """Best bf16 (CUDA) or fp32 (CPU) n×n matmul rate in FLOP/s, timed with CUDA events after a warm-up."""
    import torch

    dev = device()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    n = spec["n"]
    a, b = torch.randn(n, n, device=dev, dtype=dtype), torch.randn(n, n, device=dev, dtype=dtype)
    rates = []
    for _ in range(10):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            torch.mm(a, b)
            seconds = time.perf_counter() - t0
        rates.append(2 * n**3 / seconds)
    name = torch.cuda.get_device_name(0) if dev.type == "cuda" else "CPU"
    return {"best_flops": max(rates[1:]), "dtype": str(dtype), "device": name, "n": n,
            "torch": torch.__version__, "cuda": torch.version.cuda}


# --- instrumentation of a training run ---

class StepClock:
    """Wall time of the warm-up steps and of the steady state after them (a TrainerCallback by duck typing,
    added to the run's own callbacks). Synchronises the device twice per run: after step WARMUP_STEPS and
    after the last step."""

    def __init__(self):
        self.begin = self.warm_end = self.end = None
        self.warm_step = self.end_step = 0
        self.warm_tokens = self.end_tokens = 0

    def __getattr__(self, name: str):  # every other Trainer event: nothing to do
        if name.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_train_begin(self, args, state, control, **kwargs):
        _sync()
        self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == WARMUP_STEPS or state.global_step >= state.max_steps:
            _sync()
            now = time.perf_counter()
            if state.global_step == WARMUP_STEPS:
                self.warm_end, self.warm_step, self.warm_tokens = now, state.global_step, state.num_input_tokens_seen
            if state.global_step >= state.max_steps:
                self.end, self.end_step, self.end_tokens = now, state.global_step, state.num_input_tokens_seen

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.begin is not None and self.warm_end is not None:
            out["warmup_s"] = self.warm_end - self.begin  # the first WARMUP_STEPS steps, compile included
        if self.warm_end is not None and self.end is not None and self.end_step > self.warm_step:
            seconds = self.end - self.warm_end
            out["steady_seconds_per_step"] = seconds / (self.end_step - self.warm_step)
            out["steady_tokens_per_s"] = (self.end_tokens - self.warm_tokens) / seconds
            out["steady_steps"] = self.end_step - self.warm_step
        return out


def instrument() -> list:
    """Wrap `transformers.Trainer.train` in this process: each run gets a StepClock; returns [(trainer, clock)]."""
    import transformers

    runs: list = []
    original = transformers.Trainer.train

    def train(self, *args, **kwargs):
        clock = StepClock()
        self.add_callback(clock)
        runs.append((self, clock))
        return original(self, *args, **kwargs)

    transformers.Trainer.train = train
    return runs


def _inner_optimizer(optimizer):
    while hasattr(optimizer, "optimizer"):  # accelerate's AcceleratedOptimizer wraps the torch one
        optimizer = optimizer.optimizer
    return optimizer


def fast_paths(trainer, model, metrics: dict) -> dict[str, Any]:
    """What the run really used, read from its metrics, trainer and model."""
    import torch
    from oloraplus.adapters import lean

    optimizer = _inner_optimizer(trainer.optimizer) if trainer.optimizer is not None else None
    fused = None
    if optimizer is not None:
        flags = {bool(g.get("fused")) for g in optimizer.param_groups} | {bool(optimizer.defaults.get("fused"))}
        fused = flags == {True}
    modules = list(model.modules())
    compiled = sum(1 for m in modules if getattr(m, "_compiled_call_impl", None) is not None
                   or type(m).__name__ == "OptimizedModule")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        "packing": metrics.get("packing"),  # the collator's own flag (off when the model cannot pack)
        "response_only_loss": getattr(trainer, "response_only", False),  # RatioTrainer's probed value
        "compile_modules": compiled,
        "compile_s": metrics.get("compile_s"),
        "fused_adamw": fused,
        "optimizer": type(optimizer).__name__ if optimizer is not None else None,
        "bf16_autocast": bool(trainer.args.bf16),
        "gradient_checkpointing": bool(getattr(base, "is_activation_checkpointing",  # transformers ≥ 5.23
                                               getattr(base, "is_gradient_checkpointing", False))),
        "linear_4bit": sum(1 for m in modules if "Linear4bit" in type(m).__name__),
        "linear_8bit": sum(1 for m in modules if "Linear8bit" in type(m).__name__),
        "cuda": torch.cuda.is_available(),
        # adapters/lean.py: LoRA layers on the lean forward, those computed with their siblings (q/k/v, gate/up;
        # read after the run: the sharing turns itself off where siblings read other inputs), the packed mask hook
        "lean_lora": sum(1 for m in modules if type(m).__name__ == "LeanLinear"),
        "lean_shared": sum(1 for m in modules if type(m).__name__ == "LeanLinear" and m.__dict__.get(lean.SIBLINGS)),
        "packed_mask_hook": any(hasattr(m, lean.MASK_HOOK) for m in modules),
    }


def train(spec: dict) -> dict:
    """One training run (`workers.train_baseline` or `train_oloraplus`) with its peak GPU memory, steady state
    and (oloraplus) the fast paths it really used."""
    import torch

    sys.path.insert(0, str(BENCH))
    import workers

    runs = instrument()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    worker = workers.train_baseline if spec["side"] == "baseline" else workers.train_oloraplus
    result = worker({"setup": spec["setup"], "options": spec.get("options", {})})
    if torch.cuda.is_available():
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    result.pop("train_lengths", None)
    trainer, clock = runs[-1]
    result.update(clock.summary())
    if spec["side"] != "baseline":
        result["fast_paths"] = fast_paths(trainer, trainer.model, result)
    return result


def train_big(spec: dict) -> dict:
    """A large random-init model trained with memory options (the Llama-3-8B job): built on the device in bf16,
    saved once to a local folder (the `--quantize` load reads a checkpoint), freed, then `train()` from it.

    The peak GPU memory is the training's alone: the built model is freed and the peak counter reset first.
    """
    import torch
    from transformers import AutoTokenizer

    from oloraplus.config import TrainConfig
    from oloraplus.train.recipe import train as train_run

    tok = AutoTokenizer.from_pretrained(tokenizer_dir())
    path = Path(spec["dir"]) / spec["shape"]
    t0 = time.perf_counter()
    model = random_model(spec["shape"], tok, model_dtype())
    params = sum(p.numel() for p in model.parameters())
    build_s = time.perf_counter() - t0
    save_model(model, tok, path)
    save_s = time.perf_counter() - t0 - build_s
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    runs = instrument()
    out = Path(spec["dir"]) / "run"
    cfg = TrainConfig(model=str(path), data=spec["data"], output=str(out), method="olora", **spec["options"])
    t1 = time.perf_counter()
    result = train_run(cfg)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str, type(None)))}
    trainer, clock = runs[-1]
    out_metrics = {**metrics, **clock.summary(), "params": params, "build_s": build_s, "save_s": save_s,
                   "run_s": time.perf_counter() - t1, "fast_paths": fast_paths(trainer, result.model, metrics)}
    if torch.cuda.is_available():
        out_metrics["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out_metrics["peak_gpu_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    return out_metrics


def sleep(spec: dict) -> dict:
    """Sleeps `seconds`, then returns: a stand-in job for testing the runner's timeouts on any machine."""
    time.sleep(spec["seconds"])
    return {"slept_s": spec["seconds"]}


WORKERS = {"build_model": build_model, "matmul": matmul, "train": train, "train_big": train_big, "sleep": sleep}

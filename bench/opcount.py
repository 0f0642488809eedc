"""Aten ops dispatched per optimizer step, counted on the CPU for the path that runs on a GPU.

    python bench/opcount.py                      # TinyLlama-1.1B structure, batch 4 and 32, two sizes: ~20 min*
    python bench/opcount.py --batches 4 --sizes small --no-compile --out /tmp/o.md   # a quick look (~1 min*)

(* on the shared 2-core machine at load average ~10; the counts themselves do not depend on load)

A LoRA step at small batch on a GPU is bound by the host launching kernels: it costs in proportion to the
ops it dispatches, and that count needs no GPU. `OpCounter` (a `TorchDispatchMode`) sees every aten op
that reaches the dispatcher below autograd and autocast: forward, backward (autograd's engine carries the
mode), optimizer. The step is the one that runs on CUDA, forced on the CPU: bf16 base weights, fp32 adapter
weights, bf16 autocast, and the device work of the transformers Trainer's step on CUDA for each arm:

- recipe (bench/baseline.py): PEFT `init_lora_weights="olora"`, rows padded to max_length with an attention
  mask, `model(**batch, num_items_in_batch=n).loss`, the Trainer's NaN/inf loss filter and non-padding token
  count (each a host sync), foreach gradient clipping, foreach AdamW (torch's default on CUDA), B at λη;
- oloraplus: `attach_adapter` (OLoRA), packed rows, `response_only_loss` with the collator's (rows, K)
  positions (its CUDA branch), foreach clipping, fused AdamW (`build_optimizer` on CUDA), the NaN watch.

Compiled: each decoder layer compiled with `torch.compile` (inductor, regional). Ops inside a compiled layer
are replaced by the kernels inductor generates for its forward and backward graphs; a kernel is one call
in the generated wrapper's `call()`: a fused kernel (`cpp_fused_*` here, a triton kernel on a GPU), an
extern kernel (`extern_kernels.mm`, ...) or an aten fallback (`torch.ops.aten.*`); buffer allocations and
`reinterpret_tensor` are not launches. Per step: ops outside the layers (counted) + layers × kernels per layer.
The CPU's inductor fuses differently from its GPU backend: the compiled count is an estimate of the GPU's.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

BENCH = Path(__file__).resolve().parent
PHASES = ("forward", "backward", "optimizer")
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, LR, RATIO = 32, 16.0, 3e-4, 4.0
LAYERS = 22  # TinyLlama-1.1B: 22 blocks, 32 query heads, 4 KV heads (GQA)
# Shapes only change the sizes, not the structure: every adapted matrix keeps min(out, in) ≥ r = 32.
SIZES = {
    "small": dict(hidden_size=64, head_dim=8, intermediate_size=128, vocab_size=256),
    "larger": dict(hidden_size=128, head_dim=16, intermediate_size=352, vocab_size=512),
}
MAX_LENGTH = 64  # the recipe pads every row to this (512 in the paper): a size, not part of the structure
# aten ops that only make a view (no kernel on any device); detach is an alias
VIEW_LIKE = {"_unsafe_view", "_reshape_alias", "alias", "detach", "lift_fresh"}


def is_view_like(func: torch._ops.OpOverload) -> bool:
    return func.is_view or func.overloadpacket.__name__ in VIEW_LIKE


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while active, under the current `phase`.

    Ops that on a GPU run on host tensors only are not counted (no kernel): torch's foreach AdamW keeps each
    parameter's `step` on the CPU and reads it with `.item()`; `host` holds those tensors, and
    what is computed from them alone is host work too. Host syncs (`.item()` of a device tensor) are counted
    as ops and, separately, in `syncs`. Non-aten ops (the profiler's record_function markers) are skipped.
    """

    def __init__(self, host: list[torch.Tensor] | None = None) -> None:
        super().__init__()
        self.phase = "forward"
        self.ops: dict[str, Counter] = {p: Counter() for p in PHASES}
        self.kept = list(host or ())  # alive while counted, so no other tensor can reuse their ids
        self.host = {id(t) for t in self.kept}
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace != "aten":
            return out
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func is torch.ops.aten.lift_fresh.default or (tensors and all(id(t) in self.host for t in tensors)):
            made = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.kept += made
            self.host.update(id(t) for t in made)
            return out
        self.ops[self.phase][func] += 1
        self.syncs += func is torch.ops.aten._local_scalar_dense.default
        return out

    def total(self, phase: str | None = None, views: bool = True) -> int:
        phases = PHASES if phase is None else (phase,)
        return sum(n for p in phases for f, n in self.ops[p].items() if views or not is_view_like(f))

    def names(self, phase: str | None = None) -> Counter:
        """Counts by op name (overload packet), e.g. {'mm': 463, '_to_copy': 712}."""
        out: Counter = Counter()
        for p in PHASES if phase is None else (phase,):
            for f, n in self.ops[p].items():
                out[f.overloadpacket.__name__] += n
        return out


# --- the structure and the data ----------------------------------------------------------------------------------

def tinyllama_structure(size: str, layers: int = LAYERS) -> torch.nn.Module:
    """A random LlamaForCausalLM with TinyLlama-1.1B's structure and `size`'s widths, bf16 weights, SDPA."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=4,
                         max_position_embeddings=2048, tie_word_embeddings=False, attn_implementation="sdpa",
                         **SIZES[size])
    return LlamaForCausalLM(config).to(torch.bfloat16)


def examples(batch: int, vocab: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """`batch` tokenised examples of 12..60 tokens whose first ~half is a prompt (labels -100)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        n = int(torch.randint(12, MAX_LENGTH - 3, (1,), generator=g))
        ids = torch.randint(1, vocab, (n,), generator=g).tolist()
        prompt = n // 2
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def padded_batch(items: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """The recipe's rows: right-padded to MAX_LENGTH (DataCollatorForSeq2Seq padding="max_length")."""
    rows = len(items)
    input_ids = torch.zeros((rows, MAX_LENGTH), dtype=torch.long)
    labels = torch.full((rows, MAX_LENGTH), -100, dtype=torch.long)
    mask = torch.zeros((rows, MAX_LENGTH), dtype=torch.long)
    for i, item in enumerate(items):
        n = len(item["input_ids"])
        input_ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(item["input_ids"]), torch.tensor(item["labels"]), 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


# --- the two steps: the device work of one Trainer optimizer step on CUDA -----------------------------------------

def recipe_model(size: str, layers: int = LAYERS) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type="CAUSAL_LM", r=RANK, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS,
                        init_lora_weights="olora")
    return get_peft_model(tinyllama_structure(size, layers), config)


def recipe_step(model: torch.nn.Module, items: list[dict], counter: OpCounter
                ) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    """bench/baseline.py's step as transformers' Trainer runs it on CUDA (trainer.py, _inner_training_loop)."""
    sys.path.insert(0, str(BENCH))
    from baseline import paper_optimizer

    optimizer = paper_optimizer(model, LR, RATIO)
    for group in optimizer.param_groups:
        group["foreach"] = True  # torch's default for CUDA parameters
    params = [p for p in model.parameters() if p.requires_grad]
    batch = padded_batch(items)
    tr_loss = torch.zeros(())

    def step() -> None:
        nonlocal tr_loss
        counter.phase = "forward"
        n_items = batch["labels"][..., 1:].ne(-100).sum()  # get_batch_samples
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch, num_items_in_batch=n_items).loss
        counter.phase = "backward"
        loss.backward()
        counter.phase = "optimizer"
        step_loss = loss.detach()
        if torch.isnan(step_loss) or torch.isinf(step_loss):  # logging_nan_inf_filter: a host sync
            raise RuntimeError("non-finite loss")
        tr_loss += step_loss
        int(batch["attention_mask"].sum())  # include_num_input_tokens_seen="non_padding": a host sync
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, optimizer


def oloraplus_model(size: str, layers: int = LAYERS) -> torch.nn.Module:
    from oloraplus.adapters.build import AdapterSpec, attach_adapter
    from oloraplus.adapters.lean import make_lean_

    model, _ = attach_adapter(tinyllama_structure(size, layers), AdapterSpec("olora", rank=RANK, alpha=ALPHA))
    return make_lean_(model, mask=True)  # the packed mask is CUDA-only by default: this counts the CUDA path


def oloraplus_step(model: torch.nn.Module, items: list[dict], counter: OpCounter
                   ) -> tuple[Callable[[], None], torch.optim.Optimizer]:
    """oloraplus's step as RatioTrainer runs it on CUDA: packed rows, (rows, K) positions, fused AdamW, NaN watch."""
    from oloraplus.data.collate import CausalLMCollator
    from oloraplus.eval.fast_loss import response_only_loss
    from oloraplus.optim.ratio import build_optimizer
    from oloraplus.train.trainer import _NonFiniteWatch

    optimizer = build_optimizer(model, LR, RATIO, fused=True)  # what it picks for CUDA parameters
    params = [p for p in model.parameters() if p.requires_grad]
    batch = CausalLMCollator(pad_token_id=0, packing=True, pack_length=MAX_LENGTH)(items)
    state = SimpleNamespace(step_loss=None, global_step=0)
    watch = _NonFiniteWatch(SimpleNamespace(model=model, step_loss=lambda: state.step_loss))
    watch.on_train_begin(None, None, None)
    tr_loss = torch.zeros(())

    def step() -> None:
        nonlocal tr_loss
        counter.phase = "forward"
        n_items = batch["labels"][..., 1:].ne(-100).sum()  # get_batch_samples
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = response_only_loss(model, batch, n_items, exact=False)
        counter.phase = "backward"
        loss.backward()
        counter.phase = "optimizer"
        state.step_loss = loss.detach()  # RatioTrainer.training_step
        tr_loss += state.step_loss  # logging_nan_inf_filter=False: no sync; tokens counted by the collator
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        watch.on_optimizer_step(None, state, None)
        optimizer.zero_grad(set_to_none=True)

    return step, optimizer


# --- counting -----------------------------------------------------------------------------------------------------

def count_step(step: Callable[[], None], counter: OpCounter, optimizer: torch.optim.Optimizer) -> OpCounter:
    """Run `step` once to warm up (optimizer state, autocast), then count the second step.

    The optimizer's `step` counters are host tensors unless it is fused or capturable (then they live on the GPU).
    """
    step()
    on_device = any(g.get("fused") or g.get("capturable") for g in optimizer.param_groups)
    host = [] if on_device else [s["step"] for s in optimizer.state.values() if "step" in s]
    counter.__dict__.update(OpCounter(host).__dict__)
    with counter:
        step()
    return counter


def count(arm: str, size: str, batch: int, layers: int = LAYERS, lean: bool = True,
          mask: bool = True, shared: bool = True) -> OpCounter:
    """Ops of one optimizer step of `arm` ('recipe' or 'oloraplus'); `lean`/`mask`/`shared`: oloraplus's levers
    on or off (`shared`: q/k/v and gate/up computed together, their A's stacked)."""
    from oloraplus.adapters import lean as lean_module

    counter = OpCounter()
    items = examples(batch, SIZES[size]["vocab_size"])
    if arm == "recipe":
        model = recipe_model(size, layers)
        step, optimizer = recipe_step(model, items, counter)
    else:
        model = oloraplus_model(size, layers)
        lean_module.undo_lean_(model, lora=not lean, mask=not mask)
        if not shared:
            lean_module.unshare_(model)
        step, optimizer = oloraplus_step(model, items, counter)
    return count_step(step, counter, optimizer)


# --- compiled layers: kernels per layer from inductor's generated code --------------------------------------------

LAUNCH = re.compile(r"^\s*(?:[\w, ]+ = )?(cpp_fused_\w+|extern_kernels\.\w+|torch\.ops\.\w+\.\w+(?:\.\w+)?|"
                    r"aten\.\w+(?:\.\w+)?|triton_\w+\.run|\w+\.run)\(")
NOT_LAUNCH = ("empty_strided", "reinterpret_tensor", "as_strided", "alloc_from_pool", ".del", "assert_size_stride")


def kernel_calls(code: str) -> list[str]:
    """The kernel launches in one inductor wrapper: calls in its `call()` that run a kernel (see module doc)."""
    body = code.split("def call(", 1)[-1].split("\ndef ", 1)[0]
    calls = []
    for line in body.splitlines():
        match = LAUNCH.match(line)
        if match and not any(skip in match.group(1) for skip in NOT_LAUNCH):
            calls.append(match.group(1))
    return calls


@dataclass
class Compiled:
    forward_kernels: int
    backward_kernels: int
    graphs: int
    compile_s: float
    kernels: Counter = field(default_factory=Counter)


def compiled_layer_kernels(size: str, batch: int) -> Compiled:
    """Compile one lean oloraplus decoder layer (autocast bf16, fp32 adapters) and count its graphs' kernels."""
    from torch._inductor.utils import run_and_get_code

    model = oloraplus_model(size, layers=1)
    layer = model.get_base_model().model.layers[0]
    items = examples(batch, SIZES[size]["vocab_size"])
    from oloraplus.adapters.lean import packed_causal_mask
    from oloraplus.data.collate import CausalLMCollator

    batch_ = CausalLMCollator(pad_token_id=0, packing=True, pack_length=MAX_LENGTH)(items)
    position_ids = batch_["position_ids"]
    decoder = model.get_base_model().model
    hidden = torch.randn(*position_ids.shape, decoder.config.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    with torch.no_grad():
        cos_sin = decoder.rotary_emb(hidden, position_ids=position_ids)
    mask = packed_causal_mask(position_ids)
    compiled = torch.compile(layer)

    def run() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = compiled(hidden, attention_mask=mask, position_embeddings=cos_sin, position_ids=position_ids)
        out.float().sum().backward()

    t0 = time.perf_counter()
    _, codes = run_and_get_code(run)
    compile_s = time.perf_counter() - t0
    kernels = [kernel_calls(code) for code in codes]
    everything = Counter(name for k in kernels for name in k)
    # inductor emits the forward graph's code first, the backward's when backward runs
    forward_kernels = len(kernels[0]) if kernels else 0
    backward_kernels = sum(len(k) for k in kernels[1:])
    return Compiled(forward_kernels, backward_kernels, len(codes), compile_s, everything)


def per_layer(arm_counts: dict[int, OpCounter], phase: str | None, views: bool) -> float:
    """Ops per decoder layer from two depths: (count(L1) - count(L0)) / (L1 - L0)."""
    (l0, c0), (l1, c1) = sorted(arm_counts.items())
    return (c1.total(phase, views) - c0.total(phase, views)) / (l1 - l0)


# --- the CPU: does the lean path change the speed of the CPU's own step? ------------------------------------------

def cpu_speed(data: Path, reps: int, batch: int = 4, model_name: str = "smollm2-135m") -> dict[str, Any]:
    """Seconds per training step on the CPU, lean vs PEFT's forward, alternating in one process (same batches).

    The CPU's own step: fp32 weights, no autocast, packed rows, the exact response-only loss, AdamW. Returns the
    median of each arm and the median of the per-pair ratios lean / PEFT (pairs run back to back, so load that
    changes slowly cancels in the ratio).
    """
    from oloraplus import models
    from oloraplus.adapters import lean as lean_module
    from oloraplus.adapters.build import AdapterSpec, attach_adapter
    from oloraplus.data.collate import CausalLMCollator
    from oloraplus.data.formats import load_examples
    from oloraplus.data.split import split_examples
    from oloraplus.data.tokenize import encode_examples
    from oloraplus.eval.fast_loss import response_only_loss
    from oloraplus.optim.ratio import build_optimizer

    loaded = models.load_model(model_name, device="cpu")
    train, _ = split_examples(load_examples(str(data)), batch * reps, 0, seed=42)
    dataset, _ = encode_examples(train, loaded.tokenizer, 512)
    collate = CausalLMCollator(pad_token_id=loaded.tokenizer.pad_token_id, packing=True, pack_length=512)
    batches = [collate([dataset[i] for i in range(j, j + batch)]) for j in range(0, batch * reps, batch)]
    model, _ = attach_adapter(loaded.model, AdapterSpec("olora", rank=RANK, alpha=ALPHA))
    optimizer = build_optimizer(model, LR, RATIO)

    def step(inputs: dict) -> float:
        t0 = time.perf_counter()
        response_only_loss(model, inputs, exact=True).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step(batches[0])  # warm-up
    times: dict[str, list[float]] = {"lean": [], "peft": []}
    for i, inputs in enumerate(batches):
        order = ("lean", "peft") if i % 2 == 0 else ("peft", "lean")
        for arm in order:
            if arm == "lean":
                lean_module.make_lean_(model)
            else:
                lean_module.undo_lean_(model)
            times[arm].append(step(inputs))
    ratios = sorted(a / b for a, b in zip(times["lean"], times["peft"]))
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"lean_s": median(times["lean"]), "peft_s": median(times["peft"]), "ratio": ratios[len(ratios) // 2],
            "ratios": ratios, "reps": reps, "batch": batch, "model": model_name, "threads": torch.get_num_threads()}


# --- the report ---------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="4,32")
    parser.add_argument("--sizes", default="small,larger")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled-layer count")
    parser.add_argument("--cpu-speed", type=int, default=0, metavar="REPS",
                        help="also time REPS training steps of SmolLM2 on the CPU, lean vs PEFT forward")
    parser.add_argument("--data", type=Path, default=BENCH.parents[1] / "shared" / "data" / "alpaca_en_demo.json")
    parser.add_argument("--out", type=Path, default=BENCH / "opcount.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    sizes = args.sizes.split(",")
    load = os.getloadavg()
    started = time.perf_counter()

    rows: list[dict[str, Any]] = []
    arms = [("recipe", {}), ("oloraplus, PEFT forward", dict(lean=False, mask=False)),
            ("oloraplus, + sync-free packed mask", dict(lean=False)),
            ("oloraplus, + one node per LoRA layer", dict(shared=False)),
            ("oloraplus eager (+ q/k/v, gate/up as one node)", {})]
    results: dict[tuple[str, str, int], OpCounter] = {}
    for size in sizes:
        for batch in batches:
            for name, levers in arms:
                arm = "recipe" if name == "recipe" else "oloraplus"
                counter = count(arm, size, batch, **levers)
                results[(name, size, batch)] = counter
                print(f"{size:7s} batch {batch:3d} {name:40s} {counter.total():6d} ops "
                      f"({counter.total(views=False)} without views)", flush=True)

    # Ops per layer (for the compiled estimate): oloraplus eager at two depths, first size and batch.
    size0, batch0 = sizes[0], batches[0]
    depth = {LAYERS: results[(arms[-1][0], size0, batch0)], LAYERS // 2: count("oloraplus", size0, batch0,
                                                                               layers=LAYERS // 2)}
    compiled = None if args.no_compile else compiled_layer_kernels(size0, batch0)
    if compiled is not None:
        print(f"compiled layer: {compiled.forward_kernels} forward + {compiled.backward_kernels} backward kernels, "
              f"{compiled.compile_s:.0f} s", flush=True)
    report = lambda speed: write_report(  # noqa: E731
        args.out, results, arms, sizes, batches, depth, compiled, speed, load, time.perf_counter() - started,
        portable(argv if argv is not None else sys.argv[1:]))
    report(None)  # the counts are kept even if the timing below fails
    if args.cpu_speed:
        report(cpu_speed(args.data, args.cpu_speed))
    print(f"wrote {args.out}")
    return 0


def portable(argv: list[str]) -> list[str]:
    """The command line as a reader can rerun it: absolute paths (this machine's) shown by their file name."""
    return [f"<{Path(a).name}>" if os.path.isabs(a) else a for a in argv]


def cpu_model() -> str:
    sys.path.insert(0, str(BENCH))
    from workers import cpu_model as model

    return model()


def write_report(path: Path, results, arms, sizes, batches, depth, compiled: Compiled | None,
                 speed: dict[str, Any] | None, load, wall_s, argv) -> None:
    first = sizes[0]
    lines = [
        "# Ops per optimizer step (TinyLlama-1.1B structure, counted on the CPU)",
        "",
        f"Made by `python bench/opcount.py {' '.join(argv)}` on "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
        f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, shared (load average {load[0]:.2f} at the start; "
        "counts do not depend on load), "
        f"{wall_s / 60:.1f} min. What is counted and how: the docstring of `bench/opcount.py` and "
        "`docs/performance-ops.md`.",
        "",
        "Structure: 22 decoder layers, 32 query / 4 KV heads, LoRA r = 32 on q, k, v, o, gate, up, down of every "
        "layer; bf16 base, fp32 adapters, bf16 autocast. Sizes (hidden / head dim / MLP / vocab): "
        + "; ".join(f"{s}: {c['hidden_size']}/{c['head_dim']}/{c['intermediate_size']}/{c['vocab_size']}"
                    for s, c in SIZES.items() if s in sizes) + ".",
        "",
        "## Eager: aten ops per optimizer step",
        "",
        "| batch | arm | " + " | ".join(f"{s}: total" for s in sizes)
        + " | forward | backward | optimizer | without views | × recipe | × recipe, without views |",
        "| --- | --- | " + " | ".join("---:" for _ in sizes) + " | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch in batches:
        recipe = results[("recipe", first, batch)]
        for name, _ in arms:
            c = results[(name, first, batch)]
            totals = " | ".join(str(results[(name, s, batch)].total()) for s in sizes)
            lines.append(
                f"| {batch} | {name} | {totals} | {c.total('forward')} | {c.total('backward')} | "
                f"{c.total('optimizer')} | {c.total(views=False)} | {c.total() / recipe.total():.2f} | "
                f"{c.total(views=False) / recipe.total(views=False):.2f} |")
    same = all(results[(n, s, b)].total() == results[(n, sizes[0], b)].total()
               for n, _ in arms for s in sizes for b in batches)
    lines += ["", f"Same count at every size: **{'yes' if same else 'NO'}**.", ""]

    lean_name = arms[-1][0]
    layer_ops = per_layer(depth, None, True)
    layer_ops_nv = per_layer(depth, None, False)
    lines += [
        "## Where the ops go (oloraplus eager, "
        f"{first}, batch {batches[0]})",
        "",
        f"Per decoder layer: {layer_ops:.0f} ops ({layer_ops_nv:.0f} without views), from the counts at "
        f"{min(depth)} and {max(depth)} layers; outside the layers (embedding, final norm, loss, optimizer, watch): "
        f"{depth[max(depth)].total() - max(depth) * layer_ops:.0f}.",
        "",
        "| op | recipe | oloraplus, PEFT forward | oloraplus eager |",
        "| --- | ---: | ---: | ---: |",
    ]
    names = [results[(n, first, batches[0])].names() for n in ("recipe", arms[1][0], lean_name)]
    for op, _ in (names[0] + names[1] + names[2]).most_common(14):
        lines.append(f"| {op} | " + " | ".join(str(n[op]) for n in names) + " |")

    if compiled is not None:
        lines += ["", "## Compiled decoder layers (estimate)", ""]
        for batch in batches:
            eager = results[(lean_name, first, batch)]
            recipe = results[("recipe", first, batch)]
            outside = eager.total() - LAYERS * layer_ops
            outside_nv = eager.total(views=False) - LAYERS * layer_ops_nv
            per = compiled.forward_kernels + compiled.backward_kernels
            total, total_nv = outside + LAYERS * per, outside_nv + LAYERS * per
            lines.append(
                f"- batch {batch}: {outside:.0f} ops outside the layers + {LAYERS} × {per} kernels "
                f"({compiled.forward_kernels} forward + {compiled.backward_kernels} backward per layer) = "
                f"**{total:.0f}** launches, **{total / recipe.total():.3f}×** the recipe "
                f"({total_nv:.0f} and {total_nv / recipe.total(views=False):.3f}× without views outside).")
        lines += [
            "",
            f"One layer compiled in {compiled.compile_s:.0f} s ({compiled.graphs} graphs; inductor's CPU backend). "
            "Kernels per layer by kind: "
            + ", ".join(f"{k}: {n}" for k, n in sorted(compiled.kernels.items(), key=lambda kv: -kv[1])) + ".",
        ]
    if speed is not None:
        end_load = os.getloadavg()[0]
        lines += [
            "", "## CPU speed of the lean path", "",
            f"{speed['model']}, OLoRA r = {RANK}, {speed['reps']} training steps of {speed['batch']} packed Alpaca "
            f"examples per arm, fp32 on the CPU ({speed['threads']} torch thread), lean and PEFT's forward alternating "
            f"in one process: median {speed['lean_s']:.3f} s/step lean, {speed['peft_s']:.3f} s/step PEFT; median "
            f"per-pair ratio lean / PEFT **{speed['ratio']:.3f}** (all pairs: "
            + ", ".join(f"{r:.2f}" for r in speed["ratios"])
            + f"). Load average {end_load:.1f} at the end: a shared machine, timings are noisy; the ratio of "
            "back-to-back pairs is the number to read.",
        ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())

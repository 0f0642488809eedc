"""Memory plan: what a `train` run will hold per process, from the model's config alone (never its weights).

The model is built on PyTorch's meta device (shapes, no storage), so parameters and trainable parameters are
exact for any architecture transformers knows, and the adapter's targets are the ones `train` would pick.
Memory is a sum of plain terms, each the bytes of what really allocates in a training step (read from
transformers' Llama forward and PyTorch's autograd; checked against the tensors autograd saves in
tests/test_plan.py and against measured peak RSS in bench/memory_results.md):

    weights      P_q · q + (P − P_q) · w           P_q: the blocks' linear weights (what --quantize quantizes),
                                                   q: bytes per quantized parameter (w unquantized), w: dtype
    adapters     P_a · 20                          fp32 parameter, gradient, AdamW m and v, one foreach temporary
    FSDP, p      weights / p + 2 · q · P_layer     p processes: the share, one gathered layer, the prefetched next;
                 adapters / p                      adapters, gradients and AdamW state sharded alike
    activations  T · L · a_layer + adapter terms   saved for backward, T = batch × length tokens
                 + N · V · 12                      the logits: log-softmax kept, its gradient, the logits' gradient
    checkpointed T · (L + 1) · h · w               each decoder layer's input (and the final norm's)
                 + max(logits, one layer)          the head's backward ends before the first layer recomputes

The symbols: L layers, h hidden, d_q = heads · head_dim, d_kv = kv_heads · head_dim, I intermediate,
V vocabulary, N scored positions (≤ T; we plan for T, the worst case). Per token and layer the Llama block
saves (`layer_activations`): the inputs of both RMSNorms (2h) and their 1/rms (2), the normed inputs of
adapted projections (h each side), q after RoPE and the attention output (2·d_q), k and v (2·d_kv), the
sdpa log-sum-exp (heads), gate, silu(gate) and up (3I), down's input when adapted (I), and per adapted
projection its method's term (`adapter_activation`: T·r for LoRA's A·x, ...). Frozen projections save
nothing: a frozen weight needs no input for its gradient. In fp32, the LoRA-family layers computed with their
siblings (q/k/v, gate/up: adapters/lean.py) also save the stacked copy of their A's (r·n each).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from oloraplus.config import TrainConfig
from oloraplus.console import world_size
from oloraplus.errors import ConfigError, ModelError

GiB = 1024 ** 3
QUANT_BYTES = {"nf4": 0.5 + 4 / 64, "fp4": 0.5 + 4 / 64, "int8": 1.0}  # + an fp32 absmax per 64 weights (4-bit)
ADAPTER_BYTES = 4 + 4 + 8 + 4  # fp32 parameter, gradient, AdamW exp_avg and exp_avg_sq, a _foreach temporary
LOGITS_BYTES = 12  # fp32 log-softmax (saved), the gradient reaching it, the logits' gradient: per logit
CUDA_OVERHEAD = int(0.75 * GiB)  # CUDA context, cuBLAS workspace, allocator slack (assumed, not measured)


@dataclass(frozen=True)
class Layer:
    """One adapted linear layer: (out m, in n), and what its input is (attn_in, o_proj, mlp_in, down)."""

    name: str
    m: int
    n: int
    role: str


@dataclass(frozen=True)
class Shapes:
    """What the estimate reads from a model config (Llama names; other families map onto them)."""

    model_type: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    params: int  # every parameter, tied ones once
    block_linear_params: int  # the weights of linear layers inside the blocks: what --quantize quantizes
    largest_block_params: int  # one decoder layer's parameters: what FSDP gathers at a time
    adapted: tuple[Layer, ...]


@dataclass(frozen=True)
class Plan:
    """Bytes per process for one configuration; `total(checkpointing)` is the peak of a training step."""

    shapes: Shapes
    method: str
    rank: int
    trainable: int
    dtype: str  # fp32 or bf16
    quantize: str
    processes: int
    fsdp: bool
    batch_size: int
    length: int
    weights: int
    adapters: int
    activations: int  # saved for backward without checkpointing, logits included
    activations_checkpointed: int
    overhead: int  # CUDA context etc. (0 on the CPU)
    load: int = 0  # --fsdp: the whole base each process holds before sharding (the init reads full weights)

    def fits_load(self, budget_bytes: float) -> bool:
        """--fsdp: every process loads the whole base (on its device) and computes the init before sharding."""
        return self.load + self.overhead <= budget_bytes

    def total(self, checkpointing: bool) -> int:
        act = self.activations_checkpointed if checkpointing else self.activations
        return self.weights + self.adapters + act + self.overhead


def role(name: str) -> str:
    """What a projection reads: the normed attention input, the attention output, the normed MLP input, or
    the MLP's gated product (down). Names as in Llama-family models."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("o_proj", "out_proj", "dense", "c_proj") and ("attn" in name or "attention" in name):
        return "o_proj"
    if leaf in ("down_proj", "fc2", "w2", "c_proj", "dense_4h_to_h"):
        return "down"
    if "attn" in name or "attention" in name:
        return "attn_in"
    return "mlp_in"


def read_shapes(cfg: TrainConfig) -> Shapes:
    """Build `--model` on the meta device and read what the estimate needs, targets as `train` resolves them."""
    import torch
    from transformers import AutoModelForCausalLM

    from oloraplus.adapters.targets import block_lists, out_in_shape, resolve_target_modules, targeted_layers

    from oloraplus.models import model_config

    config = model_config(cfg.model, cfg.trust_remote_code)
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"--model {cfg.model}: not a causal language model: {str(exc).splitlines()[0]}") from exc
    targets = resolve_target_modules(model, cfg.target_modules or None)
    adapted = tuple(Layer(name, *out_in_shape(layer), role(name))
                    for name, layer in targeted_layers(model, targets).items())
    blocks = [model.get_submodule(name) for name in block_lists(model)]
    block_linear = sum(m.weight.numel() for b in blocks for block in b for m in block.modules()
                       if isinstance(m, torch.nn.Linear))
    largest = max((sum(p.numel() for p in block.parameters()) for b in blocks for block in b), default=0)

    def get(*names: str, default: int | None = None) -> int | None:
        """The first of a config's synonyms that is set (Llama, GPT-2 and OPT spell the same shape apart)."""
        return next((getattr(config, n) for n in names if getattr(config, n, None) is not None), default)

    hidden = get("hidden_size", "n_embd", "d_model")
    heads = get("num_attention_heads", "n_head")
    return Shapes(
        model_type=config.model_type, layers=get("num_hidden_layers", "n_layer"), hidden=hidden, heads=heads,
        kv_heads=get("num_key_value_heads", default=heads), head_dim=get("head_dim", default=hidden // heads),
        intermediate=get("intermediate_size", "n_inner", "ffn_dim", default=None) or 4 * hidden,
        vocab=config.vocab_size, params=sum(p.numel() for p in model.parameters()),
        block_linear_params=block_linear, largest_block_params=largest, adapted=adapted)


def adapter_params(method: str, rank: int, layer: Layer) -> int:
    """Trainable parameters a method adds to one out×in layer (the paper's counts; PEFT's parameters)."""
    m, n = layer.m, layer.n
    if method == "ohora":
        return m + n  # A_high (m/r_high × r_high) and B_high (n/r_high × r_high)
    if method == "dora":
        return rank * (m + n) + m  # B, A and the magnitude vector
    return rank * (m + n)  # B (m×r), A (r×n): lora, olora, pissa, eva, hira


def adapter_activation(method: str, rank: int, layer: Layer, tokens: int) -> int:
    """Elements the adapter of one layer saves for backward beyond the frozen layer (measured per method on
    PEFT's layers: tests/test_plan.py)."""
    m, n = layer.m, layer.n
    if method == "hira":
        return m * n  # W0 ⊙ (B·A), the effective weight its matmul used
    if method == "ohora":
        from oloraplus.adapters.ohora import r_high_for

        return tokens * r_high_for(m, n) ** 2  # the Kronecker matvec's middle product
    if method == "dora":
        # A·x, the base and LoRA outputs; the detached norm of W + s·B·A and m/‖·‖ (PEFT frees the weight itself
        # inside the forward: one layer's m·n at a time, not planned)
        return tokens * (rank + 2 * m) + 2 * m
    return tokens * rank  # A·x, which B's gradient needs


def stacked_a_copies(method: str, rank: int, adapted: tuple[Layer, ...]) -> int:
    """Elements of the stacked A's that LoRA-family layers computed with their siblings save (adapters/lean.py:
    one cat of q/k/v's A's, one of gate/up's); the cast copies in a lower compute dtype are not planned."""
    from oloraplus.adapters import registry
    from oloraplus.adapters.lean import SHARED_INPUT

    if not registry.get(method).composable:  # the methods whose layers are PEFT's plain LoRA Linear
        return 0
    parents: dict[tuple[str, int], list[Layer]] = {}
    for layer in adapted:
        parent, _, leaf = layer.name.rpartition(".")
        group = next((i for i, names in enumerate(SHARED_INPUT) if leaf in names), None)
        if group is not None:
            parents.setdefault((parent, group), []).append(layer)
    return sum(rank * layer.n for layers in parents.values() if len(layers) > 1 for layer in layers)


def layer_activations(s: Shapes, roles: set[str], tokens: int) -> int:
    """Elements one decoder layer saves for its backward, adapter terms excluded (module docstring)."""
    d_q, d_kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
    per_token = (2 * s.hidden + 2  # RMSNorm inputs and 1/rms, attention and MLP side
                 + 2 * d_q + 2 * d_kv + s.heads  # sdpa: q, out, k, v, log-sum-exp
                 + 3 * s.intermediate  # SiLU input, its output, up's output
                 + s.hidden * ("attn_in" in roles) + s.hidden * ("mlp_in" in roles)  # normed inputs of adapted
                 + s.intermediate * ("down" in roles))  # down's input, when adapted
    return tokens * per_token


def estimate(cfg: TrainConfig, shapes: Shapes, *, dtype: str = "fp32", processes: int = 1,
             cuda: bool = False) -> Plan:
    """The plan of `cfg` on a model of `shapes`, `processes` processes, weights in `dtype` (fp32 | bf16)."""
    w = {"fp32": 4, "bf16": 2}[dtype]
    tokens = cfg.batch_size * cfg.max_length  # the worst case: every example fills --max-length
    trainable = sum(adapter_params(cfg.method, cfg.rank, layer) for layer in shapes.adapted)
    q = QUANT_BYTES.get(cfg.quantize, w)  # bytes of a parameter in a block's linear layer
    weights = shapes.block_linear_params * q + (shapes.params - shapes.block_linear_params) * w
    adapters = trainable * ADAPTER_BYTES
    shard = processes if cfg.fsdp else 1
    whole = weights  # what a process holds while it loads, before any sharding
    if shard > 1:  # each process keeps 1/N; a layer is gathered whole for its forward, the next prefetched
        weights = weights / shard + 2 * shapes.largest_block_params * q
        adapters = adapters / shard
    roles = {layer.role for layer in shapes.adapted}
    per_layer = layer_activations(shapes, roles, tokens) * w
    adapter_act = sum(adapter_activation(cfg.method, cfg.rank, layer, tokens) for layer in shapes.adapted) * w
    if dtype == "fp32" and cfg.quantize == "none":
        adapter_act += stacked_a_copies(cfg.method, cfg.rank, shapes.adapted) * w
    one_layer = per_layer + adapter_act / max(shapes.layers, 1)
    logits = tokens * shapes.vocab * LOGITS_BYTES
    rope = 2 * tokens * shapes.head_dim * w  # cos and sin, shared by the layers
    activations = shapes.layers * per_layer + adapter_act + logits + rope
    stored = (shapes.layers + 1) * tokens * shapes.hidden * w  # each layer's input and the final norm's
    checkpointed = stored + rope + max(logits, one_layer)  # the head's backward ends before the first recompute
    return Plan(shapes=shapes, method=cfg.method, rank=cfg.rank, trainable=trainable, dtype=dtype,
                quantize=cfg.quantize, processes=processes, fsdp=cfg.fsdp, batch_size=cfg.batch_size,
                length=cfg.max_length, weights=int(weights), adapters=int(adapters), activations=int(activations),
                activations_checkpointed=int(checkpointed), overhead=CUDA_OVERHEAD if cuda else 0,
                load=int(whole) if shard > 1 else 0)


def largest_batch(cfg: TrainConfig, shapes: Shapes, budget_bytes: float, checkpointing: bool, **kwargs) -> int:
    """The largest --batch-size whose plan fits `budget_bytes` (0: not even 1 fits). Memory grows linearly."""
    def fits(batch: int) -> bool:
        plan = estimate(dataclasses.replace(cfg, batch_size=batch), shapes, **kwargs)
        return plan.total(checkpointing) <= budget_bytes

    if not fits(1):
        return 0
    high = 1
    while fits(high * 2) and high < 1 << 20:
        high *= 2
    low, high = high, high * 2  # fits(low), not fits(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def train_lines(cfg: TrainConfig) -> list[str]:
    """What `train` prints when it starts: the totals of this launch's plan (device, processes) in two lines.

    Informational: a model the estimate cannot read (an unusual config) gets one line saying so; a model that
    does not exist fails here as it would when loading."""
    try:
        shapes = read_shapes(cfg)
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        return [f"memory plan: not available for this model ({type(exc).__name__}: {str(exc).splitlines()[0]})"]
    cuda = has_cuda()
    p = estimate(cfg, shapes, dtype="bf16" if cuda else "fp32", processes=world_size(), cuda=cuda)
    return [summary(p)[1], f"memory plan per process: weights {gib(p.weights)} + adapters {gib(p.adapters)} + "
            f"activations {gib(p.activations_checkpointed if cfg.gradient_checkpointing else p.activations)}"
            f" = {gib(p.total(cfg.gradient_checkpointing))} (details: oloraplus plan)"]


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def summary(plan: Plan) -> list[str]:
    """The plan as the lines `oloraplus plan` prints (`train` prints the first and last two)."""
    s = plan.shapes
    pct = 100 * plan.trainable / max(s.params, 1)
    weights = plan.quantize if plan.quantize != "none" else plan.dtype
    where = f"{plan.processes} process{'es' if plan.processes > 1 else ''}" + (", FSDP" if plan.fsdp else "")
    rows = [(f"weights ({weights})", plan.weights), ("adapters + gradients + AdamW (fp32)", plan.adapters),
            ("activations", plan.activations), ("activations, --gradient-checkpointing", plan.activations_checkpointed)]
    if plan.overhead:
        rows.append(("CUDA context and allocator (assumed)", plan.overhead))
    return [
        f"model: {s.model_type}, {s.layers} layers, hidden {s.hidden}, {s.heads}/{s.kv_heads} heads, intermediate "
        f"{s.intermediate}, vocabulary {s.vocab}; {plan.method} r={plan.rank} on {len(s.adapted)} layers",
        f"parameters: {s.params:,}; trainable: {plan.trainable:,} ({pct:.2f} %)",
        f"memory per process ({where}; batch {plan.batch_size} × {plan.length} tokens):",
        *(f"  {label:<40}{gib(value):>12}" for label, value in rows),
        f"  {'total':<40}{gib(plan.total(False)):>12}",
        f"  {'total, --gradient-checkpointing':<40}{gib(plan.total(True)):>12}",
        *([f"  {'load: the whole base, before sharding':<40}{gib(plan.load + plan.overhead):>12}"] if plan.load else []),
    ]


def check_ranks(cfg: TrainConfig, shapes: Shapes) -> None:
    """`plan` refuses a --rank some adapted layer cannot hold, as `train` does when it attaches the adapter."""
    if cfg.method == "ohora":
        return
    for layer in shapes.adapted:
        if cfg.rank > min(layer.m, layer.n):
            raise ConfigError(f"--rank {cfg.rank}: exceeds min(out, in)={min(layer.m, layer.n)} of layer "
                              f"'{layer.name}' (out×in {layer.m}×{layer.n})")

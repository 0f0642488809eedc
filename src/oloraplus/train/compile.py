"""`--compile`: torch.compile each decoder layer (regional compilation), falling back to eager when it cannot.

A launch-bound GPU step spends its time dispatching the thousands of small ops of each layer (norms,
rotary, LoRA scaling and adds); compiling fuses them. Compiling the whole model would trace every
layer separately; compiling the *layer* instead gives one graph that all layers share (dynamo treats
each layer's parameters as inputs), so compile time is about one layer's whatever the depth.

Shapes: the layer is compiled with dynamic shapes (`dynamic=True`), so packed batches of any row
count and length reuse one graph; dynamo still specialises a single-row batch (its 0/1 rule), so a
run compiles at most a few graphs (see docs/compile.md). The input embeddings' output is made to
require grad, so the first layer sees the same kind of input as the others and shares their graph.

Only training steps run compiled: `paused()` runs a block eagerly (periodic evaluation), and
`restore()` puts the plain layers back when training ends, so evaluation, generation and saving see
the model exactly as without `--compile`. A layer whose compilation fails falls back to eager for
every layer, with one line saying so.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from oloraplus.adapters.lean import unshare_
from oloraplus.console import say

BACKEND: str | Callable = "inductor"  # tests swap in a cheap backend; guards and recompiles are dynamo's either way


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    """The model's list of decoder layers (Llama-style `model.layers`, GPT-2's `transformer.h`), or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    for holder in (decoder, getattr(base, "transformer", None), getattr(base, "model", None)):
        for name in ("layers", "h", "blocks"):
            layers = getattr(holder, name, None) if holder is not None else None
            if isinstance(layers, nn.ModuleList) and len(layers) > 0:
                return layers
    return None


def compile_seconds() -> float:
    """Seconds this process has spent compiling so far: dynamo's frame compiles plus lazily compiled backwards."""
    from torch._dynamo.utils import calculate_time_spent

    return calculate_time_spent().get("total_wall_time", 0.0)


def graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process (each recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return int(sum(counters["graph_break"].values()))


@dataclass
class RegionalCompile:
    """The compiled layers of one model: pause them, undo them, and report what compiling cost."""

    layers: list[nn.Module]
    name: str
    active: bool = True  # False after a failure: every layer runs eagerly from then on
    paused_depth: int = 0
    hooks: list[Any] = field(default_factory=list)
    start_s: float = 0.0
    start_graphs: int = 0
    start_breaks: int = 0
    failure: str | None = None

    def forward(self, compiled: Callable, eager: Callable, *args: Any, **kwargs: Any) -> Any:
        """A layer's forward: compiled while active, else eager. Any failure of the compiled call means "run
        eagerly from now on"; an error that is not the compiler's recurs in the eager call and propagates."""
        if self.active and not self.paused_depth:
            try:
                return compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                self.fall_back(exc)
        return eager(*args, **kwargs)

    def fall_back(self, exc: BaseException) -> None:
        self.active = False
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        self.failure = f"{type(exc).__name__}: {reason}"
        say(f"--compile: {self.name} cannot be compiled ({self.failure}); training eagerly")

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Run the block eagerly (evaluation: other shapes and no grad would only add graphs)."""
        self.paused_depth += 1
        try:
            yield
        finally:
            self.paused_depth -= 1

    def restore(self) -> None:
        """The plain layers again, as without --compile."""
        for layer in self.layers:
            layer.__dict__.pop("forward", None)
        for hook in self.hooks:
            hook.remove()
        self.hooks.clear()
        self.active = False

    def compile_s(self) -> float:
        return compile_seconds() - self.start_s

    def graphs(self) -> int:
        return graphs_compiled() - self.start_graphs

    def summary(self) -> str:
        if self.failure:
            return f"compile: off ({self.name} could not be compiled: {self.failure})"
        breaks = graph_breaks() - self.start_breaks
        return (f"compile: {len(self.layers)} decoder layers, {self.graphs()} graph(s) compiled in "
                f"{self.compile_s():.1f} s" + (f", {breaks} graph break(s)" if breaks else ""))


def _input_requires_grad(module: nn.Module, inputs: Any, output: Any) -> None:
    """The frozen embeddings' output made to require grad while training: without it the first layer's input
    would differ from the others' in `requires_grad`, and dynamo would compile a second graph for it."""
    if torch.is_grad_enabled() and torch.is_tensor(output) and not output.requires_grad:
        output.requires_grad_(True)


def compile_layers(model: nn.Module, name: str = "the model", backend: str | Callable | None = None,
                   dynamic: bool = True) -> RegionalCompile | None:
    """Compile each decoder layer of `model` (after the adapter is attached); None, with one line, if it has none.

    The compiled function is the layer's `forward` (a per-instance attribute), so module hooks stay outside
    and transformers' gradient checkpointing, which wraps `forward`, is traced inside the compiled region.
    `fullgraph`: a layer dynamo cannot capture whole (a graph break) is a failure, so the run falls back to
    eager instead of compiling many fragments. `dynamic=False`: one graph per shape (tests with one shape).
    """
    layers = decoder_layers(model)
    if layers is None:
        say(f"--compile: {name} has no decoder layer list to compile; training eagerly")
        return None
    if any(getattr(layer, "gradient_checkpointing", False) for layer in layers):
        unshare_(model)  # q/k/v computed together keep state between calls: not inside a checkpoint's region
    handle = RegionalCompile(layers=list(layers), name=name, start_s=compile_seconds(),
                             start_graphs=graphs_compiled(), start_breaks=graph_breaks())
    for layer in handle.layers:
        eager = layer.forward
        compiled = torch.compile(eager, backend=backend or BACKEND, dynamic=dynamic, fullgraph=True)
        layer.forward = functools.partial(handle.forward, compiled, eager)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None:
        handle.hooks.append(embeddings.register_forward_hook(_input_requires_grad))
    return handle


def paused(handle: RegionalCompile | None) -> contextlib.AbstractContextManager:
    """`handle.paused()`, or nothing to pause when the run is not compiled."""
    return handle.paused() if handle is not None else contextlib.nullcontext()

"""Which layers get an adapter: the linear layers of the transformer blocks, named the way PEFT matches them.

PEFT matches a `target_modules` entry against a module name `n` when `n == entry` or
`n.endswith("." + entry)`. We return the shortest such suffixes (normally the leaf names, e.g.
`q_proj`) that select only linear layers inside the blocks, never `lm_head` or the embeddings.
"""

from __future__ import annotations

from torch import nn
from transformers.pytorch_utils import Conv1D

from oloraplus.errors import AdapterError

LINEAR_TYPES = (nn.Linear, Conv1D)


def matches(name: str, entry: str) -> bool:
    """PEFT's rule for a plain-string `target_modules` entry."""
    return name == entry or name.endswith("." + entry)


def out_in_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a linear layer; GPT-2's `Conv1D` stores its weight as in×out, and bitsandbytes' (a Linear
    subclass) packs it into a column, so a Linear answers from its declared features."""
    if isinstance(module, nn.Linear):
        return module.out_features, module.in_features
    rows, cols = module.weight.shape
    return (cols, rows) if isinstance(module, Conv1D) else (rows, cols)


def linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LINEAR_TYPES)}


def block_lists(model: nn.Module) -> list[str]:
    """Names of the outermost ModuleLists of same-typed blocks that hold linear layers (the decoder layers)."""
    found: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(prefix + ".") for prefix in found):
            continue
        if len({type(block) for block in module}) != 1:
            continue
        if any(isinstance(m, LINEAR_TYPES) for m in module[0].modules()):
            found.append(name)
    return found


def default_target_modules(model: nn.Module) -> list[str]:
    """Every linear layer inside the transformer blocks, as the distinct suffixes PEFT accepts."""
    blocks = block_lists(model)
    if not blocks:
        raise AdapterError(
            f"--target-modules: cannot find the transformer blocks of {type(model).__name__}; "
            "pass --target-modules explicitly"
        )
    names = [name for name, _ in model.named_modules()]
    wanted = {n for n in linear_modules(model) if any(n.startswith(b + ".") for b in blocks)}
    suffixes: list[str] = []
    only_wanted: dict[str, bool] = {}  # suffix -> selects only wanted layers
    for name in names:
        if name not in wanted:
            continue
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            if parts[-k].isdigit():  # "2" would name a block index in a deeper model
                continue
            suffix = ".".join(parts[-k:])
            if suffix not in only_wanted:
                only_wanted[suffix] = all(n in wanted for n in names if matches(n, suffix))
            if only_wanted[suffix]:
                break
        else:
            suffix = name
        if suffix not in suffixes:
            suffixes.append(suffix)
    return suffixes


def resolve_target_modules(model: nn.Module, requested: list[str] | None) -> list[str]:
    """The user's `--target-modules`, checked to select only linear layers; the defaults when None."""
    if requested is None:
        return default_target_modules(model)
    entries = list(dict.fromkeys(e.strip() for e in requested))
    if not entries or "" in entries:
        raise AdapterError("--target-modules: empty module name")
    linears = linear_modules(model)
    available = ", ".join(dict.fromkeys(n.rsplit(".", 1)[-1] for n in linears))
    for entry in entries:
        hits = [n for n, _ in model.named_modules() if matches(n, entry)]
        if not any(n in linears for n in hits):
            raise AdapterError(f"--target-modules: '{entry}' matches no linear layer; available: {available}")
        other = next((n for n in hits if n not in linears), None)
        if other is not None:
            raise AdapterError(
                f"--target-modules: '{entry}' also matches '{other}', which is not a linear layer; "
                f"available: {available}"
            )
    return entries


def targeted_layers(model: nn.Module, targets: list[str]) -> dict[str, nn.Module]:
    """The linear layers PEFT will wrap for `targets`."""
    return {n: m for n, m in linear_modules(model).items() if any(matches(n, t) for t in targets)}

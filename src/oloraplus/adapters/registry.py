"""The adapter methods, one record each: what the rest of oloraplus asks about a method, declared once.

Each module in `oloraplus.adapters.methods` registers one `Method`. The config (`--method` choices), the λ
optimizer (which parameters are A and B), the export (whether the base was shifted), compose (whether the
saved adapter sums) and the CLI help read these records instead of lists of names. Records stay light: the
attach function is named as "module:function" and imported only when a model is built (PEFT takes seconds
to import, the CLI and the config should not).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from oloraplus.errors import AdapterError

# PEFT `init_lora_weights` values that only choose the starting A, B and leave the base weight W untouched, so the
# saved factors are the whole ΔW = s·B·A. Any other init (ours that shift the base, PEFT's LoftQ, CorDA, ...) moved W.
PLAIN_INITS = (True, False, "gaussian", "eva", "orthogonal", "mica")
# The first methods in CLI order; every other module in oloraplus.adapters.methods follows, by name. Each module
# registers itself when imported, so a new method is one new file there (docs/methods.md, "Add a method").
BUILTIN = ("lora", "olora", "pissa", "dora", "ohora", "hira")


@dataclass(frozen=True)
class Method:
    name: str
    help: str  # one line for `oloraplus --help`
    attach: str  # "module:function", (model, AdapterSpec, targets, calibration) -> (PeftModel, initial factors or {})
    a_markers: tuple[str, ...]  # parameter-name parts of the A factors: learning rate η
    b_markers: tuple[str, ...]  # ... of the B factors: λη
    shifts_base: bool = False  # LoRA factors trained on W − s·B0·A0: export writes the base-relative rank-2r LoRA
    composable: bool = False  # its saved adapter is a plain base-relative LoRA that `compose` can sum

    def attach_function(self) -> Callable:
        module, _, function = self.attach.partition(":")
        return getattr(importlib.import_module(module), function)


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method; a name is registered once (re-importing its module is a no-op)."""
    known = _REGISTRY.get(method.name)
    if known is not None and known != method:
        raise AdapterError(f"adapter method {method.name!r} is already registered with other facts")
    _REGISTRY[method.name] = method
    return method


def method_modules() -> tuple[str, ...]:
    """Names of the modules in oloraplus.adapters.methods: BUILTIN first, then the others alphabetically."""
    from oloraplus.adapters import methods as package

    found = {info.name for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")}
    return tuple(n for n in BUILTIN if n in found) + tuple(sorted(found - set(BUILTIN)))


def _load_builtin() -> None:
    for name in method_modules():
        importlib.import_module(f"oloraplus.adapters.methods.{name}")


def methods() -> tuple[Method, ...]:
    """Every record, in CLI order (BUILTIN, then by name) whichever module was imported first."""
    _load_builtin()
    rank = {name: i for i, name in enumerate(BUILTIN)}
    return tuple(sorted(_REGISTRY.values(), key=lambda m: (rank.get(m.name, len(BUILTIN)), m.name)))


def names() -> tuple[str, ...]:
    return tuple(m.name for m in methods())


def get(name: str) -> Method:
    _load_builtin()
    if name not in _REGISTRY:
        raise AdapterError(f"--method {name!r}: unknown; choose one of {', '.join(names())}")
    return _REGISTRY[name]


def a_markers() -> tuple[str, ...]:
    return tuple(dict.fromkeys(marker for m in methods() for marker in m.a_markers))


def b_markers() -> tuple[str, ...]:
    return tuple(dict.fromkeys(marker for m in methods() for marker in m.b_markers))


def init_shifts_base(init_lora_weights: object) -> bool:
    """Whether one of the registered methods trained this PEFT LoRA on a shifted base W − s·B0·A0, so `save_adapter`
    must write it base-relative. Such a method names its init after itself (`apply_shifted_init_`); PEFT spells
    PiSSA's fast SVD 'pissa_niter_k'."""
    init = str(init_lora_weights).lower().split("_niter_")[0]
    return any(m.shifts_base and m.name == init for m in methods())


def init_is_base_relative(init_lora_weights: object) -> bool:
    """Whether a saved PEFT LoRA with this init holds the whole ΔW relative to the untouched base (a plain init):
    what summing adapters and converting them to llama.cpp need. `save_adapter` saves a shifting method's adapter
    with init True, so it is; the raw factors of a shifted base never are."""
    return isinstance(init_lora_weights, (bool, str)) and init_lora_weights in PLAIN_INITS

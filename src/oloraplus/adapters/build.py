"""Wrap a causal LM in a PEFT adapter initialised by one of the registered methods.

`attach_adapter` checks the spec and calls the method's attach function (its record in
`oloraplus.adapters.methods` names one of the functions below): lora: B = 0 (PEFT default) · olora: B, A =
Q_r, R_r of W (base shifted) · pissa: top-r SVD of W (base shifted, float32 factors) · dora: LoRA plus a learned
magnitude vector (PEFT) · hira: ΔW = W ⊙ (BA) (PEFT) · ohora: QR-ranked Kronecker factors, m + n parameters
per layer (our PEFT method). A method may also define its attach function in its own module, using
`lora_model` (eva: PEFT's data-driven init on the training batches it receives as `calibration`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers.pytorch_utils import Conv1D

from oloraplus.adapters import registry
from oloraplus.adapters.lean import make_lean_
from oloraplus.adapters.olora import LoraFactors, apply_olora_
from oloraplus.adapters.pissa import apply_pissa_
from oloraplus.adapters.targets import out_in_shape, resolve_target_modules, targeted_layers
from oloraplus.config import check_dropout, check_rank
from oloraplus.errors import AdapterError


@dataclass
class AdapterSpec:
    method: str
    rank: int = 32
    alpha: float = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None
    ohora_init: str = "ranked"  # OHoRA only: 'ranked' or 'paper' (adapters/ohora.py)


Attached = tuple[PeftModel, dict[str, LoraFactors]]  # the model and its initial factors (base-shifting inits)
# Training-split batches for data-driven inits (EVA): model inputs as the run's collator makes them (labels kept,
# no host-side extras), re-iterable and sized, e.g. a DataLoader. Every attach function receives it; the inits
# that depend only on W ignore it, so the recipe never asks which method needs data.
Calibration = Iterable[dict[str, Any]]


def _validate(spec: AdapterSpec) -> None:
    registry.get(spec.method)  # unknown: one line listing the registered methods
    check_rank(spec.rank, AdapterError)
    if not spec.alpha > 0:
        raise AdapterError(f"--alpha {spec.alpha}: must be positive")
    check_dropout(spec.dropout, AdapterError)


def _check_ranks(layers: dict[str, torch.nn.Module], rank: int) -> None:
    for name, layer in layers.items():
        out_features, in_features = out_in_shape(layer)
        if rank > min(out_features, in_features):
            raise AdapterError(
                f"--rank {rank}: exceeds min(out, in)={min(out_features, in_features)} of layer '{name}' "
                f"(out×in {out_features}×{in_features})"
            )


def attach_adapter(model: torch.nn.Module, spec: AdapterSpec, calibration: Calibration | None = None) -> Attached:
    """Wrap `model` (in place) and return it with the initial factors of base-modifying inits (else {}).

    `calibration`: training batches for a data-driven init (see `Calibration`); never the eval split.

    The random draws (LoRA's A) come from the CPU generator re-seeded with `torch.initial_seed()`
    inside a fork of its state, so the same `torch.manual_seed` gives the same adapter whatever
    was drawn before, and the training RNG stream that follows is the same for every method.
    PEFT draws on the CPU before moving factors to the base's device: forking the CPU generator suffices.
    """
    _validate(spec)
    attach = registry.get(spec.method).attach_function()
    targets = resolve_target_modules(model, spec.target_modules)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        torch.default_generator.manual_seed(torch.initial_seed())
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model, initial = attach(model, spec, targets, calibration)
    return make_lean_(peft_model), initial  # same math, fewer ops per step (adapters/lean.py)


def lora_model(model: torch.nn.Module, spec: AdapterSpec, targets: list[str], **lora_config: Any) -> PeftModel:
    """PEFT's LoRA on `targets` with the spec's r, α, dropout; `lora_config` overrides LoraConfig fields
    (use_dora, or a PEFT init such as init_lora_weights="eva" for a method module)."""
    layers = targeted_layers(model, targets)
    _check_ranks(layers, spec.rank)
    config = LoraConfig(**{
        "task_type": "CAUSAL_LM",
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": targets,
        "init_lora_weights": True,  # OLoRA/PiSSA factors are set afterwards, in float32
        "fan_in_fan_out": any(isinstance(m, Conv1D) for m in layers.values()),
        **lora_config,
    })
    return get_peft_model(model, config)


def attach_lora(model: torch.nn.Module, spec: AdapterSpec, targets: list[str],
                calibration: Calibration | None = None) -> Attached:
    return lora_model(model, spec, targets), {}


def attach_dora(model: torch.nn.Module, spec: AdapterSpec, targets: list[str],
                calibration: Calibration | None = None) -> Attached:
    return lora_model(model, spec, targets, use_dora=True), {}


def attach_olora(model: torch.nn.Module, spec: AdapterSpec, targets: list[str],
                 calibration: Calibration | None = None) -> Attached:
    peft_model = lora_model(model, spec, targets)
    return peft_model, apply_olora_(peft_model, peft_model.active_adapter)


def attach_pissa(model: torch.nn.Module, spec: AdapterSpec, targets: list[str],
                 calibration: Calibration | None = None) -> Attached:
    peft_model = lora_model(model, spec, targets)
    return peft_model, apply_pissa_(peft_model, peft_model.active_adapter)


def attach_hira(model: torch.nn.Module, spec: AdapterSpec, targets: list[str],
                calibration: Calibration | None = None) -> Attached:
    from oloraplus.adapters.hira import attach_hira as hira

    _check_ranks(targeted_layers(model, targets), spec.rank)
    return hira(model, spec.rank, targets, spec.dropout), {}


def attach_ohora(model: torch.nn.Module, spec: AdapterSpec, targets: list[str],
                 calibration: Calibration | None = None) -> Attached:
    """No rank: r_high follows from each layer's shape; s = α/r as for LoRA."""
    from oloraplus.adapters.ohora_peft import attach_ohora as ohora

    scale = spec.alpha / spec.rank
    return ohora(model, targets, scale=scale, dropout=spec.dropout, init=spec.ohora_init), {}
